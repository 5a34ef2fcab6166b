"""Cost of the two EWC kinds against plain training, measured in the same run.

An HBAT-like sequence (IFA stage, HPA stage, IFA stage) of SFT steps on a random Llama, three ways:

* ``none``: no regularizer (the baseline);
* ``modified-ewc``: tandem's modified EWC (importance from weight changes, one number per tensor; fused
  gradient term every step);
* ``fisher-ewc``: the original EWC with the diagonal empirical Fisher over ``--fisher-samples`` examples per
  stage end (one backward per example; one importance number per weight).

Reports per configuration: mean optimizer-step time (ms) during penalised stages, time spent at stage ends
(importance / Fisher pass), regularizer state in MiB (anchors + importance), and ratios against ``none``.

    python benchmarks/ewc_overhead.py                       # CPU default shape
    python benchmarks/ewc_overhead.py --shape smollm2 --steps 10 --fisher-samples 64
"""

from __future__ import annotations

import argparse
import json
import platform
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


def run(kind: str, args) -> dict:
    model = make_model(args.shape)
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    reg = {"none": None, "modified-ewc": lambda: build("modified_ewc", lam=1.0, f_max=50.0),
           "fisher-ewc": lambda: build("fisher_ewc", lam=1.0, samples=args.fisher_samples)}[kind]
    reg = reg() if reg else None
    stages = [Stage(0, "01-sft-1", "sft", "ifa", 0, 2), Stage(1, "02-pref-1", "preference", "hpa", 0, 2),
              Stage(2, "03-sft-2", "sft", "ifa", 1, 2)]
    step_times, end_times = [], []
    for stage in stages:
        if reg is not None:
            reg.before_stage(model, stage)
        for s in range(args.steps):
            b = batch(vocab, args.rows, args.length, 1000 * stage.index + s)
            t0 = time.perf_counter()
            loss = model(**b, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if reg is not None:
                reg.grad_term(model)
            opt.step()
            if stage.index > 0 and s > 0:  # penalised stages, after a warm-up step
                step_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if reg is not None:
            if kind == "fisher-ewc":
                singles = [batch(vocab, 1, args.length, 99 + i) for i in range(args.fisher_samples)]
                reg.after_stage(model, stage, batches=singles,
                                logp_fn=lambda m, b: -m(**b, use_cache=False).loss * (b["input_ids"].shape[1] - 1))
            else:
                reg.after_stage(model, stage)
        end_times.append(time.perf_counter() - t0)
    return {"kind": kind, "step_ms": 1000 * sum(step_times) / len(step_times), "stage_end_s": sum(end_times),
            "state_mib": state_mib(reg), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per stage")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--fisher-samples", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = [run(k, args) for k in ("none", "modified-ewc", "fisher-ewc")]
    base = res[0]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; shape {args.shape} ({base['params_m']:.1f}M params), "
          f"{args.rows}x{args.length} tokens per step, {args.steps} steps x 3 stages, Fisher samples {args.fisher_samples}")
    print(f"{'config':<14}{'step ms':>10}{'vs none':>9}{'stage-end s':>13}{'state MiB':>11}")
    for r in res:
        print(f"{r['kind']:<14}{r['step_ms']:>10.1f}{r['step_ms'] / base['step_ms']:>9.2f}{r['stage_end_s']:>13.2f}"
              f"{r['state_mib']:>11.1f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
