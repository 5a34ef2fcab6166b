"""How well does a reward model rank held-out pairs, and is it more than a length detector?

Scores every pair of a preference file that fits in ``--max-length`` tokens (the training recipe's rule: longer pairs
dropped) with each reward model, and reports the ranking accuracy (with its standard error), the accuracy on the pairs
whose chosen reply is the longer one and on those where it is the shorter one, the share of pairs whose chosen reply is
longer (the accuracy of "the longer reply wins"), and the correlation of the reward difference with the length
difference (tokens of the last reply). A model that only learned length scores near 1 on "chosen longer" and near 0
on "chosen shorter".

    python benchmarks/reward_heldout.py --model old=runs/reward/final --model mix=runs/reward-mix/final \\
        --pairs ../shared/data/hh-rlhf/helpful-online/test.jsonl.gz --out runs/reward-heldout

Writes ``OUT/table.md`` and ``OUT/table.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from tandem.data import collate, encode_all, load_examples
from tandem.models import load_reward_model
from tandem.objectives.reward import sequence_rewards

IGNORE = -100


def reply_tokens(feature: dict, side: str) -> int:
    return sum(1 for x in feature[f"{side}_labels"] if x != IGNORE)


def summarise(diffs: list[float], length_diffs: list[int]) -> dict:
    """Accuracy overall and split by which reply is longer; ``diffs`` = r(chosen) - r(rejected), ``length_diffs`` =
    tokens(chosen) - tokens(rejected). A tie in reward counts as wrong; pairs of equal length are only in the total."""
    n = len(diffs)
    right = [d > 0 for d in diffs]
    acc = sum(right) / n
    longer = [r for r, l in zip(right, length_diffs) if l > 0]
    shorter = [r for r, l in zip(right, length_diffs) if l < 0]
    mean_d, mean_l = sum(diffs) / n, sum(length_diffs) / n
    cov = sum((d - mean_d) * (l - mean_l) for d, l in zip(diffs, length_diffs))
    var_d = sum((d - mean_d) ** 2 for d in diffs)
    var_l = sum((l - mean_l) ** 2 for l in length_diffs)
    return {
        "pairs": n, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n),
        "chosen_longer": len(longer), "acc_chosen_longer": sum(longer) / len(longer) if longer else None,
        "chosen_shorter": len(shorter), "acc_chosen_shorter": sum(shorter) / len(shorter) if shorter else None,
        "longer_wins": len(longer) / n, "corr_reward_length": cov / math.sqrt(var_d * var_l) if var_d and var_l else None,
    }


@torch.no_grad()
def score(model_path: str, pairs: str, max_length: int, batch: int = 8) -> dict:
    model, tok = load_reward_model(model_path, dtype="bfloat16")
    model.eval()
    examples, _ = load_examples(pairs, role="preference")
    feats, stats = encode_all(tok, examples, max_length, "drop")
    diffs: list[float] = []
    for i in range(0, len(feats), batch):
        part = feats[i : i + batch]
        b = collate(part, mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=max_length, prefix_sharing=True)
        r = sequence_rewards(model, b, 2 * len(part))
        diffs += (r[: len(part)] - r[len(part) :]).tolist()
    lengths = [reply_tokens(f, "chosen") - reply_tokens(f, "rejected") for f in feats]
    return {**summarise(diffs, lengths), "dropped": stats.dropped}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH of a reward model (repeatable)")
    ap.add_argument("--pairs", required=True, help="a preference file (e.g. HH-RLHF jsonl.gz)")
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    rows = []
    for spec in a.model:
        name, _, path = spec.partition("=")
        rows.append({"model": name, "path": path, **score(path, a.pairs, a.max_length)})
        print(json.dumps(rows[-1]))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.json").write_text(json.dumps({"pairs_file": a.pairs, "max_length": a.max_length, "rows": rows}, indent=2))

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    lines = ["| model | pairs | accuracy | SE | acc. chosen longer (n) | acc. chosen shorter (n) | longer wins | corr(reward, length) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['pairs']} | {f(r['accuracy'])} | {f(r['se'])} | {f(r['acc_chosen_longer'])} "
              f"({r['chosen_longer']}) | {f(r['acc_chosen_shorter'])} ({r['chosen_shorter']}) | {f(r['longer_wins'])} | "
              f"{f(r['corr_reward_length'])} |" for r in rows]
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
