"""Generation throughput: tandem's sampler (``tandem.models.sampling.sample_ids``, what evaluation and PPO rollouts
call) against plain ``model.generate`` on the same prompts, ``max_new_tokens`` and batch, in one run, and both against
a measured compute ceiling.

* prompts: the first ``--prompts`` Alpaca instructions of ``../shared/data/alpaca``, chat-templated as evaluation
  renders them (``tandem.data.encode.prompt_ids``), in file order;
* ``generate``: ``model.generate`` (greedy, the model's EOS ids, KV cache = transformers' default) on consecutive
  batches of ``--batch`` prompts in file order: what ``tandem.evaluation.generation.generate`` ran before (at its
  default batch 8 = "today's evaluation");
* ``tandem``: ``sample_ids`` with ``batch_size=--batch`` (the same batches; slab KV cache, finished rows dropped,
  bf16 CPU weights packed once per call); with bf16 weights on a CPU also ``tandem, weights not packed``
  (``TANDEM_PACKED_DECODE=0``: the same sampler with oneDNN reordering each weight at every call);
* replies are compared token by token (greedy: they must be the same); tokens/s = new tokens of all replies (up to and
  including EOS) / wall time of the whole set;
* ceiling: the median GFLOP/s of a ``--matmul``-cubed matmul in fp32 and bf16 on this machine (all threads), turned
  into tokens/s with ``2 x parameters`` FLOPs per token. ``% ceiling`` compares new tokens/s with the ceiling of the
  model's dtype; ``% ceiling (all tokens)`` counts the prompt tokens the prefill processed too.

    python benchmarks/generation.py                                   # SmolLM2, precision auto, batches 1,8,32,64
    python benchmarks/generation.py --dtype float32 --batches 8,64 --variants
    python benchmarks/generation.py --shape tiny --tokenizer DIR --prompts 8 --batches 4 --max-new-tokens 8   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_data_sample5000.jsonl.gz"
SHAPES = {"tiny": (64, 2, 4, 2, 128), "smollm2": (576, 30, 9, 3, 1536), "llama1b": (2048, 16, 32, 8, 8192)}


def matmul_gflops(dtype: torch.dtype, n: int, device: str, reps: int = 5) -> float:
    """Median GFLOP/s of an ``n x n x n`` matmul in ``dtype`` (after one warm-up)."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    times = []
    for i in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def load(args, dtype: torch.dtype | None, attn: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if args.shape:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        h, n, heads, kv, inter = SHAPES[args.shape]
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                          num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048,
                          tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        if attn:
            cfg._attn_implementation = attn
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation=attn)
    if dtype is not None:
        model.to(dtype)
    return model.to(args.device).eval(), tok


def prompts_of(tok, n: int) -> list[list[int]]:
    from tandem.data import load_examples
    from tandem.data.encode import prompt_ids

    examples, _ = load_examples(str(ALPACA), limit=n)
    return [prompt_ids(tok, e.prompt) for e in examples[:n]]


def run_generate(model, prompts, batch, max_new, eos, pad, **extra) -> tuple[list[list[int]], float]:
    """Plain ``model.generate`` on consecutive batches, greedy; replies cut after the first EOS."""
    from tandem.models.sampling import left_pad

    out, device = [], next(model.parameters()).device
    _sync(device.type)
    t = time.perf_counter()
    for s in range(0, len(prompts), batch):
        ids, mask = left_pad(prompts[s:s + batch], pad)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                             do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=eos,
                             pad_token_id=pad, **extra)
        for row in gen[:, ids.shape[1]:].tolist():
            out.append(row[: next((j + 1 for j, x in enumerate(row) if x in eos), len(row))])
    _sync(device.type)
    return out, time.perf_counter() - t


def run_tandem(model, prompts, batch, max_new, eos, pad) -> tuple[list[list[int]], float]:
    from tandem.models.sampling import sample_ids

    device = next(model.parameters()).device.type
    _sync(device)
    t = time.perf_counter()
    out = sample_ids(model, prompts, pad_id=pad, eos=eos, temperature=0.0, top_p=1.0, max_new_tokens=max_new,
                     seed=0, batch_size=batch)
    _sync(device)
    return out, time.perf_counter() - t


def row(name, batch, replies, secs, prompts, ceiling, ref=None) -> dict:
    new = sum(len(r) for r in replies)
    prompt_tokens = sum(len(p) for p in prompts)
    r = {"config": name, "batch": batch, "new_tokens": new, "seconds": round(secs, 3),
         "tokens_per_s": round(new / secs, 1), "pct_ceiling": round(100 * new / secs / ceiling, 1),
         "pct_ceiling_all_tokens": round(100 * (new + prompt_tokens) / secs / ceiling, 1)}
    if ref is not None:
        r["same_replies"] = sum(a == b for a, b in zip(replies, ref))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="random weights of this shape instead")
    ap.add_argument("--tokenizer", default=str(ROOT / "models" / "smollm2-135m-instruct"), help="for --shape")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="auto: bf16 where the hardware computes it natively (tandem's evaluation default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--matmul", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--variants", action="store_true", help="also: generate with a static cache, tandem with eager "
                    "attention, tandem on one thread (at the largest batch)")
    ap.add_argument("--skip-generate", action="store_true", help="tandem's sampler only (no generate baseline)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from tandem.models.precision import inference_dtype
    from tandem.models.sampling import eos_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = inference_dtype(args.dtype, args.device) or torch.float32
    model, tok = load(args, dtype)
    eos = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    prompts = prompts_of(tok, args.prompts)
    params = sum(p.numel() for p in model.parameters())
    gflops = {str(d).removeprefix("torch."): round(matmul_gflops(d, args.matmul, args.device), 1)
              for d in (torch.float32, torch.bfloat16)}
    ceiling = gflops[str(dtype).removeprefix("torch.")] * 1e9 / (2 * params)
    batches = [int(b) for b in args.batches.split(",")]
    run_tandem(model, prompts[:2], 2, 4, eos, pad)  # warm-up (first-call allocations)
    from tandem.models.packed import packed_linears

    with packed_linears(model) as n_packed:
        packs = n_packed > 0 and "TANDEM_PACKED_DECODE" not in os.environ
    rows = []
    for b in batches:
        ref = None
        if not args.skip_generate:
            ref, secs = run_generate(model, prompts, b, args.max_new_tokens, eos, pad)
            rows.append(row("generate", b, ref, secs, prompts, ceiling))
        got, secs = run_tandem(model, prompts, b, args.max_new_tokens, eos, pad)
        rows.append(row("tandem", b, got, secs, prompts, ceiling, ref))
        if packs:  # the same sampler with the weights reordered at every call (tandem.models.packed switched off)
            os.environ["TANDEM_PACKED_DECODE"] = "0"
            got, secs = run_tandem(model, prompts, b, args.max_new_tokens, eos, pad)
            os.environ.pop("TANDEM_PACKED_DECODE")
            rows.append(row("tandem, weights not packed", b, got, secs, prompts, ceiling, ref))
        print(json.dumps(rows[-3 if packs else -2:] if ref is not None else rows[-1:]), flush=True)
    if args.variants:
        b = max(batches)
        ref, secs = run_generate(model, prompts, b, args.max_new_tokens, eos, pad, cache_implementation="static")
        rows.append(row("generate, static cache", b, ref, secs, prompts, ceiling))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        got, secs = run_tandem(model, prompts, b, args.max_new_tokens, eos, pad)
        rows.append(row("tandem, 1 thread", b, got, secs, prompts, ceiling, ref))
        torch.set_num_threads(n)
        eager, _ = load(args, dtype, attn="eager")
        got, secs = run_tandem(eager, prompts, b, args.max_new_tokens, eos, pad)
        rows.append(row("tandem, eager attention", b, got, secs, prompts, ceiling, ref))
        print(json.dumps(rows[-3:]), flush=True)
    result = {"model": args.shape or args.model, "dtype": str(dtype), "params": params, "device": args.device,
              "threads": torch.get_num_threads(), "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
              "prompt_tokens": sum(len(p) for p in prompts), "matmul_gflops": gflops,
              "ceiling_tokens_per_s": round(ceiling, 1), "rows": rows}
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


def table(result: dict) -> str:
    lines = [f"{result['model']} ({result['dtype']}, {result['params'] / 1e6:.1f}M params), {result['prompts']} prompts "
             f"({result['prompt_tokens']} prompt tokens), max {result['max_new_tokens']} new tokens; matmul GFLOP/s "
             f"{result['matmul_gflops']}; ceiling {result['ceiling_tokens_per_s']} tokens/s",
             "", "| config | batch | new tokens/s | seconds | % ceiling | % ceiling (all tokens) | same replies |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        same = f"{r['same_replies']}/{result['prompts']}" if "same_replies" in r else ""
        lines.append(f"| {r['config']} | {r['batch']} | {r['tokens_per_s']} | {r['seconds']} | {r['pct_ceiling']} | "
                     f"{r['pct_ceiling_all_tokens']} | {same} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
