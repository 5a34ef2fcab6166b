"""``tandem eval`` and ``tandem report``: thin glue over tandem.evaluation and tandem.report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tandem.evaluation.inputs import eval_inputs

app = typer.Typer()


def run_eval(model_dir: Path, cfg, out_dir: Path, metrics: list[str], temperatures: list[float]) -> dict:
    from tandem.evaluation import run as E
    from tandem.evaluation.judge import JudgeConfig
    from tandem.evaluation.metrics import temperature_sweep

    inputs = eval_inputs(cfg)
    judge = JudgeConfig(**cfg.judge.model_dump()) if cfg.judge else None
    settings = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                    batch_size=cfg.batch_size)
    model, tok = E.load_model_and_tokenizer(model_dir)
    common = dict(metrics=metrics, judge=judge, reward_model_path=cfg.reward_model, reward_fn=cfg.reward_fn, model=model,
                  tokenizer=tok, **inputs)
    results = E.evaluate(model_dir, out_dir, settings=settings, **common)
    if temperatures:
        gen_metrics = [m for m in metrics if m in E.NEEDS_GENERATION]

        def at(t: float, seed: int) -> dict:
            r = E.evaluate(model_dir, out_dir / f"t{t:g}-s{seed}", settings={**settings, "temperature": t, "seed": seed}, **{**common, "metrics": gen_metrics})
            return {k: v for k, v in _flat(r["metrics"]).items() if isinstance(v, (int, float))}

        rows = temperature_sweep(at, temperatures, repeats=cfg.repeats, seed=cfg.seed)
        (out_dir / "temperature_sweep.json").write_text(json.dumps(rows, indent=2))
        results["temperature_sweep"] = rows
    return results


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


@app.command("eval")
def eval_command(
    target: Path = typer.Argument(..., help="A recipe (its output_dir/final is evaluated) or a run/model directory."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe whose eval block to use when TARGET is a directory."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list: exact_match,rouge,reward,reward_win_rate,judge_win_rate,perplexity,mc_accuracy,lm_eval."),
    temperatures: Optional[str] = typer.Option(None, "--temperatures", help="Comma list, e.g. 0,0.5,0.75,1.0: sweep the generation metrics."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set eval.max_new_tokens=64."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output dir (default: RUN/eval)."),
) -> None:
    """Evaluate a trained model; writes EVAL/results.json and EVAL/results.md.

    Examples:

      tandem eval recipes/dpo.yaml --metrics rouge,reward --set eval.reward_model=runs/reward/final

      tandem eval runs/dpo --recipe recipes/dpo.yaml --temperatures 0.25,0.75,1.0
    """
    from tandem.cli.main import fail
    from tandem.config.recipe import RecipeError, load_recipe

    recipe_path = target if target.is_file() else (recipe or (target / "recipe.yaml"))
    try:
        r = load_recipe(recipe_path, list(set_))
    except RecipeError as e:
        fail(str(e))
    run_dir = Path(r.output_dir) if target.is_file() else target
    model_dir = run_dir / "final" if (run_dir / "final").exists() else run_dir
    ms = metrics.split(",") if metrics else r.eval.metrics
    if not ms:
        fail("no metrics: pass --metrics or set eval.metrics in the recipe")
    temps = [float(t) for t in temperatures.split(",")] if temperatures else r.eval.temperatures
    out_dir = out or (run_dir / "eval")
    try:
        res = run_eval(model_dir, r.eval, out_dir, ms, temps)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo((out_dir / "results.md").read_text())
    typer.echo(f"wrote {out_dir}/results.json" + (" and temperature_sweep.json" if "temperature_sweep" in res else ""))


@app.command("report")
def report_command(
    directory: Path = typer.Argument(..., help="A run directory or a compare directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Markdown file (default: DIR/report.md)."),
    x_key: Optional[str] = typer.Option(None, "--x", help="Compare scatter: instruction-following metric."),
    y_key: Optional[str] = typer.Option(None, "--y", help="Compare scatter: preference metric."),
    with_runs: Optional[str] = typer.Option(None, "--with", help="Other run dirs (comma list): overlay their curves with DIRECTORY's."),
    keys: str = typer.Option("chosen_logp,rejected_logp,probe/logp_w,probe/logp_l", "--keys", help="Metrics to overlay with --with."),
) -> None:
    """Markdown report with PNG plots: training curves, method tables, scatter, temperature sweeps.

    Examples:

      tandem report runs/dpo

      tandem report runs/compare --x sft/loss --y preference/rewards/accuracy

      tandem report runs/dpo --with runs/dpo-nll,runs/dpo-normalized -o runs/losses.md   # overlay log-prob curves
    """
    from tandem.report import write_report
    from tandem.report.build import write_runs_report

    if with_runs:
        dirs = [directory, *[Path(p) for p in with_runs.split(",") if p.strip()]]
        path = write_runs_report({d.name: d for d in dirs}, [k for k in keys.split(",") if k.strip()],
                                 out or directory.parent / "runs_report.md")
        typer.echo(f"wrote {path}")
        return
    path = write_report(directory, out=out, x_key=x_key, y_key=y_key)
    typer.echo(f"wrote {path}")
