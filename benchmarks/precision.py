"""Which bf16 path is fastest on this machine: one training step (forward, backward, AdamW) per configuration.

SmolLM2-135M shape (random weights; ``--layers`` to shorten it), one packed row of ``--tokens`` tokens, loss on
every token through tandem's log-probs. All configurations live in one process and run in interleaved rounds
(round r runs every configuration once), so load from other jobs on a shared machine hits them alike; the result is
the median step time per configuration and its speed relative to fp32.

* ``fp32``: fp32 weights, ``torch.optim.AdamW(foreach)``.
* ``autocast``: fp32 weights under ``torch.autocast(bf16)`` (what ``precision: bf16`` meant through accelerate).
* ``bf16+master``: bf16 weights, ``tandem.optim.MasterAdamW`` (fp32 masters and state): tandem's bf16 now.
* ``bf16-pure``: bf16 weights and bf16 AdamW state (fastest, but updates below bf16 resolution are lost).
* ``lora-fp32`` / ``lora-bf16``: LoRA r=16 on all linear layers, base in fp32 / in bf16 with fp32 adapters.
* ``lora-bf16+master``: base and adapters in bf16, the adapters' fp32 masters and state in ``MasterAdamW``.

    python benchmarks/precision.py --tokens 512 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

CONFIGS = ("fp32", "autocast", "bf16+master", "bf16-pure", "lora-fp32", "lora-bf16", "lora-bf16+master")


def build(name: str, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tandem.models import apply_lora
    from tandem.models.precision import Precision, apply_precision
    from tandem.optim import adamw

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    lora = name.startswith("lora")
    if lora:
        model = apply_lora(model, r=16, alpha=32)
    if name in ("bf16+master", "bf16-pure", "lora-bf16", "lora-bf16+master"):
        apply_precision(model, Precision("bf16", torch.bfloat16, "no", False, "bench"), fp32_trainable=name == "lora-bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=1e-5, foreach=True) if name == "bf16-pure" else adamw(params, lr=1e-5))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if name == "autocast" else contextlib.nullcontext
    return model, opt, ctx


def step(model, opt, ctx, batch) -> float:
    from tandem.objectives.logprobs import token_logps

    t0 = time.perf_counter()
    with ctx():
        logps, _ = token_logps(model, batch)
        loss = -logps.mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--only", default=",".join(CONFIGS))
    args = ap.parse_args()
    names = args.only.split(",")
    ids = torch.randint(0, 49152, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(args.tokens)[None],
             "seq_ids": torch.zeros_like(ids)}
    built = {n: build(n, args.layers) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds + 1):
        for n in names:
            dt = step(*built[n], batch)
            if r:
                times[n].append(dt)
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names if times[n]), flush=True)
    base = statistics.median(times["fp32"]) if "fp32" in times else None
    print(f"\nSmolLM2 shape, {args.layers} layers, {args.tokens} tokens, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, load {os.getloadavg()[0]:.1f}; median of {args.rounds} interleaved rounds")
    print("| configuration | step | tokens/s | vs fp32 |\n|---|---:|---:|---:|")
    for n in names:
        m = statistics.median(times[n])
        print(f"| {n} | {m:.2f} s | {args.tokens / m:.0f} | {base / m:.2f}x |" if base else f"| {n} | {m:.2f} s | "
              f"{args.tokens / m:.0f} | - |")


if __name__ == "__main__":
    main()
