"""Peak memory and time of one training step's log-probs: chunked (tandem now) vs the full [tokens, vocab] logits.

SmolLM2-135M shape (random weights, 49152 vocabulary), bf16 weights, batch of ``--batch`` packed SFT sequences of
``--length`` tokens (all labelled but the first of each). Each configuration runs in its own subprocess; peak
memory is the growth of the process's peak RSS over the step (VmHWM, reset through /proc/self/clear_refs after a
warm-up step), time is the median of ``--steps`` forward+backward passes.

    python benchmarks/logprobs_memory.py --batch 8 --length 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def one(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    import tandem.objectives.logprobs as lp

    if args.one == "full":  # the previous implementation: the whole [N, V] logits at once
        lp.head_logps = lambda head, h, target, chunk=None: -F.cross_entropy(head(h).float(), target, reduction="none")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=args.layers,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if args.frozen_head:
        model.get_output_embeddings().weight.requires_grad_(False)
    T = args.batch * args.length
    ids = torch.randint(0, 49152, (1, T))
    labels = ids.clone()
    labels[0, :: args.length] = -100
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(args.length).repeat(args.batch)[None],
             "seq_ids": torch.arange(args.batch).repeat_interleave(args.length)[None]}
    times, peak = [], 0
    for step in range(args.steps + 1):
        model.zero_grad(set_to_none=True)
        base = rss_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        t0 = time.perf_counter()
        logps, _ = lp.token_logps(model, batch)
        (-logps.mean()).backward()
        dt = time.perf_counter() - t0
        if step:
            times.append(dt)
            peak = max(peak, rss_kb("VmHWM") - base)
    return {"step_s": statistics.median(times), "peak_growth_mb": peak / 1024, "tokens": T}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--frozen-head", action="store_true", help="head frozen (as in a LoRA run)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args)))
        return
    res = {}
    for name in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--length", str(args.length),
               "--layers", str(args.layers), "--steps", str(args.steps)] + (["--frozen-head"] if args.frozen_head else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{name}: FAILED\n{out.stderr[-2000:]}")
            return
        res[name] = json.loads(line[0][7:])
        print(name, res[name], flush=True)
    f, c = res["full"], res["chunked"]
    print(f"\n| log-probs | step (fwd+bwd) | peak memory growth |\n|---|---:|---:|\n"
          f"| full [tokens, vocab] logits | {f['step_s']:.2f} s | {f['peak_growth_mb']:.0f} MB |\n"
          f"| chunked | {c['step_s']:.2f} s ({c['step_s'] / f['step_s']:.2f}x) | {c['peak_growth_mb']:.0f} MB "
          f"({c['peak_growth_mb'] / f['peak_growth_mb']:.2f}x) |")


if __name__ == "__main__":
    main()
