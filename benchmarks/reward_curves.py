"""Learning curves of reward-model runs side by side: held-out ranking accuracy (the ``split: val`` rows that
``logging.val_every`` writes, and the stage end) and the training batches' accuracy (a running mean), against
the pairs trained on.

    python benchmarks/reward_curves.py runs/reward runs/reward-help5e5 --labels "1.2k helpful, 2e-5" "1.8k helpful, 5e-5" \\
        --out docs/img/reward_learning_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def curves(run: Path, window: int = 8) -> dict:
    """``{"val": [(pairs, accuracy)], "train": [(pairs, running mean accuracy)], "batch": pairs per step}``."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    batch = int(yaml.safe_load((run / "recipe.yaml").read_text())["batching"]["batch_size"])
    train = [(r["step"], r["accuracy"]) for r in rows if r.get("split", "train") == "train" and "accuracy" in r]
    smooth = [(s * batch, sum(a for _, a in train[max(0, i - window + 1) : i + 1]) / len(train[max(0, i - window + 1) : i + 1]))
              for i, (s, _) in enumerate(train)]
    val = sorted({r["step"]: r["reward/accuracy"] for r in rows if r.get("split") == "val" and "reward/accuracy" in r}.items())
    return {"val": [(s * batch, a) for s, a in val], "train": smooth, "batch": batch}


def plot(runs: list[Path], labels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_v, ax_t) = plt.subplots(1, 2, figsize=(11, 4.6))
    for run, label in zip(runs, labels):
        c = curves(run)
        line = ax_v.plot([p for p, _ in c["val"]], [a for _, a in c["val"]], marker="o", label=label)[0]
        ax_t.plot([p for p, _ in c["train"]], [a for _, a in c["train"]], color=line.get_color(), label=label)
    for ax, title in ((ax_v, "held-out pairs (helpful-online, never trained on)"), (ax_t, "training batches (running mean)")):
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("pairs trained on")
        ax.set_ylabel("ranking accuracy")
        ax.set_title(title, fontsize=10)
    ax_v.axhline(0.62, color="red", lw=0.8, ls="--", label="target 0.62")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.legend(*ax_v.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    labels = a.labels or [r.name for r in a.runs]
    if len(labels) != len(a.runs):
        ap.error(f"{len(a.runs)} runs but {len(labels)} labels")
    for run, label in zip(a.runs, labels):
        c = curves(run)
        print(label, "val:", ", ".join(f"{p} pairs {x:.3f}" for p, x in c["val"]))
    plot(a.runs, labels, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
