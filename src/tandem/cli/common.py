"""What every command shares: the console, logging set-up, the one-line error exit and recipe loading.

User errors
    Every command runs its body inside :func:`user_errors`. A user error -- a bad recipe or ``--set`` flag, bad or
    missing data, a run directory that may not be used, a model path that does not exist, a bad setting, the LLM
    judge refusing a request, a full disk, a diverged run -- becomes ``error: <one line>`` on stderr and exit code
    2, never a traceback. Anything else is a bug and keeps its traceback. ``tandem --debug ...`` (or
    ``TANDEM_DEBUG=1``) re-raises user errors too, to show where they came from.

No heavy import here (``tandem --help`` stays fast): an exception class is looked up only when its module has
already been imported, which it must have been for such an exception to exist.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from tandem.errors import EXIT_USER_ERROR, disk_full, one_line, user_message  # noqa: F401 (re-exported)

console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    noisy = ("httpx", "urllib3", "filelock", "accelerate")
    handler = RichHandler(console=console, show_path=False, show_time=False)
    # libraries' chatter below WARNING is dropped at the handler (a library may reset its own logger's level)
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(noisy))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler],
                        force=True)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)


def fail(msg: str, code: int = EXIT_USER_ERROR) -> None:
    """Print ``error: msg`` (one line, no traceback, API keys and URL passwords redacted) and exit with ``code``."""
    from tandem.io.secrets import redact

    console.print(Text.assemble(("error:", "bold red"), " ", redact(one_line(msg))), soft_wrap=True, highlight=False)
    raise typer.Exit(code)


_debug = {"on": False}


def set_debug(on: bool) -> None:
    """Called by the root command on every invocation with its ``--debug`` option."""
    _debug["on"] = on


def debug_enabled() -> bool:
    """``tandem --debug`` (the root command's option) or ``TANDEM_DEBUG=1``."""
    return _debug["on"] or os.environ.get("TANDEM_DEBUG", "").lower() in ("1", "true", "yes")


@dataclass
class ErrorScope:
    """What :func:`user_errors` yields: set ``where`` to the directory being written (named on a full disk)."""

    where: str | os.PathLike | None = None


@contextlib.contextmanager
def user_errors(where: str | os.PathLike | None = None):
    """``with user_errors(): ...``: a user error becomes ``error: <one line>`` and exit code 2 (see the module
    docstring); a bug, ``--debug`` or ``TANDEM_DEBUG=1`` keeps the traceback."""
    scope = ErrorScope(where)
    try:
        yield scope
    except (typer.Exit, typer.Abort):  # an exit code chosen by the command (usage errors are not ours either)
        raise
    except Exception as e:
        msg = user_message(e, scope.where)
        if msg is None or debug_enabled():
            raise
        fail(msg)


def recipe_or_fail(path: Path, overrides: list[str]):
    """The validated recipe, or exit 2 with the error naming the field, line and file."""
    from tandem.config.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path, overrides)
    except RecipeError as e:
        if debug_enabled():
            raise
        fail(str(e))


def parse_list(flag: str, text: str, kind: type, example: str) -> list:
    """A comma list given to ``flag`` as values of ``kind``; a bad item exits 2 naming the flag."""
    import math

    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        values = [kind(x) for x in items]
    except ValueError:
        fail(f"{flag} {text!r}: expected a comma list of {kind.__name__} values like {example!r}")
    bad = [x for x in values if isinstance(x, float) and not math.isfinite(x)]
    if bad:
        fail(f"{flag} {bad[0]}: not a finite number (in {text!r}); give finite values like {example!r}")
    if not values:
        fail(f"{flag} {text!r}: empty; give a comma list like {example!r}")
    return values


def make_app(**kw) -> typer.Typer:
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, **kw)
