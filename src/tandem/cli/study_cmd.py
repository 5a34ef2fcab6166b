"""``tandem study``: every recipe of a directory (one per method) x seeds, the same examples and budget, one table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, parse_list, setup_logging, user_errors

app = make_app()


@app.command("study")
def study(
    study_dir: Path = typer.Argument(..., help="Directory of recipes, one per method (file stem = row name; files starting with _ are skipped)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma list of seeds."),
    out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="STUDY output directory."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of every recipe (repeatable)."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma list of row names (recipe file stems): run these alone."),
    resume: bool = typer.Option(False, "--resume", help="Keep finished runs and their evaluations, resume unfinished ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier study in OUT (only one tandem created)."),
    x_key: Optional[str] = typer.Option(None, "--x", help="Instruction-following metric of the scatter (default: rouge/rougeL, else reference_nll/nll)."),
    y_key: Optional[str] = typer.Option(None, "--y", help="Preference metric of the scatter (default: reward_win_rate/win_rate, else reward/mean)."),
    contrast: list[str] = typer.Option([], "--contrast", help="A:B (row names; A minus B): paired difference with a 95% CI at the end, besides STUDY_DIR/_contrasts.yaml (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs at once, each a process with the cores shared out (on a 2-core CPU, 2 jobs of 1 thread trained 1.9x the tokens/s of 1 job of 2)."),
    fork_from: Optional[Path] = typer.Option(None, "--fork-from", help="Another study: each run not started yet begins as that study's run of the same name and seed up to checkpoint --fork-at, and continues from there."),
    fork_at: str = typer.Option("stage00-end", "--fork-at", help="With --fork-from: the checkpoint name (stageNN-end: the one that closed stage NN)."),
    contrast_metric: list[str] = typer.Option([], "--contrast-metric", help="Metric of --contrast: pass, style, words (per prompt) or a table column (repeatable; default pass)."),
) -> None:
    """Train and evaluate every recipe of STUDY_DIR for every seed; write OUT/table.md, table.json and report.md.

    The recipes must share everything but schedule.method, objectives, hbat and regularizer (same model, data,
    batching, optimiser, budget and eval block); a difference is refused before anything is written.

    Examples:

      tandem study recipes/study --seeds 0,1 -o runs/study

      tandem study recipes/study --seeds 0,1 -o runs/study --resume     # continue after a stop or a crash

      tandem study recipes/study --only sequential,hbat -o runs/study-2     # some of the rows

      tandem study recipes/conflict --seeds 0,1 -o runs/conflict-study --jobs 2     # two runs at once

      tandem study recipes/conflict --only sequential -o runs/rho0 --set data.preference.source=... \
        --fork-from runs/conflict-study     # the same SFT stages, another DPO stage
    """
    setup_logging(False)
    seed_list = parse_list("--seeds", seeds, int, "0,1")
    with user_errors(out):
        from tandem.pipelines.contrasts import asked_contrasts
        from tandem.pipelines.study import study as run_study
        from tandem.report import console_table

        rows = run_study(study_dir, seed_list, out, list(set_), resume, x_key, y_key, overwrite=overwrite,
                         only=parse_list("--only", only, str, "sequential,hbat") if only else None,
                         contrasts=asked_contrasts(contrast, contrast_metric), jobs=jobs,
                         fork=(str(fork_from), fork_at) if fork_from else None)
    typer.echo(console_table(rows))
    if (out / "contrasts.md").is_file() and (contrast or (study_dir / "_contrasts.yaml").is_file()):
        typer.echo((out / "contrasts.md").read_text())
    console.print(f"wrote {out}/table.json, table.md (every metric, mean ± std), report.md")
