"""``tandem conflict``: the verifiable conflict benchmark (tandem.data.conflict): make its files, score replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, user_errors

app = make_app(help="The conflict benchmark: generated tasks with exact checkers and preference pairs that conflict "
                    "with them.", no_args_is_help=True)

DEFAULT_INSTRUCTIONS = "../shared/data/alpaca/alpaca_data_sample5000.jsonl.gz"


@app.command("make")
def make_cmd(
    out: Path = typer.Argument(..., help="Directory for sft.jsonl, pairs.jsonl, val.jsonl, test.jsonl, test_pairs.jsonl, meta.json."),
    rho: float = typer.Option(1.0, "--rho", help="Share of pairs whose chosen reply is friendly but wrong (1: the conflict; 0: the no-tax control)."),
    seed: int = typer.Option(0, "--seed"),
    instructions: Optional[str] = typer.Option(None, "--instructions", help=f"Alpaca-style file for the constraint families, or 'templates' for generated instructions (default: {DEFAULT_INSTRUCTIONS} when it exists, else templates)."),
    sizes: list[str] = typer.Option([], "--size", help="FILE=N, e.g. --size sft=512 (repeatable; files: sft, pairs, val, test, test_pairs)."),
    families: Optional[str] = typer.Option(None, "--families", help="Comma list: a subset of the ten families (default: all), e.g. add,upper,subtract,next_letter."),
) -> None:
    """Write the benchmark's files at dose RHO (every held-out row has prompt, reference, family and check).

    Examples:

      tandem conflict make runs/conflict/rho1 --rho 1 --seed 0

      tandem conflict make runs/conflict/rho0 --rho 0 --size sft=512 --size pairs=256
    """
    with user_errors(out):
        from tandem.data.conflict import FILES, make, write

        n = {}
        for s in sizes:
            name, _, value = s.partition("=")
            if name not in FILES or not value.isdigit() or int(value) < 1:
                raise ValueError(f"--size {s!r}: expected FILE=N with FILE one of {', '.join(FILES)} and N >= 1")
            n[name] = int(value)
        if instructions is None and Path(DEFAULT_INSTRUCTIONS).is_file():
            instructions = DEFAULT_INSTRUCTIONS
        elif instructions == "templates":
            instructions = None
        fams = tuple(f.strip() for f in families.split(",") if f.strip()) if families else None
        rows, meta = make(rho=rho, seed=seed, sizes=n, instructions=instructions, families=fams)
        write(out, rows, meta)
    console.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
                  + f" (rho {rho:g}, {meta['wrong_pairs']} wrong chosen; instructions: {meta['instructions']})")


@app.command("score")
def score_cmd(
    test: Path = typer.Argument(..., help="test.jsonl (or val.jsonl) of `tandem conflict make`."),
    replies: Path = typer.Argument(..., help="JSONL rows {prompt, reply} (or a run's eval/generations.jsonl: prompt, output)."),
    per_prompt: Optional[Path] = typer.Option(None, "--per-prompt", help="Also write each prompt's verdicts here (JSONL)."),
) -> None:
    """Score any model's replies: prints JSON with pass_rate, style_rate, mean_words and per_family.

    Example: tandem conflict score runs/conflict/rho1/test.jsonl replies.jsonl
    """
    with user_errors(per_prompt):
        from tandem.pipelines.conflict import score_files

        result = score_files(test, replies)
        if per_prompt is not None:
            per_prompt.write_text("".join(json.dumps(r) + "\n" for r in result["per_prompt"]))
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}, indent=2))
