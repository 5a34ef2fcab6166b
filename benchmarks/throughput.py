"""Training throughput: tandem's SFT and DPO against TRL's SFTTrainer and DPOTrainer, same run.

Same model, data (HH-RLHF pairs from ../shared/data), batch size, max length and precision for every
configuration. Each configuration runs in its own subprocess, so peak memory is its own (CPU: peak RSS;
GPU: torch.cuda.max_memory_allocated). Tokens/s counts real (non-padding) prompt+response tokens, chosen
and rejected both for DPO, over the timed steps (after warm-up steps).

    python benchmarks/throughput.py                        # CPU defaults: small llama shape, fp32
    python benchmarks/throughput.py --shape smollm2 --precision bf16 --batch 8 --max-length 512   # GPU

TRL is a benchmark-only dependency: pip install -e ".[bench]".
Baselines: TRL SFTTrainer (padding) and TRL DPOTrainer with precompute_ref_log_probs=True (its fastest
setting; the reference pass is excluded from the timed steps for both tools).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
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


def build_model_dir(shape: str, out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    h, n, heads, kv, inter, vocab = SHAPES[shape]
    tok_dir = os.environ.get("TANDEM_BENCH_TOKENIZER", "models/smollm2-135m-instruct")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = LlamaConfig(
        vocab_size=max(vocab, len(tok)), hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
        num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def load_pairs(n: int):
    from tandem.data import load_examples

    examples, _ = load_examples(str(DATA), limit=n * 2)
    return examples[:n]


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dtype_of(precision: str):
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


# ---------------------------------------------------------------- tandem


def run_tandem(kind: str, args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tandem.data import collate, encode_all
    from tandem.data.types import SFTExample
    from tandem.objectives import build

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype_of(args.precision)).to(dev)
    model.config.use_cache = False
    pairs = load_pairs(args.batch * (args.steps + args.warmup))
    if kind == "sft":
        examples = [SFTExample(prompt=p.prompt, response=p.chosen) for p in pairs]
        objective = build("sft")
    else:
        examples = pairs
        objective = build("dpo", beta=0.1)
    feats, _ = encode_all(tok, examples, args.max_length, "truncate")

    def batch_fn(fs):
        b = collate(fs, mode="pack", pad_id=tok.pad_token_id)
        return {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b.items()}

    if kind == "dpo":
        feats = objective.prepare(model, feats, batch_fn)  # reference pass, not timed (as TRL precompute)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    model.train()
    tokens, t0 = 0, None
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        fs = feats[step * args.batch : (step + 1) * args.batch]
        batch = batch_fn(fs)
        loss, _ = objective(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            tokens += int((batch["seq_ids"] >= 0).sum())
    if dev == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": tokens / dt, "peak_mem_mb": peak_memory_mb(), "steps": args.steps}


# ---------------------------------------------------------------- TRL


def run_trl(kind: str, args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype_of(args.precision))
    pairs = load_pairs(args.batch * (args.steps + args.warmup))
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    common = dict(
        output_dir=str(Path(args.workdir) / f"trl-{kind}"), per_device_train_batch_size=args.batch,
        max_steps=args.steps + args.warmup, learning_rate=1e-6, logging_steps=10_000, save_strategy="no",
        report_to=[], bf16=args.precision == "bf16", use_cpu=dev == "cpu", gradient_checkpointing=False,
        dataloader_num_workers=0, seed=0,
    )
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_list([{"prompt": p.prompt, "completion": [{"role": "assistant", "content": p.chosen}]} for p in pairs])
        cfg = SFTConfig(max_length=args.max_length, completion_only_loss=True, **common)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    else:
        from trl import DPOConfig, DPOTrainer

        ds = Dataset.from_list(
            [
                {"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]}
                for p in pairs
            ]
        )
        cfg = DPOConfig(max_length=args.max_length, precompute_ref_log_probs=True, beta=0.1, **common)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    # tokens per example, counted the same way as for tandem (tandem's encoder, same chat template)
    from tandem.data import encode_all
    from tandem.data.types import SFTExample

    exs = [SFTExample(prompt=p.prompt, response=p.chosen) for p in pairs] if kind == "sft" else pairs
    feats, _ = encode_all(tok, exs, args.max_length, "truncate")
    per_ex = sum(len(f.get("input_ids", [])) + len(f.get("chosen_input_ids", [])) + len(f.get("rejected_input_ids", [])) for f in feats) / len(feats)
    trainer.train()
    timed = times[args.warmup - 1 :] if args.warmup > 0 else times
    dt = timed[-1] - timed[0]
    steps = len(timed) - 1
    return {"tokens_per_s": per_ex * args.batch * steps / dt, "peak_mem_mb": peak_memory_mb(), "steps": steps}


# ---------------------------------------------------------------- driver


def one(args) -> None:
    tool, kind = args.one.split("-")
    res = (run_tandem if tool == "tandem" else run_trl)(kind, args)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--model", default=None, help="use this model dir instead of a random-init shape")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workdir", default="runs/bench-throughput")
    ap.add_argument("--only", default="tandem-sft,trl-sft,tandem-dpo,trl-dpo")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    model = args.model or str(build_model_dir(args.shape, Path(args.workdir) / f"model-{args.shape}"))
    results = {}
    for name in args.only.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--model", model, "--precision", args.precision,
               "--batch", str(args.batch), "--max-length", str(args.max_length), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--workdir", args.workdir]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            print(f"{name}: FAILED\n{out.stderr[-3000:]}")
            continue
        results[name] = json.loads(line[0][7:])
        print(f"{name}: {results[name]}", flush=True)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\nshape={args.model or args.shape} precision={args.precision} batch={args.batch} max_length={args.max_length} device={dev}")
    print("| config | tokens/s | peak memory (MB) | tokens/s vs TRL |")
    print("|---|---|---|---|")
    for name, r in results.items():
        kind = name.split("-")[1]
        base = results.get(f"trl-{kind}")
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(f"| {name} | {r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} | {ratio} |")
    (Path(args.workdir) / "results.json").write_text(json.dumps({"args": vars(args), "device": dev, "results": results}, indent=2))


if __name__ == "__main__":
    main()
