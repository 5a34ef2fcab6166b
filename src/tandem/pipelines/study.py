"""``tandem study``: every recipe of a directory (one per method) x seeds, trained on the same examples and budget,
scored identically, with a table and a scatter (the machinery of :mod:`tandem.pipelines.compare`).

``STUDY_DIR/*.yaml`` are the rows (file stem = row name; files starting with ``_`` are skipped). The recipes must
agree on every field except those that say *how* a method trains (:data:`PER_METHOD`: ``schedule.method``,
``objectives``, ``hbat``, ``regularizer``) and the bookkeeping (``name``, ``output_dir``, ``seed``): the same model,
data (sources, limits, lengths, validation split), batching, optimiser, step budget (the rest of ``schedule``) and
eval block. A difference is refused in one line naming the field and the two files.

Before OUT is touched, every recipe of every seed is loaded and checked like ``train`` checks it, and the eval
block's inputs (data, pairs, reward model, reference model) must exist. OUT is a tandem run directory, locked for
the whole study; each run is ``OUT/<name>-s<seed>`` (a train run of its own). With ``resume``, finished runs
(``summary.json``) and their evaluations (same eval block) are reused and unfinished runs resume from their last
checkpoint, so a study can run in pieces. Each run is evaluated on the recipe's eval block and its temperature sweep
(columns ``t<T>/<metric>``). When the eval block asks for ``reward_win_rate`` and names no ``baseline``, the
base model (``model.name_or_path``) is evaluated first (row ``base``, ``OUT/base/eval``) and its generations are the
baseline of every run's win rate: the win rate is against the model the methods start from. Writes ``OUT/table.json`` (one row per recipe and seed, after each run),
``table.md`` (mean ± std per recipe) and ``report.md`` with the instruction-following vs preference scatter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tandem.pipelines.compare import BASE_SKIPS, base_row, check_recipe, run_one, run_recipe, write_tables  # noqa: F401
from tandem.pipelines.jobs import run_parallel, run_row

log = logging.getLogger("tandem")

PER_METHOD = ("schedule.method", "objectives", "hbat", "regularizer")
BOOKKEEPING = ("name", "output_dir", "seed")
# default scatter axes, first present wins (else the report's own defaults); the conflict benchmark's trade-off is
# its pass rate against the preferred-style rate (frontier points are rows of their own)
X_KEYS = ("conflict/pass_rate", "rouge/rougeL", "reference_nll/nll", "exact_match/exact_match", "sft/loss")
Y_KEYS = ("conflict/style_rate", "reward_win_rate/win_rate", "reward/mean", "implicit_reward_accuracy/accuracy",
          "preference/rewards/accuracy")


def recipe_files(study_dir: Path, only: list[str] | None = None) -> list[Path]:
    """``study_dir/*.yaml`` in name order, without the files starting with ``_``; with ``only``, the recipes of those
    row names (file stems) alone."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"study directory not found: {study_dir} (a directory of recipes, one per method)")
    files = sorted(p for p in study_dir.glob("*.yaml") if not p.name.startswith("_"))
    if not files:
        raise ValueError(f"{study_dir}: no recipe (*.yaml not starting with '_'); put one recipe per method there")
    if only:
        unknown = [n for n in only if n not in {p.stem for p in files}]
        if unknown:
            raise ValueError(f"--only: no recipe {', '.join(unknown)} in {study_dir} (rows: {', '.join(p.stem for p in files)})")
        files = [p for p in files if p.stem in only]
    return files


def _drop(d: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d.get(k) if isinstance(d.get(k), dict) else {}
    d.pop(last, None)


def shared_fields(recipe) -> dict:
    """The recipe as a dict without its per-method and bookkeeping fields: what every recipe of a study shares."""
    d = recipe.model_dump(mode="json")
    for key in (*PER_METHOD, *BOOKKEEPING):
        _drop(d, key)
    return d


def first_difference(a, b, prefix: str = "") -> str | None:
    """The first dotted key (in ``a``'s order, then ``b``'s extra keys) whose value differs, or ``None``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


def check_shared(recipes: dict[Path, object]) -> None:
    """``ValueError`` naming the first field and the two files whose recipes differ outside :data:`PER_METHOD`."""
    (first, r0), *rest = recipes.items()
    ref = shared_fields(r0)
    for path, r in rest:
        key = first_difference(ref, shared_fields(r))
        if key:
            raise ValueError(f"{key} differs between {first} and {path}: the recipes of a study share everything but "
                             f"{', '.join(PER_METHOD)} (the same examples and budget per method)")


def load_study(study_dir: Path, overrides: list[str] | None = None, out_dir: Path = Path("runs/study"),
               seed: int = 0, only: list[str] | None = None) -> dict[str, tuple[Path, object]]:
    """``{row name: (recipe file, recipe)}`` of a study directory, loaded with ``overrides`` and checked to share
    their data and budget (nothing is checked on disk: see :func:`check_inputs`)."""
    files = recipe_files(study_dir, only)
    loaded = {p: run_recipe(p, None, seed, Path(out_dir) / f"{p.stem}-s{seed}", overrides or []) for p in files}
    check_shared(loaded)
    return {p.stem: (p, r) for p, r in loaded.items()}


def check_inputs(recipe) -> None:
    """What ``train`` would refuse, and the eval block's inputs on disk (``FileNotFoundError``)."""
    from tandem.models import check_exists
    from tandem.pipelines.evaluate import check_metric_names
    from tandem.pipelines.train import check_source

    check_recipe(recipe)
    e = recipe.eval
    for src in (e.data.source if e.data else None, e.pairs, e.heldout_text, e.mc, e.baseline,
                *(s.data.source for s in e.also.values())):
        if src:
            check_source(src)
    for s in e.also.values():
        check_metric_names(s.metrics)
    for what, model in (("eval.reward_model", e.reward_model), ("eval.reference_model", e.reference_model)):
        if model:
            check_exists(model, what)




def default_axes(rows: list[dict], x_key: str | None, y_key: str | None) -> tuple[str | None, str | None]:
    keys = {k for r in rows for k in r}
    x = x_key or next((k for k in X_KEYS if k in keys), None)
    return x, y_key or next((k for k in Y_KEYS if k in keys and k != x), None)


def study(study_dir: Path, seeds: list[int], out_dir: Path, overrides: list[str] | None = None, resume: bool = False,
          x_key: str | None = None, y_key: str | None = None, overwrite: bool = False,
          only: list[str] | None = None, contrasts: list[dict] | None = None, jobs: int = 1,
          threads: int | None = None, fork: tuple[str, str] | None = None) -> list[dict]:
    """Run every recipe of ``study_dir`` (or the rows ``only`` names) for every seed into ``out_dir``; returns the
    table rows. ``jobs`` > 1 runs that many (row, seed) runs at once, ``threads`` threads each (default: the cores
    shared out; :mod:`tandem.pipelines.jobs`). ``fork``: ``(source study, checkpoint name)``: each run not started
    yet begins as the source study's run of the same name and seed up to that checkpoint (``--fork-from``/``--fork-at``;
    :mod:`tandem.pipelines.fork`), e.g. the same SFT stages under another preference stage."""
    from tandem.io.rundir import check_run_dir, open_run_dir, path_inputs

    out_dir, overrides = Path(out_dir), list(overrides or [])
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ValueError(f"--jobs {jobs}: give at least 1 job (and at least 1 thread each)")
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)
    rows_of = load_study(study_dir, overrides, out_dir, seeds[0], only)
    questions = Path(study_dir) / "_contrasts.yaml"
    asked, spec, ratios = list(contrasts or []), {}, {}
    if questions.is_file():  # a bad questions file is refused before any training
        from tandem.pipelines.contrasts import read_frontier, read_group_ratios, read_questions

        asked += read_questions(questions)
        spec, ratios = read_frontier(questions), read_group_ratios(questions)
    if asked or spec or ratios:
        named = {q[k] for q in asked for k in ("a", "b")} | {b[k] for b, k in ((spec.get("early_stop"), "arm"),
                                                                    (spec.get("wise_ft"), "toward"), (ratios, "toward")) if b}
        unknown = {x.split("@")[0] for x in named if "~" not in x} - {p.stem for p in recipe_files(study_dir)}
        if unknown:
            raise ValueError(f"{study_dir}: no recipe for arm(s) {', '.join(sorted(unknown))} named by --contrast or "
                             f"_contrasts.yaml (rows: {', '.join(p.stem for p in recipe_files(study_dir))})")
    inputs = {"study": str(study_dir)}  # what --overwrite must not delete
    for name, (path, _) in rows_of.items():
        for seed in seeds:
            r = run_recipe(path, None, seed, out_dir / f"{name}-s{seed}", overrides)
            check_inputs(r)
            inputs.update(path_inputs(r.model_dump(mode="json"), exclude=("output_dir", "tax.out")))
    plan = [(name, path, seed) for name, (path, _) in rows_of.items() for seed in seeds]
    if fork is not None:  # every run to fork must have its checkpoint before anything is written
        from tandem.io.rundir import is_run_dir
        from tandem.pipelines.fork import resolve_checkpoint

        for name, _, seed in plan:
            if not is_run_dir(out_dir / f"{name}-s{seed}"):
                resolve_checkpoint(Path(fork[0]) / f"{name}-s{seed}", fork[1])
    first = next(iter(rows_of.values()))[1]
    with open_run_dir(out_dir, resume=resume, overwrite=overwrite, command="study", inputs=inputs):
        rows: list[dict] = []
        if "reward_win_rate" in first.eval.metrics and first.eval.baseline is None:
            rows.append(base_row(first, out_dir / "base", reuse=resume))
            overrides.append(f"eval.baseline={out_dir / 'base' / 'eval' / 'generations.jsonl'}")
        first_rows = list(rows)

        def finished(done: list[dict], row: dict, seconds: float) -> None:
            (out_dir / "table.json").write_text(json.dumps(first_rows + done, indent=2))
            x, y = default_axes(first_rows + done, x_key, y_key)
            scores = ", ".join(f"{k} {row[k]:.4g}" for k in (x, y) if k in row)
            log.info("study %d/%d: %s seed %d, %d steps, %.0fs%s", len(done), len(plan), row["method"], row["seed"],
                     row["steps"], seconds, f", {scores}" if scores else "")

        if jobs > 1:  # several runs at once, each a process with its share of the cores
            rows += run_parallel(plan, out_dir, overrides, resume, jobs, threads, on_row=finished, fork=fork)
        else:
            for name, path, seed in plan:
                row, seconds = run_row(name, path, seed, out_dir / f"{name}-s{seed}", overrides, resume, fork)
                rows.append(row)
                finished(rows[len(first_rows):], row, seconds)
        if spec:  # frontier points (early stops, Wise-FT) of the rows
            from tandem.pipelines.frontier import frontier_rows

            rows += frontier_rows(spec, rows, {n: r for n, (_, r) in rows_of.items()}, reuse=resume)
        if ratios:  # question (d): per-group ratios against global Wise-FT, both picked on val, scored on test
            from tandem.pipelines.group_ratios import group_ratio_rows

            rows += group_ratio_rows(ratios, rows, {n: r for n, (_, r) in rows_of.items()}, reuse=resume)
        x, y = default_axes(rows, x_key, y_key)
        write_tables(out_dir, rows, x, y, f"Study: {Path(study_dir).name}")
        present = {str(r["method"]) for r in rows}
        kept = [q for q in asked if {q["a"], q["b"]} <= present]  # --only: the questions it can answer
        if kept:  # paired contrasts with CIs (OUT/contrasts.md)
            from tandem.pipelines.contrasts import write_contrasts

            write_contrasts(out_dir, rows, kept)
    return rows
