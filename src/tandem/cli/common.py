"""What every command shares: the console, logging set-up, the one-line error exit and recipe loading."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(msg: str, code: int = 2) -> None:
    """Print ``error: msg`` (one line, no traceback) and exit with ``code``."""
    console.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


def recipe_or_fail(path: Path, overrides: list[str]):
    """The validated recipe, or exit 2 with the error naming the field, line and file."""
    from tandem.config.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path, overrides)
    except RecipeError as e:
        fail(str(e))


def make_app(**kw) -> typer.Typer:
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, **kw)
