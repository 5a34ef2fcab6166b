"""HBAT's modified EWC on the CPU testbed: strength x normalisation, against hbat-no-ewc, over seeds.

The penalty's gradient is ``lambda * F_i * (theta_i - anchor_i)`` with ``F_i = F_max * p_i`` and ``p`` the
normalised importance, so lambda and F_max act only through their product ``lambda * F_max``: a lambda x F_max grid
(0.1, 1, 10) x (5, 50, 500) has five distinct settings (0.5, 5, 50, 500, 5000) and equal products give the same run
up to rounding. The sweep therefore varies the product (``--strengths``, with lambda = 1 and F_max = the product).

Each run is one ``tandem compare`` run (``tandem.pipelines.compare.run_one``: the testbed recipe with ``--set``
overrides, trained then scored by ``tandem eval``), at ``schedule.epochs=1`` like docs/results.md's testbed table.
Forgetting = SFT validation loss of the final model (lower is better); preference = style score (``reward_fn``,
greedy, 0 to 2.25) and the DPO validation reward accuracy / margin. A run's row is cached in ``RUN/row.json`` and an
unfinished run resumes from its checkpoint, so the sweep can be killed and restarted with the same command.

    nice -n 10 python benchmarks/ewc_sweep.py --out runs/ewc-sweep                       # the full sweep
    python benchmarks/ewc_sweep.py --out runs/ewc-sweep-smoke --norms zscore:1 --strengths 50 --seeds 0  # smoke

Writes ``OUT/table.md`` / ``OUT/table.json`` (mean ± std per setting, and the issue's rule against hbat-no-ewc) and
``OUT/ewc_sweep.png`` (SFT val loss and style score against lambda x F_max, one line per normalisation, the
hbat-no-ewc mean ± std as a band).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

KEYS = {"sft_loss": "sft/loss", "style": "reward_fn/mean", "acc": "preference/rewards/accuracy",
        "margin": "preference/rewards/margin"}


def one(recipe: Path, method: str, seed: int, run_dir: Path, overrides: list[str], train: bool = True) -> dict | None:
    """The compare row of one run; cached in ``run_dir/row.json`` (``None`` if not there and ``train`` is off)."""
    from tandem.pipelines.compare import run_one

    cached = run_dir / "row.json"
    if cached.exists():
        return json.loads(cached.read_text())
    if not train:
        return None
    t0 = time.perf_counter()
    row = run_one(recipe, method, seed, run_dir, overrides, resume=True)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    cached.write_text(json.dumps(row, indent=2))
    print(f"{run_dir}: sft loss {row.get('sft/loss', float('nan')):.3f}, style {row.get('reward_fn/mean', float('nan')):.3f}"
          f" ({row['wall_s']:.0f} s)", flush=True)
    return row


def summarise(rows: list[dict | None]) -> dict | None:
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    out = {"n": len(rows)}
    for k, key in KEYS.items():
        xs = [r[key] for r in rows if key in r]
        out[k] = (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (float("nan"), 0.0)
    out["wall_s"] = sum(r.get("wall_s", r.get("seconds", 0.0)) for r in rows)
    return out


def verdict(s: dict, ref: dict) -> str:
    """The issue's rule: forgets less than hbat-no-ewc without giving up more preference than it gains (relative
    changes of the means: SFT-loss reduction / reference loss >= style drop / reference style)."""
    gain = (ref["sft_loss"][0] - s["sft_loss"][0]) / ref["sft_loss"][0]
    cost = (ref["style"][0] - s["style"][0]) / max(ref["style"][0], 1e-9)
    ok = gain > 0 and cost <= gain
    why = "" if gain > 0 else "forgets more: "
    return f"{'yes' if ok else 'no'} ({why}loss {-gain:+.0%}, style {-cost:+.0%})"


def plot(table: dict, ref: dict, strengths: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, k, label in ((axes[0], "sft_loss", "SFT val loss (forgetting, lower is better)"),
                         (axes[1], "style", "style score (preference, higher is better)")):
        m, sd = ref[k]
        ax.axhspan(m - sd, m + sd, color="grey", alpha=0.25, label="hbat-no-ewc (mean ± std)")
        ax.axhline(m, color="grey", lw=1)
        for norm, per in table.items():
            xs = sorted(p for p in strengths if str(p) in per)
            ax.errorbar(xs, [per[str(p)][k][0] for p in xs], yerr=[per[str(p)][k][1] for p in xs], marker="o",
                        capsize=3, label=f"hbat, {norm}")
        ax.set_xscale("log")
        ax.set_xlabel("lambda x F_max")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ewc-sweep"))
    ap.add_argument("--norms", default="zscore:1,rank:0.1", help="normalise:temperature, comma separated")
    ap.add_argument("--strengths", default="5,50,500", help="lambda x F_max values (lambda = 1)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--reference", type=Path, default=None, help="a `tandem compare` dir on the same testbed recipe "
                    "(e.g. runs/cmp): its hbat-no-ewc rows of these seeds are the reference instead of new runs")
    ap.add_argument("--table-only", action="store_true", help="no training: the table of the runs finished so far")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from tandem.demos.testbed import build_testbed

    args.out.mkdir(parents=True, exist_ok=True)
    recipe = args.out / "testbed" / "recipe.yaml"
    if not recipe.exists():
        build_testbed(args.out / "testbed")
    seeds = [int(s) for s in args.seeds.split(",")]
    strengths = [float(s) for s in args.strengths.split(",")]
    base = [f"schedule.epochs={args.epochs}"]
    t0, train = time.perf_counter(), not args.table_only
    if args.reference is not None:
        done = json.loads((args.reference / "table.json").read_text())
        ref_rows = [r for r in done if r["method"] == "hbat-no-ewc" and r["seed"] in seeds]
    else:
        ref_rows = [one(recipe, "hbat-no-ewc", s, args.out / "hbat-no-ewc" / f"s{s}", base, train) for s in seeds]
    ref = summarise(ref_rows)
    specs = [tuple(spec.split(":")) for spec in args.norms.split(",")]
    runs: dict[tuple, list[dict]] = {}
    for p in strengths:  # strength outermost: a sweep stopped early has every normalisation at the same strengths
        for norm, temp in specs:
            sets = [*base, "hbat.ewc.lam=1.0", f"hbat.ewc.f_max={p}", f"hbat.ewc.normalise={norm}",
                    f"hbat.ewc.temperature={temp}"]
            runs[(norm, temp, p)] = [one(recipe, "hbat", s, args.out / f"{norm}-T{temp}" / f"p{p:g}" / f"s{s}", sets,
                                         train) for s in seeds]
    table: dict[str, dict] = {}
    for (norm, temp, p), rows in runs.items():
        if summarise(rows) is not None:
            table.setdefault(f"{norm} T{temp}", {})[str(p)] = summarise(rows)
    if ref is None:
        raise SystemExit(f"{args.out}: no finished hbat-no-ewc run yet")

    def cell(s, k, d=3):
        return f"{s[k][0]:.{d}f} ± {s[k][1]:.{d}f}"

    lines = ["| method | normalise | lambda x F_max | SFT val loss | style score | DPO val acc. | DPO val margin | seeds | "
             "rule vs hbat-no-ewc |", "|---|---|---:|---:|---:|---:|---:|---:|---|",
             f"| hbat-no-ewc | - | 0 | {cell(ref, 'sft_loss')} | {cell(ref, 'style')} | {cell(ref, 'acc')} | "
             f"{cell(ref, 'margin')} | {ref['n']} | reference |"]
    for name, per in table.items():
        for p, s in per.items():
            lines.append(f"| hbat | {name} | {float(p):g} | {cell(s, 'sft_loss')} | {cell(s, 'style')} | {cell(s, 'acc')} | "
                         f"{cell(s, 'margin')} | {s['n']} | {verdict(s, ref)} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "table.json").write_text(json.dumps({"hbat-no-ewc": ref, "hbat": table}, indent=2))
    plot(table, ref, strengths, args.out / "ewc_sweep.png")
    print("\n".join(lines))
    print(f"wrote {args.out / 'table.md'}, {args.out / 'ewc_sweep.png'} ({time.perf_counter() - t0:.0f} s this call)")


if __name__ == "__main__":
    main()
