"""``tandem eval`` and ``tandem report`` (pipelines.evaluate, tandem.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import fail, make_app, parse_list, user_errors

app = make_app()


@app.command("eval")
def eval_command(
    target: Path = typer.Argument(..., help="A recipe (its output_dir/final is evaluated) or a run/model directory."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe whose eval block to use when TARGET is a directory."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list: exact_match,rouge,reward,reward_win_rate,reward_fn,judge_win_rate,perplexity,mc_accuracy,lm_eval,bartscore."),
    temperatures: Optional[str] = typer.Option(None, "--temperatures", help="Comma list, e.g. 0,0.5,0.75,1.0: sweep the generation metrics."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set eval.max_new_tokens=64."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output dir (default: RUN/eval)."),
) -> None:
    """Evaluate a trained model; writes EVAL/results.json and EVAL/results.md.

    Examples:

      tandem eval recipes/dpo.yaml --metrics rouge,reward --set eval.reward_model=runs/reward/final

      tandem eval runs/dpo --recipe recipes/dpo.yaml --temperatures 0.25,0.75,1.0
    """
    ms = parse_list("--metrics", metrics, str, "rouge,reward") if metrics is not None else None
    temps = parse_list("--temperatures", temperatures, float, "0,0.5,1.0") if temperatures is not None else None
    with user_errors(out) as scope:
        from tandem.api import evaluate
        from tandem.pipelines.evaluate import eval_target

        t = eval_target(target, recipe, list(set_))  # the recipe whose eval block is printed below
        scope.where = out or (t.run_dir / "eval")
        res = evaluate(target, recipe, ms, temps, list(set_), out)
        out_dir = Path(res["out"])
    typer.echo((out_dir / "results.md").read_text())
    for name in t.recipe.eval.also:  # the extra prompt sets (eval.also)
        typer.echo(f"{name}:\n" + (out_dir / f"also-{name}" / "results.md").read_text())
    typer.echo(f"wrote {out_dir}/results.json" + (" and temperature_sweep.json" if "temperature_sweep" in res else "")
               + "".join(f", also-{name}/results.json" for name in t.recipe.eval.also))


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
    with user_errors(out or directory):
        from tandem.report import write_report
        from tandem.report.build import write_runs_report

        for d in [directory, *[Path(p) for p in (with_runs or "").split(",") if p.strip()]]:
            if not d.is_dir():
                fail(f"{d}: not found (give a run directory or a compare directory)")
        if with_runs:
            dirs = [directory, *[Path(p) for p in with_runs.split(",") if p.strip()]]
            path = write_runs_report({d.name: d for d in dirs}, [k for k in keys.split(",") if k.strip()],
                                     out or directory.parent / "runs_report.md")
        else:
            path = write_report(directory, out=out, x_key=x_key, y_key=y_key)
    typer.echo(f"wrote {path}")
