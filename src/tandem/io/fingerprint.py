"""Content fingerprints: a file's (or a directory's) size and SHA-256, to tell whether it changed.

``RUN/data-fingerprints.json`` records one per local data source when a run starts; ``--resume`` recomputes them and
refuses a run whose data changed (a resumed run would otherwise mix old and new rows, or re-plan its steps).
Checkpoint manifests (:mod:`tandem.io.manifest`) use :func:`file_digest` too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FINGERPRINTS = "data-fingerprints.json"
_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: str | Path) -> dict:
    """``{"bytes": N, "sha256": ...}`` of a file, or of a directory (every file under it, by relative name)."""
    p = Path(path)
    if p.is_dir():
        h, total = hashlib.sha256(), 0
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames.sort()
            for name in sorted(filenames):
                f = Path(dirpath) / name
                total += f.stat().st_size
                h.update(f.relative_to(p).as_posix().encode() + b"\0" + file_digest(f).encode())
        return {"bytes": total, "sha256": h.hexdigest()}
    return {"bytes": p.stat().st_size, "sha256": file_digest(p)}


def record_fingerprints(run_dir: str | Path, sources: dict[str, str]) -> Path:
    """Write ``run_dir/data-fingerprints.json`` for ``sources`` (field -> local path) that exist."""
    rows = {field: {"path": path, **fingerprint(path)} for field, path in sources.items() if Path(path).exists()}
    out = Path(run_dir) / FINGERPRINTS
    tmp = out.with_name(FINGERPRINTS + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def changed_fingerprints(run_dir: str | Path) -> list[str] | None:
    """One line per recorded source that changed or is gone since the run started; ``None`` when nothing was
    recorded (a run started before fingerprints existed)."""
    path = Path(run_dir) / FINGERPRINTS
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"{path} is unreadable"]
    out = []
    for field, old in rows.items():
        src = old.get("path", "")
        if not Path(src).exists():
            out.append(f"{field} {src} is gone")
            continue
        new = fingerprint(src)
        if new["sha256"] != old.get("sha256"):
            size = (f"{old.get('bytes')} -> {new['bytes']} bytes" if new["bytes"] != old.get("bytes")
                    else "same size, other content")
            out.append(f"{field} {src} changed since the run started ({size})")
    return out


__all__ = ["FINGERPRINTS", "changed_fingerprints", "file_digest", "fingerprint", "record_fingerprints"]
