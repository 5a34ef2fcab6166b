"""What is wrong with a local input path, said precisely: a symlink loop, a dangling link or a device is not
"not found"."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def input_problem(path: str | os.PathLike) -> str | None:
    """``None`` when ``path`` is a readable regular file or a directory; else what is wrong with it, in words."""
    p = Path(os.path.expanduser(os.fspath(path)))
    try:
        st = p.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path}: a symbolic link loop (the link points back to itself); give the real file"
        if p.is_symlink():
            return f"{path}: a symbolic link to {os.readlink(p)}, which does not exist"
        if e.errno == errno.ENAMETOOLONG:
            return f"{path}: the name is too long for the file system"
        return None if e.errno == errno.ENOENT else f"{path}: {e.strerror}"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return f"{path}: not a regular file (a device, pipe or socket); give a data file"
    return None


__all__ = ["input_problem"]
