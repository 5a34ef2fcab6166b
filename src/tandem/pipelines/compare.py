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


def run_recipe(recipe_path: Path, method: str | None, seed: int, run_dir: Path, overrides: list[str]):
    """The recipe of one run: ``recipe_path`` with ``overrides``, then ``schedule.method`` (``None``: the recipe's own),
    ``seed`` and ``output_dir``."""
    from tandem.config.recipe import load_recipe

    fixed = [f"schedule.method={method}"] if method is not None else []
    return load_recipe(recipe_path, [*overrides, *fixed, f"seed={seed}", f"output_dir={run_dir}"])


def check_recipe(r) -> None:
    """What ``train`` would refuse, checked without writing anything (a comparison must not stop at its third run on
    a typo)."""
    from tandem.pipelines.evaluate import check_metric_names
    from tandem.pipelines.train import check_recipe as check

    check(r)
    check_metric_names(r.eval.metrics)  # a typo in eval.metrics fails now, not after the training


def run_one(recipe_path: Path, method: str | None, seed: int, run_dir: Path, overrides: list[str], resume: bool,
            name: str | None = None, sweep: bool = False, reuse_eval: bool = False,
            fork: tuple[str, str] | None = None) -> dict:
    """Train (or reuse, or resume) one run and score it: one table row. ``method`` ``None`` keeps the recipe's
    ``schedule.method``; ``name`` is the row's ``method`` (default: ``method``). ``sweep`` also runs the recipe's
    ``eval.temperatures`` (columns ``t<T>/<metric>``); ``reuse_eval`` keeps an earlier evaluation of the run made
    with the same eval block (``eval/eval_block.json``). ``fork``: ``(source study, checkpoint name)``: a run not
    started yet begins as the source study's run of the same name up to that checkpoint (:mod:`tandem.pipelines.fork`)."""
    from tandem.io.rundir import is_run_dir
    from tandem.pipelines.evaluate import numeric
    from tandem.pipelines.train import train

    r = run_recipe(recipe_path, method, seed, run_dir, overrides)
    if (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())  # finished earlier: reuse
        log.info("%s: finished earlier, reused", run_dir)
    else:  # an unfinished run continues from its last checkpoint
        started = is_run_dir(run_dir)
        fork_from = None
        if fork is not None and not started:
            from tandem.pipelines.fork import resolve_checkpoint

            fork_from = resolve_checkpoint(Path(fork[0]) / run_dir.name, fork[1])
        summary = train(r, resume=resume and started, overwrite=False, progress=True, fork_from=fork_from)
    row = {"method": name or method, "seed": seed, "run": str(run_dir), "steps": summary["global_steps"],
           "seconds": round(summary["seconds"], 1),
           **{f"budget/{role}": n for role, n in sorted(summary.get("budget", {}).items())},
           **numeric(summary.get("final_val", {}))}
    if r.eval.metrics:
        row.update(eval_row(r, run_dir, sweep, reuse_eval))
    return row


def eval_row(r, run_dir: Path, sweep: bool, reuse: bool, model_dir: Path | None = None) -> dict:
    """The numeric eval metrics of a finished run (``model_dir``, default ``run_dir/final``; and ``t<T>/<metric>``
    means of the temperature sweep), written to ``run_dir/eval``."""
    from tandem.pipelines.evaluate import numeric, run_also, run_eval, stamped

    # the extra sets (eval.also) keep stamps of their own: adding one does not redo the main evaluation
    out, block = run_dir / "eval", {**r.eval.model_dump(mode="json", exclude={"also"}), "sweep": sweep}
    res, reused = stamped(out, block, reuse, lambda: run_eval(
        model_dir or run_dir / "final", r.eval, out, r.eval.metrics, r.eval.temperatures if sweep else [],
        reference_cache=run_dir.parent / "reference_logps"))  # one reference pass per study/comparison
    if reused:
        res["temperature_sweep"] = json.loads((out / "temperature_sweep.json").read_text()) if sweep and r.eval.temperatures else []
        log.info("%s: evaluated earlier with the same eval block, reused", run_dir)
    row = numeric(res["metrics"])
    for t in res.get("temperature_sweep") or []:
        row[f"t{t['temperature']:g}/{t['metric']}"] = t["mean"]
    row.update(run_also(model_dir or run_dir / "final", r.eval, out, reuse))
    return row


def compare(recipe_path: Path, methods: list[str], seeds: list[int], out_dir: Path, overrides: list[str] | None = None,
            resume: bool = False, x_key: str | None = None, y_key: str | None = None, overwrite: bool = False,
            base: bool = True) -> list[dict]:
    """Train and score every method x seed; with ``base`` and an eval block, a first row ``base``: the model every
    method starts from, on the same evaluation (as ``tandem study``; its generations are the win-rate baseline)."""
    from tandem.io.rundir import check_run_dir, open_run_dir, path_inputs
    from tandem.schedules import get_method

    out_dir, overrides = Path(out_dir), list(overrides or [])
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)
    for m in methods:
        get_method(m)  # fail early on a typo, before hours of training
    inputs = {"recipe": str(recipe_path)}  # what --overwrite must not delete
    for method in methods:
        for seed in seeds:
            r = run_recipe(recipe_path, method, seed, out_dir / f"{method}-s{seed}", overrides or [])
            check_recipe(r)
            inputs.update(path_inputs(r.model_dump(mode="json"), exclude=("output_dir", "tax.out")))
    with open_run_dir(out_dir, resume=resume, overwrite=overwrite, command="compare", inputs=inputs):
        rows = []
        first = run_recipe(recipe_path, methods[0], seeds[0], out_dir / "base", overrides)
        if base and first.eval.metrics:
            rows.append(base_row(first, out_dir / "base", reuse=resume, sweep=False))
            if "reward_win_rate" in first.eval.metrics and first.eval.baseline is None:
                overrides.append(f"eval.baseline={out_dir / 'base' / 'eval' / 'generations.jsonl'}")
        for method in methods:
            for seed in seeds:
                log.info("compare: %s, seed %d", method, seed)
                rows.append(run_one(recipe_path, method, seed, out_dir / f"{method}-s{seed}", overrides or [], resume))
                (out_dir / "table.json").write_text(json.dumps(rows, indent=2))
        write_tables(out_dir, rows, x_key, y_key, "Method comparison")
    return rows


BASE_SKIPS = ("reward_win_rate", "implicit_reward_accuracy")  # against itself: 0.5 and 0 by construction


def base_row(recipe, base_dir: Path, reuse: bool, sweep: bool = True) -> dict:
    """Row ``base``: the model every method starts from, on the same eval block (without the metrics that compare it
    with itself); its generations at ``eval.temperature`` become the win-rate baseline (``tandem study`` and
    ``tandem compare``)."""
    r = recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"metrics": [m for m in recipe.eval.metrics if m not in BASE_SKIPS]})})
    log.info("evaluating the base model %s (the win-rate baseline)", recipe.model.name_or_path)
    row = {"method": "base", "seed": recipe.eval.seed, "run": str(base_dir), "steps": 0, "seconds": 0.0}
    row.update(eval_row(r, base_dir, sweep=sweep, reuse=reuse, model_dir=Path(recipe.model.name_or_path)))
    return row


def write_tables(out_dir: Path, rows: list[dict], x_key: str | None, y_key: str | None, title: str) -> None:
    """``table.json``, ``table.md`` (mean ± std per row name) and the report with its scatter."""
    from tandem.report import summarize, write_report

    (out_dir / "table.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "table.md").write_text(table_markdown(summarize(rows)))
    write_report(out_dir, x_key=x_key, y_key=y_key, title=title)


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
