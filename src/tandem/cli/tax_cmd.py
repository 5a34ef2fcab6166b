"""``tandem tax``: model averaging between the weights before and after preference training, ratio search and
the reward-versus-forgetting Pareto front (pipelines.tax over tandem.merging.tax)."""

from __future__ import annotations

from pathlib import Path

import typer

from tandem.cli.common import console, make_app, recipe_or_fail, setup_logging, user_errors

app = make_app()


@app.command("tax")
def tax(
    recipe: Path = typer.Argument(..., help="Recipe with a `tax` block (see recipes/tax.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set tax.trials=32 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Reuse the candidates already scored in OUT/candidates.jsonl."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier OUT directory (only one tandem created)."),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Search merge ratios between theta_0 (before preference training) and theta_1 (after).

    theta = (1 - alpha) * theta_0 + alpha * theta_1 per tensor (alpha = 1: the tuned model). Scores a global
    (Wise-FT) sweep, optuna per-group ratios and the adaptive learned ratios on reward and tax, writes
    OUT/table.md, OUT/summary.json, OUT/pareto.png, and saves the best candidate under tax.budget to OUT/picked.

    Examples:

      tandem tax recipes/tax.yaml

      tandem tax recipes/tax.yaml --set tax.trials=40 --set tax.budget=0.05 --resume
    """
    setup_logging(False)
    r = recipe_or_fail(recipe, list(set_))
    out = Path(r.tax.out or Path(r.output_dir) / "tax")
    with user_errors(out):
        from tandem.pipelines.tax import run_tax

        summary = run_tax(r, resume=resume, overwrite=overwrite, show_progress=not no_progress)
    console.print((out / "table.md").read_text())
    pick = summary["pick"]
    if pick is None:
        console.print("no candidate picked (set tax.budget to pick the best reward under a tax budget)")
    else:
        p = summary["points"][pick]
        console.print(f"[green]picked[/] {p['kind']} alphas {p['alphas']} reward {p['reward']:.4f} tax {p['tax']:.4f} "
                      f"-> {summary['picked_dir']}")
    console.print(f"plot: {out / 'pareto.png'}")
