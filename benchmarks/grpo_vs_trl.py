"""A GRPO step of ``tandem train`` against TRL's ``GRPOTrainer`` at its fastest CPU settings: same model, prompts,
num_generations and completion length, in one run (each tool in its own subprocess: peak memory = its peak RSS).

    python benchmarks/grpo_vs_trl.py --model models/smollm2-135m-instruct            # the real model
    python benchmarks/grpo_vs_trl.py                                                 # a random tiny Llama (quick)

Both tools train on the same ``--prompts`` prompt-only chat rows (the first user turns of HH-RLHF helpful-online
test pairs, cut to ``--prompt-chars`` characters), ``--num-generations`` completions each, ``--batch`` prompts per
step (TRL: ``per_device_train_batch_size = batch * num_generations`` completions), one optimizer step per
generation (``num_iterations 1``, ``steps_per_generation 1``), ``beta 0`` (no reference pass, both tools' default),
loss ``dapo``, the same reward function (TRL's signature: ``reward_len``); tandem's ``data.max_length``
(``--max-length``, 256) caps its packed rows, so a row holds one or two sequences (no wasted attention). EOS is
suppressed in both so every completion has exactly ``--new-tokens`` tokens: the same work per step (TRL:
``generation_kwargs={"min_new_tokens": N}``; tandem: the loop's EOS list replaced by an id outside the vocabulary).

TRL's fastest CPU settings here: bf16 weights where the CPU has native bf16 (``bf16=True``, as tandem's
``precision: auto``), ``adamw_torch_fused``, dropout off (TRL's default), no gradient checkpointing, no vLLM
(CPU), ``logging_steps`` 1, no reports, no saves. Timed: wall seconds per step after ``--warmup`` steps (generation,
scoring, the update); tokens/s = (prompt + completion tokens of the step) / step seconds, tokens tandem's update
computed: with ``batching.prefix_sharing`` (tandem's best setting, ``tandem``) each prompt once per group, without it
(``tandem-unshared``) once per completion, as TRL.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-online" / "test.jsonl.gz"


def reward_len(completions, **kwargs):
    """TRL's documented example reward (standard rows); on chat rows the assistant message's content."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [-abs(20 - len(t)) for t in texts]


def prompts(n: int, chars: int) -> list[str]:
    from tandem.data.formats import parse_hh_transcript, split_hh

    out = []
    with gzip.open(DATA, "rt") as f:
        for line in f:
            prompt, _ = split_hh(json.loads(line)["chosen"])
            out.append(parse_hh_transcript(prompt)[0]["content"][:chars])
            if len(out) == n:
                return out
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bf16_native() -> bool:
    from tandem.models.precision import resolve

    return resolve("auto", "cpu").name == "bf16"


def write_rows(args) -> Path:
    path = Path(args.workdir) / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": p}]} for p in prompts(args.prompts, args.prompt_chars)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_tandem(args, share: bool = True) -> dict:
    import tandem.engine.group_loop as gl
    from tandem.config.recipe import parse_recipe
    from tandem.pipelines.train import train

    gl.eos_ids = lambda model, tok: [model.config.vocab_size + 7]  # EOS never comes: every completion is full length
    out = Path(args.workdir) / ("tandem-run" if share else "tandem-unshared-run")
    raw = {"name": "grpo-bench", "output_dir": str(out), "seed": 0, "precision": "auto",
           "model": {"name_or_path": args.model},
           "data": {"preference": {"source": args.rows}, "max_length": args.max_length, "val_size": 0},
           "batching": {"mode": "pack", "batch_size": args.batch, "prefix_sharing": share},
           "optimizer": {"lr": 1e-6, "scheduler": "constant"},
           "schedule": {"method": "grpo", "max_steps": args.steps + args.warmup, "epochs": 100},
           "objectives": {"preference": {"name": "grpo", "reward_funcs": [f"{Path(__file__).resolve()}:reward_len"],
                                         "num_generations": args.num_generations,
                                         "max_completion_length": args.new_tokens, "beta": 0.0, "loss_type": "dapo"}},
           "checkpoint": {"every": 0, "stage_weights": False},
           "logging": {"progress": False, "tensorboard": False}}
    train(parse_recipe(raw), overwrite=out.exists())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"][args.warmup:]
    secs = [r["seconds"] for r in rows]
    return {"step_s": statistics.median(secs), "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in rows),
            "rollout_tokens_per_s": statistics.median(r["rollout_tokens_per_s"] for r in rows),
            "peak_mem_mb": peak_mb(), "steps": len(rows)}


def run_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    bf16 = bf16_native()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    marks: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            marks.append(time.perf_counter())

    rows = [json.loads(x) for x in Path(args.rows).read_text().splitlines()]
    cfg = GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl-run"), per_device_train_batch_size=args.batch * args.num_generations,
        num_generations=args.num_generations, max_completion_length=args.new_tokens, num_iterations=1,
        steps_per_generation=1, gradient_accumulation_steps=1, beta=0.0, loss_type="dapo", temperature=1.0,
        max_steps=args.steps + args.warmup, learning_rate=1e-6, lr_scheduler_type="constant", logging_steps=1,
        save_strategy="no", report_to=[], bf16=bf16, use_cpu=True, gradient_checkpointing=False,
        dataloader_num_workers=0, seed=0, optim="adamw_torch_fused", generation_kwargs={"min_new_tokens": args.new_tokens})
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_len], args=cfg, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=[Clock()])
    original = trainer._generate_and_score_completions

    def counting(inputs):
        out = original(inputs)
        tokens.append(int(out["prompt_mask"].sum() + out["completion_mask"].sum()))
        return out

    trainer._generate_and_score_completions = counting
    trainer.train()
    spans = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)][args.warmup:]
    toks = tokens[args.warmup:len(spans) + args.warmup]
    return {"step_s": statistics.median(spans), "tokens_per_s": statistics.median(t / s for t, s in zip(toks, spans)),
            "peak_mem_mb": peak_mb(), "steps": len(spans)}


def build_tiny(out: Path) -> str:
    from tandem.models.tiny import make_tiny_llama

    if not (out / "config.json").exists():
        make_tiny_llama(out, prompts(64, 200), seed=0)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: a random tiny Llama built here)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-chars", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4, help="prompts per step")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256, help="tandem's data.max_length (prompt + completion; also "
                    "its packed rows' cap)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default="runs/bench-grpo")
    ap.add_argument("--only", default="tandem,trl", help="tools to run, of tandem (prefix sharing: each prompt once per "
                    "group in the update), tandem-unshared (every completion with its own copy of the prompt), trl")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        res = {"tandem": run_tandem, "tandem-unshared": lambda a: run_tandem(a, share=False), "trl": run_trl}[args.one](args)
        print("RESULT " + json.dumps(res))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    args.model = args.model or build_tiny(Path(args.workdir) / "model-tiny")
    rows = write_rows(args)
    results = {}
    for name in args.only.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--rows", str(rows), "--model", args.model,
               "--batch", str(args.batch), "--num-generations", str(args.num_generations), "--new-tokens",
               str(args.new_tokens), "--max-length", str(args.max_length), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--workdir", args.workdir]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            print(f"{name}: FAILED\n{out.stderr[-3000:]}")
            continue
        results[name] = json.loads(line[0][7:])
        print(f"{name}: {results[name]} (load {os.getloadavg()[0]:.1f})", flush=True)
    print("\n| tool | s / step | tokens/s | peak memory (MB) | speed vs TRL | memory vs TRL |\n|---|---:|---:|---:|---:|---:|")
    trl = results.get("trl")
    for name, r in results.items():
        speed = f"{trl['step_s'] / r['step_s']:.2f}x" if trl else "-"
        mem = f"{r['peak_mem_mb'] / trl['peak_mem_mb']:.2f}x" if trl else "-"
        print(f"| {name} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} | {speed} | {mem} |")


if __name__ == "__main__":
    main()
