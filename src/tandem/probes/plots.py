"""PNG plots of entanglement rows (from :func:`tandem.probes.entanglement.entanglement_stats`)."""

from __future__ import annotations

from pathlib import Path


def plot_entanglement_hist(rows: list[dict], out_png: str | Path, title: str = "Gradient entanglement",
                           ratio: float = 1.0) -> Path:
    """Three panels: histogram of cos(g_w, g_l); histogram of <g_w, g_l>; and each pair at
    ``(<g_w,g_l> / (ratio ||g_w||^2), ratio <g_w,g_l> / ||g_l||^2)`` with the thresholds at 1 (right of the
    vertical line: chosen log-prob falls; above the horizontal line: rejected log-prob rises)."""
    from tandem.io.figures import plt, save_figure

    cos = [r["cosine"] for r in rows]
    dots = [r["dot"] for r in rows]
    xs = [r["dot"] / (ratio * r["norm_w"] ** 2) if r["norm_w"] > 0 else 0.0 for r in rows]
    ys = [ratio * r["dot"] / r["norm_l"] ** 2 if r["norm_l"] > 0 else 0.0 for r in rows]
    bins = max(5, min(40, len(rows)))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].hist(cos, bins=bins, range=(-1, 1), color="tab:blue", edgecolor="white")
    axes[0].set_title(f"cosine(g_w, g_l), n={len(rows)}")
    axes[0].set_xlabel("cosine")
    axes[0].set_ylabel("pairs")
    axes[1].hist(dots, bins=bins, color="tab:purple", edgecolor="white")
    axes[1].axvline(0, color="0.4", linewidth=1)
    axes[1].set_title("<g_w, g_l>")
    axes[1].set_xlabel("inner product")
    axes[1].set_ylabel("pairs")
    colors = ["tab:red" if r["chosen_falls"] else "tab:orange" if r["rejected_rises"] else "tab:green" for r in rows]
    axes[2].scatter(xs, ys, c=colors, s=18)
    axes[2].axvline(1, color="tab:red", linestyle="--", linewidth=1, label="chosen falls beyond")
    axes[2].axhline(1, color="tab:orange", linestyle="--", linewidth=1, label="rejected rises above")
    axes[2].set_title("first-order conditions per pair")
    axes[2].set_xlabel("<g_w,g_l> / (ratio ||g_w||^2)")
    axes[2].set_ylabel("ratio <g_w,g_l> / ||g_l||^2")
    axes[2].legend(fontsize=8, loc="best")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png)
