"""Run directories: only tandem's own are ever replaced, and a run directory has one writer.

Marker
    Every run directory tandem creates holds ``.tandem-run.json`` (tandem version, command, creation time,
    pid). A directory is *tandem's* when that file is there. ``--overwrite`` replaces only such a directory;
    an existing non-empty directory without the marker is refused whatever the flags, so user data is never
    deleted. An existing *empty* directory may be used (it gets the marker).

Lock
    ``RunLock(run_dir)`` holds an exclusive, non-blocking ``fcntl.flock`` on ``run_dir/.tandem-lock`` and
    writes the holder's pid into it; a second writer gets :class:`RunDirError` naming that pid. The kernel
    releases the lock when the holder dies (kill -9 included), so a stale lock file never blocks anyone.
    The lock file lives *inside* the run directory (nothing is written next to it) and is never deleted:
    ``--overwrite`` takes the lock first, then clears everything in the directory except the lock file.
    Taking the lock refuses a foreign directory (non-empty, no marker) before anything is written into it.

Order for a command that writes a run directory (what :func:`open_run_dir` does)::

    check_run_dir(path, resume=..., overwrite=...)     # refuse early, writes nothing
    with RunLock(path):                                # creates path if needed; one writer from here on
        prepare_run_dir(path, resume=..., overwrite=..., command=...)
        clean_stale_tmp(path)                          # resume: remove what a kill left half-written
        ...write the run...

Temporary names cleaned by :func:`clean_stale_tmp` (only while holding the lock):
``.{name}.tmp-*`` (``tandem.models.atomic.atomic_dir`` work dirs), ``*.tmp`` (files written then renamed),
and ``.{name}.old-{pid}`` (the previous copy atomic_dir moves aside: deleted when ``name`` exists, renamed
back to ``name`` when a kill hit between the two renames).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from tandem.errors import TandemError

MARKER = ".tandem-run.json"
LOCK = ".tandem-lock"
_OLD_RE = re.compile(r"^\.(?P<name>.+)\.old-\d+$")
_TMP_DIR_RE = re.compile(r"^\..+\.tmp-[^/]*$")


class RunDirError(TandemError):
    """A run directory that may not be used as asked (user error: one line, exit code 2)."""


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds tandem's marker file (a directory tandem created)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "tandem" in data


def read_marker(path: str | Path) -> dict:
    """The marker's content (``{}`` when there is none or it cannot be read)."""
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_marker(path: str | Path, command: str) -> Path:
    """Write the marker into ``path`` (which must exist); returns the marker's path."""
    from tandem.version import __version__

    marker = Path(path) / MARKER
    data = {
        "tandem": __version__,
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
    }
    tmp = marker.with_name(MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, marker)
    return marker


def _our_lock(p: Path) -> bool:
    """True when ``p`` is tandem's lock file: empty (just created) or ``{"pid": N}`` (a user's file is not)."""
    if p.name != LOCK or p.is_symlink() or not p.is_file():
        return False
    try:
        if p.stat().st_size > 64:
            return False
        text = p.read_text(encoding="utf-8").strip()
        data = json.loads(text) if text else {"pid": 0}
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"pid"} and isinstance(data["pid"], int)


def _entries(path: Path) -> list[Path]:
    """Entries of ``path`` other than tandem's lock file (a directory holding only that lock counts as empty)."""
    return [p for p in path.iterdir() if not _our_lock(p)]


def expand(path: str | Path) -> Path:
    """``~`` and ``$VAR`` of an output path expanded (never a literal ``~`` directory)."""
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def path_inputs(data, prefix: str = "", exclude: tuple[str, ...] = ("output_dir", "tax.out")) -> dict[str, str]:
    """Every string leaf of ``data`` (a recipe as plain data) that names an existing local path, by dotted field:
    the inputs ``--overwrite`` must not delete (model, data sources, reward model, reference, chat template...).
    ``exclude``: fields (and everything under them) that are not inputs of the command."""
    out: dict[str, str] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if not any(key == e or key.startswith(e + ".") for e in exclude):
                out.update(path_inputs(v, key, exclude))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            out.update(path_inputs(v, f"{prefix}.{i}", exclude))
    elif isinstance(data, str) and data and len(data) < 4096 and "\n" not in data:
        try:
            if expand(data).exists():
                out[prefix] = data
        except (OSError, ValueError):
            pass
    return out


def check_inputs_outside(path: str | Path, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse (``RunDirError``) when an input lies inside ``path``, the directory ``--overwrite`` would clear."""
    out = Path(path)
    targets = {Path(os.path.abspath(out)), Path(os.path.realpath(out))}
    for label, value in inputs.items():
        if value is None or str(value) == "":
            continue
        p = expand(value)
        if not (p.exists() or p.is_symlink()):
            continue
        here = {Path(os.path.abspath(p)), Path(os.path.realpath(p))}
        if any(_inside(h, t) for h in here for t in targets):
            raise RunDirError(f"{out}: --overwrite would delete {label} {value}, an input of this command that lies "
                              f"inside it; move it out of {out} or choose another output directory")


def _foreign(path: Path) -> RunDirError:
    return RunDirError(
        f"{path} exists, is not empty and was not created by tandem (no {MARKER} in it): refusing to write "
        "into it or replace it; choose a new output directory"
    )


def check_run_dir(path: str | Path, *, resume: bool, overwrite: bool, command: str | None = None,
                  inputs: Mapping[str, str | os.PathLike | None] | None = None) -> None:
    """Refuse a run directory that cannot be used as asked; writes nothing (call before loading anything).

    Raises :class:`RunDirError` when: ``path`` is a file; it is non-empty and not tandem's (whatever the
    flags); it is tandem's and neither ``resume`` nor ``overwrite`` is given; ``resume`` is asked for a
    directory that does not exist or is empty, or one another ``command`` wrote; both flags are given;
    ``overwrite`` would clear a directory holding one of ``inputs`` (label -> path).
    """
    path = Path(path)
    if resume and overwrite:
        raise RunDirError(f"{path}: pass --resume or --overwrite, not both")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a directory; choose a new output directory")
    used = path.is_dir() and bool(_entries(path))
    if not used:
        if resume:
            raise RunDirError(f"{path}: nothing to resume (no such run); run without --resume to start it")
        return
    if not is_run_dir(path):
        raise _foreign(path)
    if not (resume or overwrite):
        raise RunDirError(
            f"{path} already holds a tandem run: pass --resume to continue it or --overwrite to replace it"
        )
    owner = read_marker(path).get("command")
    if resume and command is not None and owner is not None and owner != command:
        raise RunDirError(f"{path} holds the output of `tandem {owner}`, not of `tandem {command}`: refusing to write "
                          f"into it; choose another output directory")
    if overwrite and inputs:
        check_inputs_outside(path, inputs)


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool, command: str,
                    inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Make ``path`` ready for a run (see :func:`check_run_dir` for what is refused).

    New or empty directory: created, marker written. Tandem's directory with ``overwrite``: every entry but
    the lock file is deleted, then the marker is written again. With ``resume``: kept as it is. Call it while
    holding :class:`RunLock` (``overwrite`` must not clear a directory another process is writing).
    """
    path = Path(path)
    check_run_dir(path, resume=resume, overwrite=overwrite, command=command, inputs=inputs)
    if resume:
        return path
    path.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for entry in _entries(path):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    write_marker(path, command)
    return path


class RunLock:
    """Exclusive lock on a run directory, across processes: ``with RunLock(run_dir): ...``.

    Non-blocking: a second holder gets :class:`RunDirError` naming the first holder's pid. Creates
    ``run_dir`` (and parents) when missing; refuses a foreign directory without writing into it.
    The lock is released on ``release()``/context exit, and by the kernel when the process dies.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.lock_path = self.run_dir / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> int | None:
        """The pid recorded in the lock file (the last holder; alive only while the lock is taken)."""
        try:
            return int(json.loads(self.lock_path.read_text(encoding="utf-8"))["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise RunDirError(f"{d} exists and is not a directory; choose a new output directory")
        if d.is_dir() and _entries(d) and not is_run_dir(d):
            raise _foreign(d)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = self.holder()
            who = f"pid {pid}" if pid is not None else "another process"
            raise RunDirError(
                f"{d} is being written by another tandem process ({who}); wait for it to finish, stop it, "
                "or choose another output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clean_stale_tmp(run_dir: str | Path) -> list[str]:
    """Remove what an interrupted write left in ``run_dir`` (recursively; symlinks are not followed).

    Deletes ``.{name}.tmp-*`` entries and ``*.tmp`` files/dirs; an ``.{name}.old-{pid}`` copy is deleted when
    ``name`` exists and renamed back to ``name`` when it does not. Call it only while holding
    :class:`RunLock` (a live writer's temporaries would otherwise vanish). Returns the actions taken, e.g.
    ``["removed checkpoints/.step-3.tmp-ab12", "restored checkpoints/step-2"]``.
    """
    root = Path(run_dir)
    done: list[str] = []
    if not root.is_dir():
        return done
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not (here / d / MARKER).exists()]  # nested runs (tax/, eval/) are theirs
        for name in list(dirnames) + filenames:
            entry = here / name
            rel = entry.relative_to(root).as_posix()
            old = _OLD_RE.match(name)
            if old and not (here / old.group("name")).exists():
                os.replace(entry, here / old.group("name"))
                done.append(f"restored {(here / old.group('name')).relative_to(root).as_posix()}")
            elif old or _TMP_DIR_RE.match(name) or name.endswith(".tmp"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                done.append(f"removed {rel}")
            else:
                continue
            if name in dirnames:
                dirnames.remove(name)
    return done


@contextlib.contextmanager
def open_run_dir(path: str | Path, *, resume: bool, overwrite: bool, command: str, clean: bool = True,
                 inputs: Mapping[str, str | os.PathLike | None] | None = None):
    """Check, lock, prepare (and on resume clean) a run directory; yields its :class:`Path` with the lock held.

    ``with open_run_dir(out, resume=r, overwrite=o, command="train", inputs=path_inputs(raw)) as run_dir: ...``
    """
    check_run_dir(path, resume=resume, overwrite=overwrite, command=command, inputs=inputs)
    with RunLock(path):
        run_dir = prepare_run_dir(path, resume=resume, overwrite=overwrite, command=command, inputs=inputs)
        if clean and resume:
            clean_stale_tmp(run_dir)
        yield run_dir


__all__ = [
    "LOCK",
    "MARKER",
    "RunDirError",
    "RunLock",
    "check_inputs_outside",
    "check_run_dir",
    "clean_stale_tmp",
    "expand",
    "is_run_dir",
    "open_run_dir",
    "path_inputs",
    "prepare_run_dir",
    "read_marker",
    "write_marker",
]
