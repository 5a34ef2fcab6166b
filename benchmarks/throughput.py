"""Training throughput of what users run: ``tandem train`` (the engine's stage loop) against TRL at its fastest
settings, and both against a bare-PyTorch ceiling, in one run.

Every configuration trains the same model (random weights of a named shape, or ``--model DIR``), on the same data
(HH-RLHF helpful-online pairs from ``../shared/data`` whose sequences fill 90-100% of ``--max-length``, so every
step has about ``batch x max_length`` tokens; SFT trains on prompt + chosen response), with the same batch
(``--batch`` examples or pairs per optimizer step), max length and precision, each in its own subprocess (peak
memory = its peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU). Tokens/s counts real tokens (prompt +
response, chosen and rejected for DPO, no padding) over the timed steps, after ``--warmup`` steps.

* ``tandem``: ``tandem.pipelines.train.train`` on a recipe (method sft or dpo, batching ``pack`` with the default
  row cap ``max_tokens_per_row: max_length``, logging every step with TensorBoard on, checkpoints off, no validation). Time = the stage's wall time
  (``stages/NN/stage.json``: the loop, its logging and progress bar) minus the warm-up steps' time; the DPO
  reference pass runs before the stage loop and is not timed (as TRL's precompute).
* ``trl`` (``optim="adamw_torch_fused"``): SFT with ``SFTTrainer(padding_free=True)`` on tandem's tokenized examples (the same token ids and
  labels; each batch is one row without padding: TRL's fastest SFT setting that keeps the batch at ``--batch``
  examples), DPO with ``DPOTrainer(precompute_ref_log_probs=True)`` (TRL 1.16 disables ``padding_free`` for DPO).
  The model is loaded in the benchmark's dtype (bf16 weights for ``--precision bf16``, TRL's fastest: no master
  weights). Time = between ``on_step_end`` callbacks; tokens are counted from TRL's own collated batches.
* ``tandem-dpo-shared``: the same ``tandem train`` DPO run with ``batching.prefix_sharing: true`` (each pair's prompt
  computed once; tokens/s still counts prompt + chosen + prompt + rejected, like the other rows).
* ``ceiling``: bare PyTorch on tandem's collated rows (built before timing: no data pipeline, no metrics, no
  logging): forward, the loss on labelled positions, backward, ``torch.optim.AdamW(fused=True)`` on the model's
  weights (pure bf16 for bf16: no master weights). Time = median step.

    python benchmarks/throughput.py --shape tiny --precision fp32 --steps 4 --warmup 1
    python benchmarks/throughput.py --shape smollm2 --precision bf16 --batch 8 --max-length 512 --steps 3 --warmup 1

TRL is a benchmark-only dependency: pip install -e ".[bench]" (or pip install trl).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-online" / "test.jsonl.gz"

SHAPES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab)
    "tiny": (256, 4, 4, 2, 768, 49152),
    "smollm2": (576, 30, 9, 3, 1536, 49152),
    "llama1b": (2048, 16, 32, 8, 8192, 128256),
}
CONFIGS = ("tandem-sft", "trl-sft", "ceiling-sft", "tandem-dpo", "tandem-dpo-shared", "trl-dpo", "ceiling-dpo")


def build_model_dir(shape: str, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    h, n, heads, kv, inter, vocab = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(os.environ.get("TANDEM_BENCH_TOKENIZER", "models/smollm2-135m-instruct"))
    cfg = LlamaConfig(
        vocab_size=max(vocab, len(tok)), hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
        num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def n_examples(args) -> int:
    return args.batch * (args.steps + args.warmup)


def pairs_file(args) -> Path:
    return Path(args.workdir) / f"pairs-{n_examples(args)}-{args.max_length}{'-any' if args.any_length else ''}.jsonl"


def select_pairs(args) -> Path:
    """The benchmark's pairs as a preference JSON Lines file (every tool reads it). By default only pairs whose chosen
    and rejected sequences both fill >= 90% of ``--max-length`` tokens (truncated at it) and keep >= 32 response
    tokens, so every step of every tool trains about ``batch x max_length`` tokens (x2 for DPO) whatever the order."""
    from transformers import AutoTokenizer

    from tandem.data import encode_all, load_examples

    path = pairs_file(args)
    if path.exists():
        return path
    n = n_examples(args)
    examples, _ = load_examples(str(DATA))
    if not args.any_length:
        tok = AutoTokenizer.from_pretrained(args.model)
        feats, _ = encode_all(tok, examples, args.max_length, "truncate")
        full = lambda ids, labels: len(ids) >= 0.9 * args.max_length and sum(x != -100 for x in labels) >= 32  # noqa: E731
        examples = [e for e, f in zip(examples, feats) if full(f["chosen_input_ids"], f["chosen_labels"])
                    and full(f["rejected_input_ids"], f["rejected_labels"])]
    if len(examples) < n:
        sys.exit(f"only {len(examples)} pairs fill {args.max_length} tokens; lower --steps/--batch or pass --any-length")
    rows = [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in examples[:n]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load_pairs(args):
    from tandem.data import load_examples

    examples, _ = load_examples(str(pairs_file(args)))
    return examples


def sft_file(args) -> Path:
    """Prompt + chosen response of the pairs as an SFT JSON Lines file (the tandem side reads it)."""
    path = pairs_file(args).with_suffix(".sft.jsonl")
    if not path.exists():
        rows = [{"prompt": p.prompt, "response": p.chosen} for p in load_pairs(args)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dtype_of(precision: str):
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- tandem: the real train pipeline


def recipe_for(kind: str, args, out: Path):
    from tandem.config.recipe import parse_recipe

    data = {"sft": {"source": str(sft_file(args))}} if kind == "sft" else {
        "preference": {"source": str(pairs_file(args))}}
    return parse_recipe({
        "name": f"bench-{kind}", "output_dir": str(out), "seed": 0, "precision": args.precision,
        "model": {"name_or_path": args.model, "dtype": "float32"},
        "data": {**data, "max_length": args.max_length, "val_size": 0},
        "batching": {"mode": "pack", "batch_size": args.batch, "prefix_sharing": args.prefix_sharing},
        "optimizer": {"lr": 1e-6, "scheduler": "constant"},
        "schedule": {"method": kind, "epochs": 1, "max_steps": args.steps + args.warmup},
        "objectives": {"sft": {"name": "sft"}, "preference": {"name": "dpo", "beta": 0.1}},
        "checkpoint": {"every": 0, "stage_weights": False},
        "logging": {"every": 1, "tensorboard": True, "progress": True},
    })


def run_tandem(kind: str, args) -> dict:
    from tandem.pipelines.train import train

    out = Path(args.workdir) / f"tandem-{kind}"
    summary = train(recipe_for(kind, args, out), overwrite=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"]
    stage_s = summary["stages"][0]["seconds"]
    warm_s = sum(r["tokens"] / r["tokens_per_s"] for r in rows[: args.warmup])
    timed = rows[args.warmup :]
    return {"tokens_per_s": sum(r["tokens"] for r in timed) / (stage_s - warm_s), "timed_s": stage_s - warm_s,
            "peak_mem_mb": peak_memory_mb(),
            "steps": len(timed), "loop_tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed)}


# ---------------------------------------------------------------- bare-PyTorch ceiling


def tandem_batches(kind: str, args, tok):
    """tandem's collated batches (pack mode, as the recipe default) for every step, on the device."""
    from tandem.data import collate, encode_all
    from tandem.data.types import SFTExample

    pairs = load_pairs(args)
    exs = [SFTExample(prompt=p.prompt, response=p.chosen) for p in pairs] if kind == "sft" else pairs
    feats, _ = encode_all(tok, exs, args.max_length, "truncate")
    if kind == "dpo":
        feats = [{**f, "ref_chosen_logp": -100.0, "ref_rejected_logp": -100.0} for f in feats]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = []
    for s in range(0, len(feats) - args.batch + 1, args.batch):
        b = collate(feats[s : s + args.batch], mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=args.max_length)
        out.append({k: v.to(dev) for k, v in b.items()})
    return out


def run_ceiling(kind: str, args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tandem.objectives import build

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype_of(args.precision)).to(dev)
    batches = tandem_batches(kind, args, tok)
    objective = build(kind, **({"beta": 0.1} if kind == "dpo" else {}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)  # torch's fastest AdamW (pure bf16 for bf16)
    model.train()
    times, tokens = [], []
    for step, batch in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        loss, _ = objective(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(int((batch["seq_ids"] >= 0).sum()))
    return {"tokens_per_s": sum(tokens) / sum(times), "peak_mem_mb": peak_memory_mb(), "steps": len(times),
            "median_step_s": statistics.median(times)}


# ---------------------------------------------------------------- TRL at its fastest settings


def run_trl(kind: str, args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype_of(args.precision))
    times: list[float] = []
    counts: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            sync()
            times.append(time.perf_counter())

    common = dict(
        output_dir=str(Path(args.workdir) / f"trl-{kind}"), per_device_train_batch_size=args.batch,
        max_steps=args.steps + args.warmup, learning_rate=1e-6, logging_steps=1, save_strategy="no",
        report_to=[], bf16=args.precision == "bf16", use_cpu=dev == "cpu", gradient_checkpointing=False,
        dataloader_num_workers=0, seed=0, lr_scheduler_type="constant", optim="adamw_torch_fused",
    )
    pairs = load_pairs(args)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        from tandem.data import encode_all
        from tandem.data.types import SFTExample

        feats, _ = encode_all(tok, [SFTExample(prompt=p.prompt, response=p.chosen) for p in pairs], args.max_length,
                              "truncate")
        ds = Dataset.from_list([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in feats])
        cfg = SFTConfig(max_length=None, padding_free=True, **common)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    else:
        from trl import DPOConfig, DPOTrainer

        ds = Dataset.from_list([
            {"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs])
        cfg = DPOConfig(max_length=args.max_length, precompute_ref_log_probs=True, beta=0.1, **common)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    collate = trainer.data_collator

    def counting(examples):
        b = collate(examples)
        counts.append(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["input_ids"].numel()))
        return b

    trainer.data_collator = counting
    trainer.train()
    counts = counts[-len(times):]  # the precompute pass collates too (DPO): keep the training batches
    timed = times[args.warmup - 1 :] if args.warmup > 0 else times
    steps = len(timed) - 1
    tokens = sum(counts[len(times) - steps :])
    return {"tokens_per_s": tokens / (timed[-1] - timed[0]), "peak_mem_mb": peak_memory_mb(), "steps": steps}


# ---------------------------------------------------------------- driver


def run_tandem_shared(kind: str, args) -> dict:
    """``tandem-dpo-shared``: ``tandem train`` with ``batching.prefix_sharing: true`` (each pair's prompt computed
    once). The run's metrics count the tokens it computed (the prompt once), so tokens/s here counts what the other
    rows count, prompt + chosen + prompt + rejected: the mean such count per pair of the benchmark's data (every
    pair fills 90-100% of --max-length) times the pairs of the timed steps."""
    from transformers import AutoTokenizer

    from tandem.data import encode_all

    args.prefix_sharing = True
    res = run_tandem(kind, args)
    feats, _ = encode_all(AutoTokenizer.from_pretrained(args.model), load_pairs(args), args.max_length, "truncate")
    per_pair = statistics.mean(len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in feats)
    return {**res, "tokens_per_s": per_pair * args.batch * res["steps"] / res["timed_s"], "loop_tokens_per_s": None}


def one(args) -> None:
    tool, kind = args.one.split("-")[:2]
    run = run_tandem_shared if args.one.endswith("-shared") else {"tandem": run_tandem, "trl": run_trl,
                                                                   "ceiling": run_ceiling}[tool]
    res = run(kind, args)
    print("RESULT " + json.dumps(res))


def table(results: dict) -> str:
    lines = ["| config | tokens/s | peak memory (MB) | vs TRL | vs ceiling |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        kind = name.split("-")[1]
        trl, ceil = results.get(f"trl-{kind}"), results.get(f"ceiling-{kind}")
        vs_trl = f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if trl else "-"
        vs_ceil = f"{r['tokens_per_s'] / ceil['tokens_per_s']:.0%}" if ceil else "-"
        lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} | {vs_trl} | {vs_ceil} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--model", default=None, help="use this model dir instead of a random-init shape")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--workdir", default="runs/bench-throughput")
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--any-length", action="store_true", help="the first pairs, whatever their length")
    ap.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, interleaved; "
                    "medians are reported (a shared machine's load hits every tool alike)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.set_defaults(prefix_sharing=False)  # set by the tandem-dpo-shared configuration
    args = ap.parse_args()
    if args.shape == "llama1b" and not torch.cuda.is_available() and not args.one:
        sys.exit("shape llama1b is for GPUs (it would take hours per step on a CPU)")
    if args.one:
        return one(args)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    args.model = args.model or str(build_model_dir(args.shape, Path(args.workdir) / f"model-{args.shape}"))
    select_pairs(args)
    runs: dict[str, list[dict]] = {}
    for rnd, name in [(r, n) for r in range(args.rounds) for n in args.only.split(",")]:  # interleaved rounds
        cmd = [sys.executable, __file__, "--one", name, "--model", args.model, "--precision", args.precision,
               "--batch", str(args.batch), "--max-length", str(args.max_length), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--workdir", args.workdir] + (["--any-length"] if args.any_length else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            print(f"{name}: FAILED\n{out.stderr[-3000:]}")
            continue
        runs.setdefault(name, []).append(json.loads(line[0][7:]))
        print(f"round {rnd} {name}: {runs[name][-1]} (load {os.getloadavg()[0]:.1f})", flush=True)
    results = {name: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                      "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in rs), "runs": rs}
               for name, rs in runs.items()}
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\nshape={args.model if args.model else args.shape} precision={args.precision} batch={args.batch} "
          f"max_length={args.max_length} steps={args.steps} warmup={args.warmup} rounds={args.rounds} device={dev} "
          f"load={os.getloadavg()[0]:.1f}")
    print(table(results))
    (Path(args.workdir) / "results.json").write_text(
        json.dumps({"args": vars(args), "device": dev, "results": results}, indent=2))


if __name__ == "__main__":
    main()
