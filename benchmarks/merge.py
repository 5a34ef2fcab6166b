"""Merge throughput: fused in-memory lerp into a live model vs reload-from-disk-and-merge per candidate.

Model: a randomly initialised SmolLM2-135M-shaped ``LlamaConfig`` (hidden 576, 30 layers, 9 heads, 3 kv heads,
intermediate 1536, vocab 49152, tied embeddings), in fp32 and bf16. Each candidate is a per-group merge
(block3, a random alpha per group, head alpha = their mean) written into the same live model.

- ``in-memory``: :class:`tandem.merging.lerp.Merger` holds theta_0 and theta_1 once; per candidate, one
  ``_foreach_copy_`` + ``_foreach_lerp_`` per distinct alpha into the model's parameters.
- ``reload``: per candidate, read theta_0 and theta_1 from safetensors files (``safetensors.torch.load_file``;
  the files are in the OS page cache after the first read, so this is a best case for the baseline), merge
  tensor by tensor with ``(1 - a) * t0 + a * t1`` and ``model.load_state_dict``.

Throughput = bytes of one model's weights / seconds per candidate ("GB of weights processed per second";
each merge reads two such copies and writes one). Both methods run in the same process, same run.

Run: ``python benchmarks/merge.py [--candidates 5] [--dtypes fp32,bf16] [--threads N]``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tandem.merging.groups import tensor_alphas
from tandem.merging.lerp import Merger, merge_names


def smollm2_135m_like(dtype: torch.dtype, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                      max_position_embeddings=2048)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def bench(dtype: torch.dtype, candidates: int, tmp: Path) -> dict:
    m0 = smollm2_135m_like(dtype, 0)
    m1 = smollm2_135m_like(dtype, 1)
    names = merge_names(m1)
    s0 = {n: p.detach().clone() for n, p in m0.named_parameters()}
    s1 = {n: p.detach().clone() for n, p in m1.named_parameters()}
    del m0
    live = m1
    f0, f1 = tmp / f"theta0-{dtype}.safetensors", tmp / f"theta1-{dtype}.safetensors"
    save_file(s0, str(f0))
    save_file(s1, str(f1))
    rng = random.Random(0)
    cands = [tensor_alphas(names, "block3", [rng.random() for _ in range(3)]) for _ in range(candidates)]

    merger = Merger(s0, s1, names=names)
    del s0, s1
    gb = merger.nbytes / 1e9

    merger.merge_into(live, cands[0])  # warm-up
    t = time.perf_counter()
    for c in cands:
        merger.merge_into(live, c)
    t_mem = (time.perf_counter() - t) / candidates

    def reload_merge(alphas):
        a0, a1 = load_file(str(f0)), load_file(str(f1))
        merged = {n: (1 - alphas[n]) * a0[n] + alphas[n] * a1[n] for n in names}
        live.load_state_dict(merged, strict=False)

    reload_merge(cands[0])  # warm-up (fills the page cache)
    t = time.perf_counter()
    for c in cands:
        reload_merge(c)
    t_reload = (time.perf_counter() - t) / candidates
    return {"dtype": str(dtype).removeprefix("torch."), "gb": gb, "t_mem": t_mem, "t_reload": t_reload}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.candidates} candidates per method")
    print(f"{'dtype':>6} {'weights GB':>10} {'in-memory s':>12} {'GB/s':>7} {'reload s':>9} {'GB/s':>7} {'speedup':>8}")
    with tempfile.TemporaryDirectory() as d:
        for key in args.dtypes.split(","):
            r = bench(dtypes[key], args.candidates, Path(d))
            print(f"{r['dtype']:>6} {r['gb']:>10.3f} {r['t_mem']:>12.4f} {r['gb'] / r['t_mem']:>7.2f} "
                  f"{r['t_reload']:>9.4f} {r['gb'] / r['t_reload']:>7.2f} {r['t_reload'] / r['t_mem']:>7.1f}x")


if __name__ == "__main__":
    main()
