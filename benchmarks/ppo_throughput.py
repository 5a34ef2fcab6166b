"""PPO throughput: rollout (sampling) tokens/s against training tokens/s, and sampling with against without the KV
cache, in the same run on the same prompts.

    python benchmarks/ppo_throughput.py                                    # random Llama (hidden 256, 4 layers), CPU
    python benchmarks/ppo_throughput.py --model models/smollm2-135m-instruct --steps 4 --new-tokens 32

Prompts are HH-RLHF prompts from ../shared/data (each cut to its last ``--prompt-len`` tokens). Without
``--model`` a random Llama of ``--hidden``/``--layers`` with a byte-level BPE tokenizer trained on those prompts is
built (``tandem.models.tiny``). Measured:

1. ``generate``: ``--batch`` prompts, ``--new-tokens`` new tokens (EOS disabled so every row generates all of them),
   sampling with the KV cache (what PPO rollouts use) and without it (the baseline), ``--repeats`` timed calls
   after one warm-up call; tokens/s = generated tokens / seconds.
2. ``ppo``: ``--steps`` real PPO iterations through ``tandem.pipelines.train.train`` (method ``ppo``, value-head critic,
   programmatic reward = response length, no warm-up), as logged in metrics.jsonl: ``rollout_tokens_per_s``
   (generated tokens / sampling seconds) and ``train_tokens_per_s`` (prompt + response tokens through the policy's
   forward and backward over ``ppo_epochs`` x ``mini_batches`` updates / update seconds). The first step is
   dropped (warm-up); medians of the rest.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-online" / "test.jsonl.gz"


def length_reward(prompt: str, response: str) -> float:
    """Programmatic reward of the PPO run: response length in characters / 100."""
    return len(response) / 100.0


def hh_texts(n: int) -> list[str]:
    with gzip.open(DATA, "rt") as f:
        return [json.loads(line)["chosen"] for _, line in zip(range(n), f)]


def time_generate(model, prompts, pad_id, new_tokens, use_cache, repeats) -> float:
    from tandem.objectives.ppo.rollout import sample

    no_eos = [model.config.vocab_size + 7]  # outside the vocabulary: every row generates new_tokens tokens
    sample(model, prompts, pad_id, no_eos, 1.0, 1.0, new_tokens, seed=0, use_cache=use_cache)  # warm-up
    t = time.perf_counter()
    for i in range(repeats):
        out = sample(model, prompts, pad_id, no_eos, 1.0, 1.0, new_tokens, seed=i + 1, use_cache=use_cache)
    dt = time.perf_counter() - t
    assert all(len(r) == new_tokens for r in out)
    return repeats * len(prompts) * new_tokens / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: a random Llama built here)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--mini-batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tandem.config.recipe import parse_recipe
    from tandem.data.encode import prompt_ids
    from tandem.data.formats import load_examples
    from tandem.pipelines.train import train
    from tandem.models.tiny import make_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="ppo-bench-"))
    model_dir = Path(args.model) if args.model else make_tiny_llama(
        work / "model", hh_texts(400), hidden=args.hidden, layers=args.layers, heads=4, vocab_size=2048)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    examples, _ = load_examples(str(DATA), limit=200)
    prompts = [prompt_ids(tok, ex.prompt)[-args.prompt_len:] for ex in examples[: args.batch]]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    print(f"model {model_dir} ({n_params / 1e6:.1f}M params), torch threads {torch.get_num_threads()}, "
          f"batch {args.batch}, prompt <= {args.prompt_len} tokens, {args.new_tokens} new tokens")
    with_cache = time_generate(model, prompts, pad, args.new_tokens, True, args.repeats)
    no_cache = time_generate(model, prompts, pad, args.new_tokens, False, args.repeats)
    print("\n| sampling | tokens/s | ratio |\n|---|---|---|")
    print(f"| generate, no KV cache (baseline) | {no_cache:,.0f} | 1.00 |")
    print(f"| generate, KV cache (PPO rollouts) | {with_cache:,.0f} | {with_cache / no_cache:.2f} |")
    del model

    raw = {
        "name": "ppo-bench", "output_dir": str(work / "run"), "seed": 0, "precision": "fp32",
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "data": {"preference": {"source": str(DATA), "limit": 200}, "max_length": args.prompt_len + args.new_tokens},
        "batching": {"mode": "pack", "batch_size": args.batch},
        "optimizer": {"lr": 1e-5, "scheduler": "constant"},
        "schedule": {"method": "ppo", "epochs": 100, "max_steps": args.steps},
        "objectives": {"preference": {
            "name": "ppo", "reward_fn": "ppo_throughput:length_reward", "critic": "value_head", "critic_warmup_steps": 0,
            "max_new_tokens": args.new_tokens, "ppo_epochs": args.ppo_epochs, "mini_batches": args.mini_batches}},
        "checkpoint": {"every": 0, "keep": 1, "stage_weights": False},
        "logging": {"progress": False, "tensorboard": False},
        "save_merged": False,
    }
    train(parse_recipe(raw), overwrite=True)
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"][1:] or rows
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    roll, trn = med("rollout_tokens_per_s"), med("train_tokens_per_s")
    print(f"\n| PPO step ({len(rows)} timed steps, {args.ppo_epochs} epochs x {args.mini_batches} mini-batches) "
          "| tokens/s | ratio |\n|---|---|---|")
    print(f"| rollout: sampling (generated tokens) | {roll:,.0f} | 1.00 |")
    print(f"| training: forward + backward + step (prompt + response tokens, per update pass) | {trn:,.0f} | "
          f"{trn / roll:.2f} |")
    print(f"\nseconds per PPO step (median): {med('seconds'):.2f}; mean response length {med('response_len'):.1f}")


if __name__ == "__main__":
    main()
