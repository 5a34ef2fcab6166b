"""``tandem contrasts``: paired differences between the arms of a study or comparison, with confidence intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, user_errors

app = make_app()


@app.command("contrasts")
def contrasts(
    out: Path = typer.Argument(..., help="Output directory of `tandem study` or `tandem compare` (its table.json)."),
    contrast: list[str] = typer.Option([], "--contrast", help="A:B, row names (A minus B); repeatable."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="A _contrasts.yaml file (contrasts with names, metrics) instead of --contrast."),
    metric: list[str] = typer.Option([], "--metric", help="pass, style, words (per prompt, from eval/per_prompt.jsonl) or a table column; repeatable (default: pass)."),
    n_boot: int = typer.Option(2000, "--n-boot", min=100, help="Bootstrap draws."),
    with_: list[str] = typer.Option([], "--with", help="NAME=DIR: another study's rows as NAME/<row>, for contrasts across studies (repeatable)."),
) -> None:
    """Paired differences with 95% hierarchical-bootstrap CIs (seeds, then prompts), seed-level paired t-tests and
    Holm's correction; writes OUT/contrasts.md and contrasts.json.

    Examples:

      tandem contrasts runs/conflict-study --contrast sft-only:sequential --contrast hbat:hbat-no-ewc

      tandem contrasts runs/conflict-study --questions recipes/conflict/_contrasts.yaml

      tandem contrasts runs/rho1 --with rho0=runs/rho0 --contrast rho0/sequential:sequential   # across studies
    """
    with user_errors(out):
        from tandem.pipelines.contrasts import asked_contrasts, contrasts_of_table, parse_with, read_questions

        if questions is not None:
            asked = read_questions(questions)
        elif contrast:
            asked = asked_contrasts(contrast, metric)
        else:
            raise ValueError("give --contrast A:B (repeatable) or --questions FILE")
        if metric:
            asked = [{**q, "metrics": list(metric)} for q in asked]
        others = dict(map(parse_with, with_))
        contrasts_of_table(out, asked, n_boot=n_boot, strict=questions is None,  # a file: its arms may not have run yet
                           others=others)
    typer.echo((out / "contrasts.md").read_text())
    console.print(f"wrote {out}/contrasts.md, contrasts.json")
