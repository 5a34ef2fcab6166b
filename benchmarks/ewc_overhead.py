"""Cost of the two EWC kinds in an HPA (DPO) stage against plain DPO, measured in the same run.

Each configuration runs in its own subprocess (so peak memory is its own): an IFA stage of SFT steps, the
regularizer's stage-end work, then the measured HPA stage of tandem DPO steps (reference log-probs precomputed,
as the engine does) on a random Llama with random token pairs:

* ``none``: plain DPO (the baseline);
* ``modified-ewc``: tandem's modified EWC (importance from weight changes, one number per tensor; fused
  gradient term every step);
* ``fisher-ewc``: the original EWC with the diagonal empirical Fisher over ``--fisher-samples`` examples at the
  IFA stage end (one backward per example; one importance number per weight).

Reports: mean DPO step time (ms), the stage-end cost (importance or Fisher pass), peak RSS of the process
(MiB), the regularizer's state (anchors + importance, MiB), and time and memory ratios against ``none``.

    python benchmarks/ewc_overhead.py                       # CPU default shape
    python benchmarks/ewc_overhead.py --shape smollm2 --steps 10 --fisher-samples 64
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tandem.regularizers.registry import build
from tandem.schedules.stages import Stage

SHAPES = {"tiny": (256, 4, 4, 2, 768, 8192), "small": (512, 8, 8, 4, 1536, 16384), "smollm2": (576, 30, 9, 3, 1536, 49152)}


def make_model(shape: str) -> LlamaForCausalLM:
    h, n, heads, kv, inter, vocab = SHAPES[shape]
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, num_key_value_heads=kv,
                      intermediate_size=inter, vocab_size=vocab, max_position_embeddings=1024, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def batch(vocab: int, rows: int, length: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def state_mib(reg) -> float:
    if reg is None:
        return 0.0
    total = 0
    for v in reg.state_dict().values() if hasattr(reg, "state_dict") else []:
        stack = [v]
        while stack:
            x = stack.pop()
            if torch.is_tensor(x):
                total += x.numel() * x.element_size()
            elif isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, (list, tuple)):
                stack.extend(x)
    return total / 2**20


def pairs(vocab: int, n: int, length: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, vocab, (length // 2,), generator=g).tolist()
        c = torch.randint(3, vocab, (length // 2,), generator=g).tolist()
        r = torch.randint(3, vocab, (length // 2,), generator=g).tolist()
        out.append({"chosen_input_ids": prompt + c, "chosen_labels": [-100] * len(prompt) + c,
                    "rejected_input_ids": prompt + r, "rejected_labels": [-100] * len(prompt) + r})
    return out


def run(kind: str, args) -> dict:
    from tandem.data import collate
    from tandem.objectives import build as build_objective

    model = make_model(args.shape)
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    reg = {"none": None, "modified-ewc": lambda: build("modified_ewc", lam=1.0, f_max=50.0),
           "fisher-ewc": lambda: build("fisher_ewc", lam=1.0, samples=args.fisher_samples)}[kind]
    reg = reg() if reg else None
    ifa, hpa = Stage(0, "01-sft-1", "sft", "ifa", 0, 2), Stage(1, "02-pref-1", "preference", "hpa", 0, 2)
    # IFA stage (not timed)
    if reg is not None:
        reg.before_stage(model, ifa)
    for s in range(2):
        loss = model(**batch(vocab, args.rows, args.length, s), use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    if reg is not None:
        if kind == "fisher-ewc":
            singles = [batch(vocab, 1, args.length, 99 + i) for i in range(args.fisher_samples)]
            reg.after_stage(model, ifa, batches=singles,
                            logp_fn=lambda m, b: -m(**b, use_cache=False).loss * (b["input_ids"].shape[1] - 1))
        else:
            reg.after_stage(model, ifa)
    stage_end = time.perf_counter() - t0
    # HPA stage: tandem DPO, timed
    dpo = build_objective("dpo", beta=0.1)
    batch_fn = lambda fs: collate(fs, mode="pack", pad_id=0, max_tokens_per_row=1024)  # noqa: E731
    feats = dpo.prepare(model, pairs(vocab, args.rows * args.steps, args.length, 7), batch_fn)
    if reg is not None:
        reg.before_stage(model, hpa)
    times = []
    for s in range(args.steps):
        b = batch_fn(feats[s * args.rows : (s + 1) * args.rows])
        t0 = time.perf_counter()
        loss, _ = dpo(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if reg is not None:
            reg.grad_term(model)
        opt.step()
        if s > 0:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "step_ms": 1000 * sum(times) / len(times), "stage_end_s": stage_end, "peak_mib": peak,
            "state_mib": state_mib(reg), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=8, help="DPO steps in the HPA stage (the first is not timed)")
    ap.add_argument("--rows", type=int, default=4, help="pairs per step")
    ap.add_argument("--length", type=int, default=128, help="tokens per sequence (prompt + response)")
    ap.add_argument("--fisher-samples", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run(args.worker, args)))
        return
    res = []
    for k in ("none", "modified-ewc", "fisher-ewc"):
        out = subprocess.run([sys.executable, __file__, "--worker", k, *sys.argv[1:]], capture_output=True, text=True,
                             check=True).stdout
        res.append(json.loads(out.strip().splitlines()[-1]))
    base = res[0]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} threads; shape {args.shape} ({base['params_m']:.1f}M params), "
          f"{args.rows} pairs x {args.length} tokens per DPO step, {args.steps} steps, Fisher samples {args.fisher_samples}")
    print(f"{'config':<14}{'DPO step ms':>12}{'time x':>8}{'peak MiB':>10}{'memory x':>10}{'stage-end s':>13}{'state MiB':>11}")
    for r in res:
        print(f"{r['kind']:<14}{r['step_ms']:>12.1f}{r['step_ms'] / base['step_ms']:>8.2f}{r['peak_mib']:>10.0f}"
              f"{r['peak_mib'] / base['peak_mib']:>10.2f}{r['stage_end_s']:>13.2f}{r['state_mib']:>11.1f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
