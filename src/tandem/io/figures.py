"""Save matplotlib figures as PNG files: tight bounding box, fixed dpi, written atomically, figure closed.

Importing this module selects the non-interactive ``Agg`` backend, so plots work without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110

__all__ = ["DPI", "plt", "save_figure"]


def save_figure(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` (format from its suffix, PNG when it has none) and close it; returns ``path``.

    The image goes to ``path.tmp`` first and is renamed into place, so a reader never sees half a file and an
    existing image is replaced only by a complete one. The figure is closed even when the write fails.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fmt = out.suffix.lstrip(".").lower() or "png"
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
