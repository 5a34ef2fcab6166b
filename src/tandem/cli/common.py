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
import errno
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

console = Console(stderr=True)

EXIT_USER_ERROR = 2

# (module, class): exceptions whose message is already the one line a user needs
USER_ERRORS = (
    ("tandem.errors", "TandemError"),  # the common base (tandem.api raises these too)
    ("tandem.config.yamlsrc", "RecipeError"),
    ("tandem.data.errors", "DataError"),
    ("tandem.io.rundir", "RunDirError"),
    ("tandem.engine.loop", "TrainingDiverged"),
    ("tandem.merging.groups", "GroupSpecError"),
    ("tandem.pipelines.probe", "ProbeInputError"),
)
JUDGE_ERROR = ("tandem.evaluation.judge", "JudgeError")
# libraries that load models and tokenizers: an OSError they raise is about the path or id they were given
LOADERS = ("transformers", "huggingface_hub", "peft", "safetensors", "tokenizers", "gguf")
# disk-full reports of writers that do not raise OSError(ENOSPC): torch.save, safetensors (SafetensorError, which is
# not an OSError: "Error while serializing: I/O error: No space left on device (os error 28)")
_DISK_FULL = re.compile(r"No space left on device|os error 28|StorageFull|PytorchStreamWriter failed writing|"
                        r"inline_container\.cc.*(file write failed|unexpected pos)", re.IGNORECASE | re.DOTALL)


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


def one_line(msg: str) -> str:
    """``msg`` on one line (line breaks and the indentation after them become one space)."""
    return re.sub(r"\s*\n\s*", " ", msg.strip())


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


def _loaded(module: str, name: str) -> type | None:
    mod = sys.modules.get(module)
    return None if mod is None else vars(mod)[name]


def _innermost_module(e: BaseException) -> str:
    """The module of the frame that raised ``e`` ('' when unknown)."""
    tb = e.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _writer_errors() -> tuple[type, ...]:
    """Exception types of writers that report a full disk in their message (safetensors' is not an OSError)."""
    st = _loaded("safetensors", "SafetensorError") if "safetensors" in sys.modules else None
    return (OSError, RuntimeError) + ((st,) if st is not None else ())


def disk_full(e: BaseException) -> bool:
    """True when ``e`` (or what caused it) reports a full disk or an exceeded quota."""
    writers = _writer_errors()
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(x, writers) and _DISK_FULL.search(str(x)):
            return True
    return False


# OSErrors about a path the user gave (wherever raised): what to do about each
_PATH_ERRNOS = {
    errno.EROFS: "the file system is read-only: choose a writable output directory",
    errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter path",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?): fix the link or give the real path",
    errno.EACCES: "permission denied: choose a path you can read and write",
    errno.EPERM: "operation not permitted: choose a path you can read and write",
    errno.EFBIG: "the file is too large for this file system or limit: free space or choose another disk",
    errno.ENXIO: "not a regular file (a device or socket?): give a file",
}


def _filename(e: BaseException) -> str | None:
    for x in _chain(e):
        if isinstance(x, OSError) and x.filename:
            return str(x.filename)
    return None


def user_message(e: BaseException, where: str | os.PathLike | None = None) -> str | None:
    """The one-line message for a user error, ``None`` for anything else (a bug: it keeps its traceback).

    ``where`` names what the command was writing, for a full disk reported without a path (torch.save).
    """
    if disk_full(e):
        path = _filename(e) or (str(where) if where else "the output directory")
        return f"disk full: {path}: free some space, then continue with --resume (finished checkpoints are kept)"
    user = tuple(c for c in (_loaded(m, n) for m, n in USER_ERRORS) if c is not None)
    if user and isinstance(e, user):
        return str(e) or type(e).__name__
    judge = _loaded(*JUDGE_ERROR)
    if judge is not None and isinstance(e, judge):
        return (f"{e}; fix the judge settings (eval.judge) or wait for the endpoint, then rerun: verdicts already "
                "received are cached in OUT/judge_cache.jsonl")
    if isinstance(e, OSError) and e.errno in _PATH_ERRNOS and e.filename:
        return f"{e.filename}: {_PATH_ERRNOS[e.errno]}"
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return str(e)
    raiser = _innermost_module(e)
    if isinstance(e, OSError) and raiser.split(".")[0] in LOADERS:
        return str(e)  # e.g. "xyz is not a local folder and is not a valid model identifier"
    if isinstance(e, ValueError) and raiser.split(".")[0] == "tandem":
        return str(e)  # tandem's own checks of settings and inputs
    return None


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
