"""How selective is HBAT's importance F on a real model? SmolLM2-135M-Instruct after one real SFT stage (Alpaca)
and one real DPO stage (HH-RLHF helpful-rejection-sampled), trained by tandem itself (``schedule.method: hbat``,
``parts: 1``), once with LoRA (r 16, all-linear) and once as a full fine-tune.

The per-tensor changes are read from the run directory (``stages/<last>/importance.json``: ``AC^IFA``,
``AC^HPA`` and the magnitudes ``M`` the change tracker records), so every normalisation is applied to the same
changes by :func:`tandem.regularizers.importance.importance`. For each normalisation and each kind: the share
of ``F_max`` held by the top 10 % of tensors, the entropy of ``F / F_max`` divided by ``log N`` (1 = uniform),
the Gini coefficient (0 = uniform, 1 = one-hot), the largest single share, and ``N``. A table
(``OUT/table.md``, ``OUT/table.json``) and a plot of the sorted ``F / F_max`` per normalisation, log y
(``OUT/importance_real.png``).

Resumable: a finished run (``OUT/<mode>/run/summary.json``) is reused, an unfinished one resumes.

    nice -n 10 python benchmarks/importance_real.py --out runs/importance            # lora, then full
    python benchmarks/importance_real.py --out runs/importance-smoke --modes lora --steps 2 --batch 2 --max-length 64  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import yaml

from tandem.regularizers.importance import importance

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# (label, normalise, temperature): the paper's raw softmax, the authors' release, the old and current defaults,
# and the scale-free alternatives at the temperatures worth comparing
SETTINGS = [
    ("none (paper)", "none", 1.0),
    ("scale 1e20 (release)", "scale", 1.0),
    ("mean", "mean", 1.0),
    ("zscore", "zscore", 1.0),
    ("zscore T0.5", "zscore", 0.5),
    ("log T1", "log", 1.0),
    ("log T2", "log", 2.0),
    ("rank T0.1", "rank", 0.1),
    ("rank T0.2", "rank", 0.2),
    ("relative T1", "relative", 1.0),
    ("relative T2", "relative", 2.0),
]


def recipe(mode: str, out: Path, model: str, steps: int, batch: int, max_length: int) -> dict:
    lora = mode == "lora"
    return {
        "name": f"importance-{mode}", "output_dir": str(out / mode / "run"), "seed": 0, "precision": "auto",
        "model": {"name_or_path": model, "dtype": "float32",
                  **({"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}} if lora else {})},
        "data": {
            "sft": {"source": str(DATA / "alpaca" / "alpaca_data_sample5000.jsonl.gz"), "limit": steps * batch},
            "preference": {"source": str(DATA / "hh-rlhf" / "helpful-rejection-sampled" / "test.jsonl.gz"),
                           "limit": steps * batch + 16},
            "max_length": max_length, "overlong": "truncate", "val_size": 0,
        },
        "batching": {"mode": "pack", "batch_size": batch, "grad_accum": 1, "max_tokens_per_row": 1024,
                     "group_by_length": False},
        "optimizer": {"lr": 2e-4 if lora else 1e-5, "scheduler": "constant", "warmup_ratio": 0.0, "max_grad_norm": 1.0},
        "schedule": {"method": "hbat", "parts": 1, "epochs": 1, "max_steps_per_stage": steps},
        "objectives": {"sft": {"name": "sft"}, "preference": {"name": "dpo", "loss_type": "sigmoid", "beta": 0.1}},
        "hbat": {"ewc": {"lam": 1.0, "f_max": 50.0, "normalise": "zscore", "temperature": 1.0},
                 "reference": "stage_start", "final": "last"},
        "checkpoint": {"every": 0, "keep": 1, "stage_weights": False},
        "logging": {"every": 1, "tensorboard": False, "progress": False},
    }


def train_mode(mode: str, args) -> dict:
    """Trains (or reuses) the run of ``mode``; returns its summary."""
    from tandem.config.recipe import load_recipe
    from tandem.io.rundir import is_run_dir
    from tandem.pipelines.train import train

    run_dir = args.out / mode / "run"
    if (run_dir / "summary.json").exists():
        return json.loads((run_dir / "summary.json").read_text())
    path = args.out / mode / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe(mode, args.out, args.model, args.steps, args.batch, args.max_length)))
    t0 = time.perf_counter()
    summary = train(load_recipe(path), resume=is_run_dir(run_dir), progress=False)
    print(f"{mode}: trained in {time.perf_counter() - t0:.0f} s")
    return summary


def last_importance(run_dir: Path) -> dict:
    files = sorted((run_dir / "stages").glob("*/importance.json"))
    if not files:
        raise SystemExit(f"{run_dir}: no stages/*/importance.json (did the run finish?)")
    return json.loads(files[-1].read_text())


def stats(f: list[float]) -> dict:
    """Top-10 % share, entropy / log N, Gini, largest share of a distribution ``f`` (any total)."""
    n, s = len(f), sum(f)
    p = sorted((x / s for x in f), reverse=True)
    k = max(1, round(0.1 * n))
    ent = -sum(x * math.log(x) for x in p if x > 0)
    asc = p[::-1]
    gini = (2 * sum((i + 1) * x for i, x in enumerate(asc)) / (n * sum(asc)) - (n + 1) / n) if n > 1 else 0.0
    return {"n": n, "top10": sum(p[:k]), "entropy": ent / math.log(n) if n > 1 else 0.0, "gini": gini, "largest": p[0]}


def distributions(rep: dict) -> dict:
    """``{kind: {label: sorted F / F_max}}`` for every setting, from an importance report."""
    out = {}
    for kind in ("ifa", "hpa"):
        ac = {n: t[f"ac_{kind}"] for n, t in rep["tensors"].items()}
        mag = {n: t.get(f"magnitude_{kind}") for n, t in rep["tensors"].items()}
        out[kind] = {}
        for label, norm, temp in SETTINGS:
            if norm == "relative" and any(m is None for m in mag.values()):
                continue  # a run from before the magnitude was recorded
            f = importance(ac, f_max=1.0, normalise=norm, temperature=temp, magnitude=mag)
            out[kind][label] = sorted(f.values(), reverse=True)
    return out


def plot(dists: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dists)
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.2 * len(modes)), squeeze=False)
    for r, mode in enumerate(modes):
        for c, kind in enumerate(("ifa", "hpa")):
            ax = axes[r][c]
            for i, (label, f) in enumerate(dists[mode][kind].items()):
                ax.plot(range(1, len(f) + 1), [max(x, 1e-30) for x in f], label=label, lw=1.3,
                        color=plt.cm.tab20(i / 20), linestyle=("-", "--", ":")[i % 3])
            ax.set_yscale("log")
            ax.set_ylim(1e-12, 1.5)
            ax.set_title(f"{mode}: F^{kind.upper()} / F_max, sorted ({len(f)} tensors)")
            ax.set_xlabel("tensor (by F, descending)")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/importance"))
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--modes", default="lora,full", help="comma list of lora, full")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per stage")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--also", action="append", default=[], metavar="NAME=RUN_DIR",
                    help="add the importance of another finished hbat run (e.g. testbed=runs/cmp/hbat-s0)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, dists = [], {}
    runs = [(m, args.out / m / "run") for m in args.modes.split(",") if m] + [
        (a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in args.also]
    for mode, run_dir in runs:
        summary = train_mode(mode, args) if (mode, run_dir) in [(m, args.out / m / "run") for m in ("lora", "full")] \
            else json.loads((run_dir / "summary.json").read_text())
        dists[mode] = distributions(last_importance(run_dir))
        for kind, per in dists[mode].items():
            for label, f in per.items():
                rows.append({"mode": mode, "kind": kind, "normalise": label, **stats(f),
                             "train_seconds": round(summary["seconds"], 1)})
    lines = ["| mode | F of | normalise | N | top-10% share | entropy / log N | Gini | largest share |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['kind'].upper()} | {r['normalise']} | {r['n']} | {r['top10']:.3f} | "
              f"{r['entropy']:.3f} | {r['gini']:.3f} | {r['largest']:.3g} |" for r in rows]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "table.json").write_text(json.dumps(rows, indent=2))
    plot(dists, args.out / "importance_real.png")
    print("\n".join(lines))
    print(f"wrote {args.out / 'table.md'}, {args.out / 'importance_real.png'}")


if __name__ == "__main__":
    main()
