"""The ``tandem`` command: parse, call a pipeline, print, exit code. Heavy imports happen inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, parse_list, recipe_or_fail, set_debug, setup_logging, user_errors

app = make_app(help="tandem: align language models without paying the alignment tax.", no_args_is_help=True)


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (also TANDEM_DEBUG=1)."),
) -> None:
    """A wrong input ends with one line ``error: ...`` and exit code 2; ``--debug`` shows its traceback."""
    set_debug(debug)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe (see recipes/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set optimizer.lr=1e-5 (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides output_dir)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory (only one tandem created)."),
    allow_change: list[str] = typer.Option([], "--allow-change", help="With --resume: accept a change of this recipe field if it is safe mid-run (e.g. schedule.max_steps; repeatable)."),
    fork_from: Optional[Path] = typer.Option(None, "--fork-from", help="Start as another run up to its checkpoint "
                                             "RUN/checkpoints/NAME (NAME may be stageNN-end: the checkpoint that closed "
                                             "stage NN) and continue from there: a branch that shares the stages before."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train the stages of a recipe.

    Examples:

      tandem train recipes/sft.yaml

      tandem train recipes/dpo.yaml --set optimizer.lr=5e-6 --set schedule.max_steps=20 -o runs/dpo-try

      accelerate launch --num_processes 2 -m tandem.cli.main train recipes/sft.yaml   # multi-GPU / multi-process

      tandem train recipes/sft.yaml --resume     # after a crash: same final weights as an uninterrupted run

      tandem train recipes/sequential.yaml --set optimizer.lr_by_role.preference=5e-5 -o runs/dpo-5e-5 \
        --fork-from runs/seq/checkpoints/stage00-end   # the same SFT stage, another DPO stage
    """
    setup_logging(verbose)
    r = recipe_or_fail(recipe, list(set_) + ([f"output_dir={output_dir}"] if output_dir else []))
    with user_errors(r.output_dir):
        from tandem.api import train as run_train

        summary = run_train(r, resume=resume, overwrite=overwrite, progress=not no_progress,
                            allow_changes=list(allow_change), fork_from=fork_from).summary
    console.print(f"[green]done[/]: {summary['global_steps']} steps in {summary['seconds']:.1f}s -> {r.output_dir}/final")


data_app = make_app(help="Look at datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(..., help="A .jsonl/.jsonl.gz/.json/.parquet file or a Hugging Face dataset name."),
    format: Optional[str] = typer.Option(None, "--format", help="Declare the format instead of detecting it."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer (model dir or Hub id) for token lengths."),
    split: str = typer.Option("train", "--split"),
    columns: Optional[str] = typer.Option(None, "--columns", help="The recipe's column map: field=column pairs "
                                          "(prompt=question,response=answer) or a JSON object."),
    role: Optional[str] = typer.Option(None, "--role", help="Check the rows as a stage of this role would: sft, "
                                       "preference or pretrain (plain text)."),
) -> None:
    """Detected format, row count, skipped rows, token-length percentiles and a sample.

    Examples:

      tandem data inspect ../shared/data/hh-rlhf/helpful-online/test.jsonl.gz --tokenizer models/smollm2-135m-instruct

      tandem data inspect qa.csv --columns prompt=question,response=answer --role sft
    """
    from rich.console import Console as C

    with user_errors():
        from tandem.data.inspect import inspect_source, parse_columns, render_inspection

        cols = parse_columns(columns)
        tok = None
        if tokenizer:
            from tandem.models import load_tokenizer

            tok = load_tokenizer(tokenizer)
        report = inspect_source(source, tokenizer=tok, format=format, split=split, columns=cols, role=role)
    C().print(render_inspection(report))


def _mount() -> None:
    """Commands that live next to their packages (each module holds a typer app)."""
    from tandem.cli import conflict_cmd, contrasts_cmd, eval_cmd, merge_cmd, models_cmd, probe_cmd, push_cmd, study_cmd, tax_cmd

    app.add_typer(models_cmd.app, name="models", help="Fetch and describe models.")
    app.add_typer(probe_cmd.app, name="probe", help="Probe a model without training it (gradient entanglement).")
    app.add_typer(conflict_cmd.app, name="conflict", help="The conflict benchmark: make its files, score replies.")
    for sub in (merge_cmd, eval_cmd, tax_cmd, push_cmd, study_cmd, contrasts_cmd):
        app.registered_commands.extend(sub.app.registered_commands)


@app.command()
def quickstart(
    output_dir: Path = typer.Option(Path("runs/quickstart"), "--output-dir", "-o"),
    model: Optional[str] = typer.Option(None, "--model", help="Model dir; default: SmolLM2-135M-Instruct (pulled if needed)."),
    overwrite: bool = typer.Option(True, "--overwrite/--no-overwrite", help="Replace an earlier quickstart in OUTPUT_DIR (never a directory tandem did not create)."),
    n_train: int = typer.Option(48, "--n-train", min=1, help="Generated training examples per data set."),
    n_eval: int = typer.Option(32, "--n-eval", min=1, help="Held-out tasks and pairs for the before/after table."),
) -> None:
    """SmolLM2-135M-Instruct + LoRA on a small generated task set: sequential (SFT then DPO) vs hbat, evaluated.

    Runs in about a minute on 2 CPU cores with native bf16 (avx512_bf16), longer without it. Example: tandem quickstart -o runs/qs

    OUTPUT_DIR must be new, empty or an earlier quickstart's: each method trains in OUTPUT_DIR/<method>.
    """
    setup_logging(False)
    with user_errors(output_dir):
        from tandem.demos.quickstart import run_quickstart

        run_quickstart(output_dir=output_dir, model=model, overwrite=overwrite, n_train=n_train, n_eval=n_eval)


@app.command()
def compare(
    recipe: Path = typer.Argument(..., help="Recipe shared by every method (only schedule.method and seed change)."),
    methods: str = typer.Option("sequential,hbat", "--methods", help="Comma list of methods (see docs/methods.md)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma list of seeds."),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="COMPARE directory."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field for every run."),
    resume: bool = typer.Option(False, "--resume", help="Keep finished runs, resume unfinished ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier comparison in COMPARE (only one tandem created)."),
    x_key: Optional[str] = typer.Option(None, "--x", help="Instruction-following metric for the scatter."),
    y_key: Optional[str] = typer.Option(None, "--y", help="Preference metric for the scatter."),
    contrast: list[str] = typer.Option([], "--contrast", help="A:B (methods; A minus B): paired difference with a 95% CI at the end (repeatable; see tandem contrasts)."),
    contrast_metric: list[str] = typer.Option([], "--contrast-metric", help="Metric of --contrast: pass, style, words (per prompt) or a table column (repeatable; default pass)."),
) -> None:
    """Train several methods on the same data, seed and step budget; write COMPARE/table.md, table.json and plots.

    Example: tandem compare runs/testbed/recipe.yaml --methods sequential,hbat,hbat-no-ewc,hbat-freeze --seeds 0,1,2
    """
    setup_logging(False)
    method_list = parse_list("--methods", methods, str, "sequential,hbat")
    seed_list = parse_list("--seeds", seeds, int, "0,1,2")
    with user_errors(out):
        from tandem.api import compare as run_compare
        from tandem.report import console_table

        from tandem.pipelines.contrasts import asked_contrasts, contrasts_of_table

        asked = asked_contrasts(contrast, contrast_metric)  # a malformed A:B is refused before any training
        rows = run_compare(recipe, method_list, seed_list, out, list(set_), resume, overwrite, x_key, y_key)
        if asked:
            contrasts_of_table(out, asked)
    typer.echo(console_table(rows))
    if asked:
        typer.echo((out / "contrasts.md").read_text())
    console.print(f"wrote {out}/table.json, table.md (every metric, mean ± std), report.md")


@app.command()
def testbed(
    out: Path = typer.Argument(Path("runs/testbed"), help="Directory for the model, data and recipe."),
    seed: int = typer.Option(1234, "--seed"),
) -> None:
    """Build the CPU testbed where SFT and preference alignment conflict (tiny Llama + generated tasks).

    Example: tandem testbed runs/testbed && tandem compare runs/testbed/recipe.yaml --methods sequential,hbat
    """
    with user_errors(out):
        from tandem.demos.testbed import build_testbed

        recipe = build_testbed(out, seed=seed)
    console.print(f"wrote {recipe}")


_mount()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
