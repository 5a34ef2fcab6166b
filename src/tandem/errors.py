"""The common base of tandem's user errors, and the one line each user error becomes (floor 0: imports nothing from
tandem, so the CLI and the Python API share it without an upward import).

A :class:`TandemError` is a mistake in what the user gave tandem -- a recipe, a flag, a file, a directory -- and
its message is the one line that says what is wrong, where, and what to do. The CLI prints it as ``error: ...``
with exit code 2 (``tandem.cli.common.user_errors``); the Python API lets it propagate.
"""

from __future__ import annotations

import errno
import os
import re
import sys

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


class TandemError(Exception):
    """A user error: the message is one line naming the file, field or flag at fault and what to do."""



def one_line(msg: str) -> str:
    """``msg`` on one line (line breaks and the indentation after them become one space)."""
    return re.sub(r"\s*\n\s*", " ", msg.strip())


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


__all__ = ["EXIT_USER_ERROR", "TandemError", "disk_full", "one_line", "user_message"]
