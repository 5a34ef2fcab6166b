"""The GPU check behind ``benchmarks/gpu_check.sh``: every GPU figure the project needs, in one run of at most 8
minutes on one H100/H200, written to one JSON file and one markdown table.

Steps (each in its own subprocess, with a time cap; a step that fails or runs out of time is recorded as such and the
others still run):

1. ``throughput-smollm2`` / ``throughput-1b``: ``benchmarks/throughput.py`` on random models of the SmolLM2-135M and
   Llama-1B shapes in bf16: ``tandem train`` SFT and DPO (and DPO with prefix sharing) against TRL at its fastest
   settings and the bare-PyTorch ceiling. The TRL rows need ``trl`` (the ``bench`` extra): without it they are
   recorded as skipped, the tandem and ceiling rows still run;
2. ``generation``: ``benchmarks/generation.py``: tandem's sampler against ``model.generate`` (SmolLM2 when
   ``models/smollm2-135m-instruct`` exists, else a random model of its shape), bf16;
3. ``fsdp2``: ``benchmarks/fsdp_cpu.py --device cuda --procs 1 --shard-one``: tandem's FSDP2 path
   (``tandem.distributed.shard_model``, ``fully_shard`` per decoder layer) on one GPU under ``torchrun`` (nccl), a full
   fine-tune of a random SmolLM2-shape model (untied embeddings), fp32, with the modified EWC active and without
   (``tandem train`` itself trains unsharded when an FSDP config has one process, so this step calls the FSDP path
   directly);
4. ``hbat``: a short ``tandem train`` hbat run (LoRA, SFT-1, DPO-1, SFT-2, DPO-2, modified EWC) on the same shape.

``--dry-run`` runs the same steps with tiny shapes, fp32, a few steps, on whatever device there is (the CI test runs it
on CPU, two steps at a time on one thread each: ``--jobs``). Run again into the same ``--out``, every step starts
over (the hbat run with ``--overwrite``: the directory is the check's own). The tokenizer is SmolLM2's when
``models/smollm2-135m-instruct`` exists, else a byte-level BPE trained here on the benchmark data (``tokenizer`` in
the JSON says which).

    bash benchmarks/gpu_check.sh                 # on the GPU machine: runs/gpu-check/gpu_check.{json,md}
    bash benchmarks/gpu_check.sh --dry-run       # tiny shapes, any machine
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SMOLLM2 = ROOT / "models" / "smollm2-135m-instruct"
#: random-model shapes of the training steps (throughput.py's names): (full run, dry run)
SHAPES = {"throughput-smollm2": ("smollm2", "tiny"), "throughput-1b": ("llama1b", "tiny")}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(out: Path) -> tuple[str, str]:
    """``(path, description)`` of the tokenizer the steps use: SmolLM2's, or a small BPE trained on the data."""
    if (SMOLLM2 / "tokenizer.json").exists():
        return str(SMOLLM2), "SmolLM2-135M-Instruct"
    if (out / "tokenizer.json").exists():
        return str(out), "byte-level BPE (2048 ids) trained on HH-RLHF and Alpaca text"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for path in (DATA / "hh-rlhf" / "helpful-online" / "test.jsonl.gz", DATA / "alpaca" / "alpaca_data_sample5000.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            texts += [line for _, line in zip(range(2000), f)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<pad>", "<s>", "<|im_end|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return str(out), "byte-level BPE (2048 ids) trained on HH-RLHF and Alpaca text"


def random_model(tokenizer: str, shape: str, out: Path, tied: bool) -> Path:
    """A random Llama of throughput.py's ``shape`` saved with the tokenizer (untied embeddings for FSDP)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from throughput import SHAPES as TP_SHAPES
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    h, n, heads, kv, inter, vocab = TP_SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = LlamaConfig(vocab_size=max(vocab, len(tok)), hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048,
                      tie_word_embeddings=tied, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def train_recipe(out: Path, model: Path, *, lora: bool, steps: int, max_length: int, batch: int, precision: str) -> Path:
    """An hbat recipe (2 parts, modified EWC) on HH-RLHF pairs and Alpaca instructions, ``steps`` optimizer steps."""
    n = steps * batch
    lora_cfg = "{r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}" if lora else "null"
    text = f"""name: gpu-check
output_dir: {out / 'run'}
seed: 0
precision: {precision}
model: {{name_or_path: {model}, lora: {lora_cfg}}}
data:
  sft: {{source: {DATA / 'alpaca' / 'alpaca_data_sample5000.jsonl.gz'}, limit: {n}}}
  preference: {{source: {DATA / 'hh-rlhf' / 'helpful-online' / 'test.jsonl.gz'}, limit: {n}}}
  max_length: {max_length}
  overlong: truncate
  val_size: 0
batching: {{mode: pack, batch_size: {batch}, grad_accum: 1, max_tokens_per_row: max_length, group_by_length: true}}
optimizer: {{lr: 1.0e-4, scheduler: cosine, warmup_ratio: 0.0, max_grad_norm: 1.0}}
schedule: {{method: hbat, parts: 2, epochs: 1, max_steps: {steps}}}
objectives:
  sft: {{name: sft}}
  preference: {{name: dpo, loss_type: sigmoid, beta: 0.1}}
hbat:
  ewc: {{lam: 1.0, f_max: 50.0, normalise: zscore, temperature: 1.0}}
checkpoint: {{every: 0, keep: 1}}
logging: {{every: 1, tensorboard: false, progress: false}}
"""
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(text)
    return out / "recipe.yaml"


def run_step(cmd: list[str], cap: float, log: Path, env: dict | None = None) -> tuple[str, float, str]:
    """``(status, seconds, tail of the output)``; status ``ok``, ``failed (exit N)`` or ``timed out``."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(cap, 1), cwd=ROOT,
                               env={**os.environ, **(env or {})})
            status = "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {cap:.0f} s"
    return status, time.perf_counter() - t0, log.read_text()[-2000:]


def stage_seconds(run: Path) -> dict:
    """Wall seconds of each stage and the run's tokens/s from its stage files (``stages/NN/stage.json``)."""
    out = {}
    for f in sorted((run / "stages").glob("*/stage.json")):
        s = json.loads(f.read_text())
        out[f.parent.name] = {k: s[k] for k in ("seconds", "steps", "tokens_per_s") if k in s}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, fp32, few steps (any machine, CPU included)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    ap.add_argument("--budget", type=float, default=None, help="seconds for all steps, later steps are skipped "
                    "(default 480; 1800 for --dry-run, whose CPU steps have no target)")
    ap.add_argument("--only", default=None, help="comma-separated step names")
    ap.add_argument("--jobs", type=int, default=None, help="steps run at once (default 1; 2 for --dry-run, whose "
                    "figures are not timings: set OMP_NUM_THREADS=1 to give each step one core)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dry, py = args.dry_run, sys.executable
    budget = args.budget or (1800.0 if dry else 480.0)
    cap = (lambda gpu_s: 600) if dry else (lambda gpu_s: gpu_s)  # per-step caps: the GPU run's share of 8 minutes
    t_start = time.perf_counter()
    tokenizer, tok_desc = make_tokenizer(out / "tokenizer")
    env = {"TANDEM_BENCH_TOKENIZER": tokenizer, "TOKENIZERS_PARALLELISM": "false"}
    has_trl = importlib.util.find_spec("trl") is not None
    precision = "fp32" if dry else "bf16"
    steps: dict[str, dict] = {}
    plan = []
    for name, (shape, tiny) in SHAPES.items():
        configs = ["tandem-sft", "ceiling-sft", "tandem-dpo", "tandem-dpo-shared", "ceiling-dpo"]
        trl = ["trl-sft", "trl-dpo"]
        if name == "throughput-1b":
            configs = ["tandem-sft", "tandem-dpo"]  # 1B: the ceiling rows would not fit the 8 minutes
        if dry:  # one of each kind of row (a subprocess each): keeps CI's dry run short
            configs, trl = (["tandem-dpo"], ["trl-dpo"]) if name == "throughput-1b" else \
                (["tandem-sft", "tandem-dpo", "ceiling-dpo"], trl)
        configs += trl if has_trl else []
        b, length, n, warm = ("2", "64", "1", "1") if dry else (("8", "512", "3", "1") if shape == "smollm2" else ("4", "512", "2", "1"))
        cmd = [py, "benchmarks/throughput.py", "--shape", tiny if dry else shape, "--precision", precision,
               "--batch", b, "--max-length", length, "--steps", n, "--warmup", warm, "--only", ",".join(configs),
               "--workdir", str(out / name)] + (["--any-length"] if dry else [])
        plan.append((name, cmd, cap(150), {"skipped": [] if has_trl else [f"{', '.join(trl)} (trl not installed)"]}))
    gen_model = ["--model", str(SMOLLM2)] if (SMOLLM2 / "config.json").exists() and not dry else \
        ["--shape", "tiny" if dry else "smollm2", "--tokenizer", tokenizer]
    plan.append(("generation", [py, "benchmarks/generation.py", *gen_model, "--dtype", "float32" if dry else "bfloat16",
                                "--prompts", "8" if dry else "64", "--batches", "4" if dry else "8,64",
                                "--max-new-tokens", "8" if dry else "32", "--matmul", "256" if dry else "8192",
                                "--json", str(out / "generation.json")], cap(90), {}))
    shape = "tiny" if dry else "smollm2"
    plan.append(("fsdp2", [py, "benchmarks/fsdp_cpu.py", "--device", "cpu" if dry else "cuda", "--procs", "1",
                           "--shard-one", "--shape", shape, "--steps", "2" if dry else "5", "--rows", "2" if dry else "8",
                           "--length", "32" if dry else "512", "--json", str(out / "fsdp2.json")], cap(60), {}))
    hbat_model = random_model(tokenizer, shape, out / f"model-{shape}", tied=True)
    hbat_recipe = train_recipe(out / "hbat", hbat_model, lora=True, steps=4 if dry else 16, batch=2 if dry else 8,
                               max_length=64 if dry else 512, precision=precision)
    plan.append(("hbat", [py, "-m", "tandem.cli.main", "train", str(hbat_recipe), "--no-progress", "--overwrite"], cap(60),
                 {"run": out / "hbat" / "run"}))
    plan.sort(key=lambda step: step[0] == "throughput-1b")  # the longest step last: the budget cuts it first
    only = set(args.only.split(",")) if args.only else None
    plan = [step for step in plan if not only or step[0] in only]
    jobs = args.jobs or (2 if dry else 1)

    def timed(step):  # the budget is checked as each step starts
        name, cmd, cap, _ = step
        left = budget - (time.perf_counter() - t_start)
        if left < 10:
            return None
        return run_step(cmd, min(cap, left), out / f"{name}.log", env)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # the GPU run: one step at a time (its timings are the point)
        done = list(pool.map(timed, plan))
    for (name, cmd, cap, extra), ran in zip(plan, done):
        if ran is None:
            steps[name] = {"status": "skipped (time budget spent)"}
            continue
        status, secs, tail = ran
        rec = {"status": status, "seconds": round(secs, 1), "command": " ".join(cmd)}
        if name.startswith("throughput") and (out / name / "results.json").exists():
            res = json.loads((out / name / "results.json").read_text())["results"]
            rec["results"] = {k: {"tokens_per_s": round(v["tokens_per_s"], 1), "peak_mem_mb": round(v["peak_mem_mb"])}
                              for k, v in res.items()}
            rec["skipped"] = extra["skipped"]
        if name == "generation" and (out / "generation.json").exists():
            rec["results"] = json.loads((out / "generation.json").read_text())
        if name == "fsdp2" and (out / "fsdp2.json").exists():
            rec["results"] = json.loads((out / "fsdp2.json").read_text())["rows"]
        if "run" in extra and (extra["run"] / "stages").exists():
            rec["stages"] = stage_seconds(extra["run"])
        if status != "ok":
            rec["output_tail"] = tail
        steps[name] = rec
        print(f"{name}: {status} in {secs:.0f} s", flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {"dry_run": dry, "device": device, "torch": torch.__version__, "tokenizer": tok_desc, "trl": has_trl,
              "seconds": round(time.perf_counter() - t_start, 1), "steps": steps}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    sys.exit(0 if all(s["status"] == "ok" for s in steps.values()) else 1)


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({'dry run, ' if result['dry_run'] else ''}{result['device']}, torch {result['torch']}, "
             f"{result['seconds']:.0f} s)", "", f"Tokenizer: {result['tokenizer']}.", "",
             "| step | status | seconds | figure |", "|---|---|---:|---|"]
    for name, s in result["steps"].items():
        figure = ""
        if name.startswith("throughput") and "results" in s:
            figure = "; ".join(f"{k} {v['tokens_per_s']:.0f} tok/s, {v['peak_mem_mb']} MB" for k, v in s["results"].items())
            if s.get("skipped"):
                figure += "; skipped: " + ", ".join(s["skipped"])
        elif name == "generation" and "results" in s:
            figure = "; ".join(f"{r['config']} b{r['batch']} {r['tokens_per_s']:.0f} tok/s"
                               + (f" (same replies {r['same_replies']})" if "same_replies" in r else "")
                               for r in s["results"]["rows"])
        elif name == "fsdp2" and "results" in s:
            figure = "; ".join(f"{r['procs']} process{'es' if r['procs'] > 1 else ''}{' sharded' if r['sharded'] else ''}, "
                               f"regularizer {r['reg']}: {r['step_ms']:.0f} ms/step"
                               + (f", {r['gpu_peak_mib']:.0f} MiB GPU peak" if r.get("gpu_peak_mib") else "")
                               for r in s["results"])
        elif "stages" in s:
            figure = "; ".join(f"{k} {v.get('seconds', 0):.1f} s" for k, v in s["stages"].items())
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '')} | {figure} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
