"""``tandem compare``: train several methods on the same data, seed and step budget, score them identically.

Every method runs the same recipe with only ``schedule.method`` (and the seed) changed, so data parts,
batch size, optimiser and epochs are shared: each method sees every training example ``schedule.epochs``
times. Each run is scored from its validation metrics (SFT validation loss, DPO reward accuracy and margin,
measured at the end of training against the initial model as reference) and, when the recipe's ``eval``
block names metrics, by ``tandem eval`` on the same held-out prompts.

Writes ``COMPARE/table.json`` (one row per method and seed), ``table.md`` (mean ± std per method) and a
report with a scatter of instruction-following against preference score (``report.md`` + PNGs).

COMPARE is a tandem run directory (``tandem.io.rundir``), locked for the whole comparison; each run in it
(``COMPARE/<method>-s<seed>``) is a train run with its own marker and lock. Every recipe (one per method and seed)
is checked before COMPARE is touched. ``resume`` keeps finished runs (``summary.json``) and resumes unfinished
ones; ``overwrite`` replaces an earlier comparison (only a directory tandem created).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("tandem")


def run_recipe(recipe_path: Path, method: str, seed: int, run_dir: Path, overrides: list[str]):
    from tandem.config.recipe import load_recipe

    return load_recipe(recipe_path, [*overrides, f"schedule.method={method}", f"seed={seed}", f"output_dir={run_dir}"])


def check_recipe(r) -> None:
    """What ``train`` would refuse, checked without writing anything (a comparison must not stop at its third run on
    a typo)."""
    from tandem.pipelines.train import check_recipe as check

    check(r)


def run_one(recipe_path: Path, method: str, seed: int, run_dir: Path, overrides: list[str], resume: bool) -> dict:
    from tandem.io.rundir import is_run_dir
    from tandem.pipelines.evaluate import numeric, run_eval
    from tandem.pipelines.train import train

    r = run_recipe(recipe_path, method, seed, run_dir, overrides)
    if (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())  # finished earlier: reuse
    else:  # an unfinished run continues from its last checkpoint
        summary = train(r, resume=resume and is_run_dir(run_dir), overwrite=False, progress=True)
    row = {"method": method, "seed": seed, "run": str(run_dir), "steps": summary["global_steps"],
           "seconds": round(summary["seconds"], 1),
           **{f"budget/{role}": n for role, n in sorted(summary.get("budget", {}).items())},
           **numeric(summary.get("final_val", {}))}
    if r.eval.metrics:
        res = run_eval(run_dir / "final", r.eval, run_dir / "eval", r.eval.metrics, [])
        row.update(numeric(res["metrics"]))
    return row


def compare(recipe_path: Path, methods: list[str], seeds: list[int], out_dir: Path, overrides: list[str] | None = None,
            resume: bool = False, x_key: str | None = None, y_key: str | None = None, overwrite: bool = False) -> list[dict]:
    from tandem.io.rundir import check_run_dir, open_run_dir
    from tandem.report import summarize, write_report
    from tandem.schedules import get_method

    out_dir = Path(out_dir)
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)
    for m in methods:
        get_method(m)  # fail early on a typo, before hours of training
    for method in methods:
        for seed in seeds:
            check_recipe(run_recipe(recipe_path, method, seed, out_dir / f"{method}-s{seed}", overrides or []))
    with open_run_dir(out_dir, resume=resume, overwrite=overwrite, command="compare"):
        rows = []
        for method in methods:
            for seed in seeds:
                log.info("compare: %s, seed %d", method, seed)
                rows.append(run_one(recipe_path, method, seed, out_dir / f"{method}-s{seed}", overrides or [], resume))
                (out_dir / "table.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "table.md").write_text(table_markdown(summarize(rows)))
        write_report(out_dir, x_key=x_key, y_key=y_key, title="Method comparison")
    return rows


def table_markdown(summary: dict[str, dict[str, dict]]) -> str:
    metrics = sorted({k for per in summary.values() for k in per})
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for method, per in summary.items():
        cells = []
        for k in metrics:
            s = per.get(k)
            cells.append("-" if s is None else f"{s['mean']:.4g} ± {s['std']:.2g}" if s.get("n", 1) > 1 else f"{s['mean']:.4g}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
