"""``tandem eval``: a recipe's eval block (or command-line metrics) -> generations, metrics, results files.

``run_eval`` loads the model once, evaluates at the recipe's temperature, then (``temperatures``) sweeps the
generation metrics over temperatures and seeds (``temperature_sweep.json``); ``run_also`` scores the extra prompt
sets of ``eval.also`` (``OUT/also-<name>``, columns ``<name>/<metric>``). ``eval_into`` (the command) does
the same into an output directory that is tandem's (marker) and locked while it is written: a directory tandem
did not create is refused, an earlier evaluation's directory keeps its caches (generations, judge verdicts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def flat(d: dict, prefix: str = "") -> dict:
    """Nested dict -> ``{"a/b": value}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def numeric(d: dict) -> dict:
    return {k: v for k, v in flat(d).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_eval(model_dir: Path, cfg, out_dir: Path, metrics: list[str], temperatures: list[float],
             reference_cache: Path | None = None) -> dict:
    """Evaluate ``model_dir`` with the eval block ``cfg``; writes ``out_dir/results.{json,md}``. ``reference_cache``:
    see :func:`tandem.evaluation.run.evaluate`."""
    from tandem.evaluation import run as E
    from tandem.evaluation.inputs import eval_inputs
    from tandem.evaluation.judge import JudgeConfig
    from tandem.evaluation.metrics import temperature_sweep
    from tandem.models import load_merged
    from tandem.models.precision import inference_dtype

    check_metric_names(metrics)
    inputs = eval_inputs(cfg)
    judge = JudgeConfig(**cfg.judge.model_dump()) if cfg.judge else None
    settings = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                    batch_size=cfg.batch_size)
    dtype = inference_dtype(cfg.dtype)
    model, tok = load_merged(model_dir, dtype=dtype)
    common = dict(metrics=metrics, dtype=dtype, judge=judge, reward_model_path=cfg.reward_model, reward_fn=cfg.reward_fn, model=model,
                  tokenizer=tok, bartscore_model=cfg.bartscore_model, reference_model_path=cfg.reference_model,
                  beta=cfg.beta, likelihood_max_length=cfg.max_length, reference_cache=reference_cache, **inputs)
    results = E.evaluate(model_dir, out_dir, settings=settings, **common)
    if temperatures:
        gen_metrics = [m for m in metrics if m in E.NEEDS_GENERATION]

        def at(t: float, seed: int) -> dict:
            r = E.evaluate(model_dir, out_dir / f"t{t:g}-s{seed}", settings={**settings, "temperature": t, "seed": seed},
                           **{**common, "metrics": gen_metrics})
            return numeric(r["metrics"])

        rows = temperature_sweep(at, temperatures, repeats=cfg.repeats, seed=cfg.seed)
        (out_dir / "temperature_sweep.json").write_text(json.dumps(rows, indent=2))
        results["temperature_sweep"] = rows
    return results


def also_block(cfg, name: str):
    """The eval block of the extra set ``cfg.also[name]``: ``cfg`` with that set's data and metrics, no temperature
    sweep, no baseline (a baseline belongs to ``cfg.data``'s prompts) and no further sets."""
    s = cfg.also[name]
    return cfg.model_copy(update={"data": s.data, "metrics": list(s.metrics), "temperatures": [], "baseline": None,
                                  "also": {}})


def local_files(block) -> dict[str, list]:
    """``{path: [[name, size, mtime_ns], ...]}`` of every string in ``block`` (nested) that names a local file or
    directory (a directory: the files directly in it): a reward model retrained in place, a baseline generated
    again or a data file replaced changes the stamp, where the path alone would not."""
    found: dict[str, list] = {}

    def walk(v) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v and v not in found:
            p = Path(v)
            files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else None
            if files is not None:
                found[v] = [[f.name, (st := f.stat()).st_size, st.st_mtime_ns] for f in files]

    walk(block)
    return found


def stamped(out: Path, block: dict, reuse: bool, compute) -> tuple[dict, bool]:
    """``(results, reused)``: ``out/results.json`` when ``reuse`` and ``out/eval_block.json`` says it was made with
    ``block`` and the same local files it names (:func:`local_files`), else ``compute()`` (which writes
    ``out/results.json``), stamped with both once it is complete."""
    stamp = out / "eval_block.json"
    block = {**block, "local_files": local_files(block)}
    if reuse and stamp.is_file() and json.loads(stamp.read_text()) == block and (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text()), True
    stamp.unlink(missing_ok=True)  # written again only once this evaluation is complete
    res = compute()
    stamp.write_text(json.dumps(block, indent=2))
    return res, False


def run_also(model_dir: Path, cfg, eval_dir: Path, reuse: bool = False) -> dict:
    """Score ``model_dir`` on each extra prompt set of ``cfg.also`` into ``eval_dir/also-<name>`` (kept when it was
    made with the same block and ``reuse``); returns the columns ``<name>/<metric>``."""
    row: dict = {}
    for name in cfg.also:
        sub, out = also_block(cfg, name), eval_dir / f"also-{name}"
        res, _ = stamped(out, sub.model_dump(mode="json"), reuse,
                         lambda: run_eval(model_dir, sub, out, sub.metrics, []))  # noqa: B023 - called at once
        row.update({f"{name}/{k}": v for k, v in numeric(res["metrics"]).items()})
    return row


def check_metric_names(metrics: list[str]) -> None:
    from tandem.evaluation.registry import METRICS

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")


def eval_into(model_dir: Path, cfg, out_dir: Path, metrics: list[str], temperatures: list[float]) -> dict:
    """``run_eval`` into ``out_dir`` opened as a tandem output directory (new, empty or tandem's; locked)."""
    from tandem.io.rundir import is_run_dir, open_run_dir

    check_metric_names(metrics)
    for s in cfg.also.values():
        check_metric_names(s.metrics)
    again = is_run_dir(out_dir)  # an earlier evaluation: keep its caches
    with open_run_dir(out_dir, resume=again, overwrite=False, command="eval", clean=False):
        res = run_eval(model_dir, cfg, out_dir, metrics, temperatures)
        if cfg.also:
            res["also"] = run_also(model_dir, cfg, out_dir)
        return res


@dataclass(frozen=True)
class EvalTarget:
    recipe: object  # the loaded Recipe
    run_dir: Path
    model_dir: Path


def eval_target(target: Path, recipe: Path | None, overrides: list[str]) -> EvalTarget:
    """TARGET is a recipe (its output_dir/final is evaluated) or a run/model directory (``--recipe`` or its own
    ``recipe.yaml`` gives the eval block). Raises ``RecipeError`` for a bad recipe."""
    from tandem.config.recipe import load_recipe

    if not target.exists():
        raise FileNotFoundError(f"not found: {target} (give a recipe, a run directory or a model directory)")
    if target.is_dir() and recipe is None and not (target / "recipe.yaml").is_file():
        raise ValueError(f"{target} has no recipe.yaml: pass --recipe RECIPE for the eval block")
    recipe_path = target if target.is_file() else (recipe or (target / "recipe.yaml"))
    r = load_recipe(recipe_path, overrides)
    run_dir = Path(r.output_dir) if target.is_file() else target
    model_dir = run_dir / "final" if (run_dir / "final").exists() else run_dir
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no trained model at {run_dir / 'final'}: train {recipe_path} first")
    return EvalTarget(r, run_dir, model_dir)
