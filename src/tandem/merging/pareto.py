"""Pareto front of (reward, tax) points, budget picks and a plot.

A point is ``(reward, tax)`` or a dict with keys ``"reward"`` and ``"tax"``. By default reward is maximised
and tax minimised (``maximize=(True, False)``). Point ``a`` dominates ``b`` when it is at least as good on
every objective and strictly better on one; the front is the set of points nothing dominates (exact
duplicates of a front point are all kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

Point = Sequence[float] | Mapping[str, float]


def _xy(p: Point) -> tuple[float, float]:
    if isinstance(p, Mapping):
        return float(p["reward"]), float(p["tax"])
    return float(p[0]), float(p[1])


def _dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    better = False
    for x, y, mx in zip(a, b, maximize):
        if not mx:
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(points: Sequence[Point], maximize: Sequence[bool] = (True, False)) -> list[int]:
    """Indices (ascending) of the non-dominated points."""
    xs = [_xy(p) for p in points]
    return [i for i, a in enumerate(xs) if not any(_dominates(b, a, maximize) for j, b in enumerate(xs) if j != i)]


def pick_under_budget(points: Sequence[Point], tax_budget: float) -> int | None:
    """Index of the highest-reward point with ``tax <= tax_budget`` (ties: lower tax, then lower index);
    ``None`` when no point fits the budget."""
    ok = [(i, *_xy(p)) for i, p in enumerate(points) if _xy(p)[1] <= tax_budget]
    if not ok:
        return None
    return min(ok, key=lambda t: (-t[1], t[2], t[0]))[0]


def plot_pareto(
    global_sweep: Sequence[Mapping],
    group_points: Sequence[Mapping],
    front: Sequence[int],
    path: str | Path,
    title: str = "Reward vs alignment tax",
) -> Path:
    """Save a PNG/PDF/SVG (by suffix) of tax (x) against reward (y).

    ``global_sweep``: dicts with ``alpha``, ``reward``, ``tax`` (drawn as a line, points labelled by alpha);
    ``group_points``: dicts with ``reward``, ``tax`` (per-group candidates, drawn as dots);
    ``front``: indices into ``list(global_sweep) + list(group_points)`` (e.g. ``pareto_front`` of that
    list), highlighted and joined in tax order.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend/state

    allp = list(global_sweep) + list(group_points)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    if global_sweep:
        gs = sorted(global_sweep, key=lambda d: d.get("alpha", 0.0))
        ax.plot([d["tax"] for d in gs], [d["reward"] for d in gs], "-o", color="tab:blue", ms=4,
                label="global alpha (Wise-FT)")
        for d in gs:
            if "alpha" in d:
                ax.annotate(f"{d['alpha']:.2g}", (d["tax"], d["reward"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color="tab:blue")
    if group_points:
        ax.scatter([d["tax"] for d in group_points], [d["reward"] for d in group_points], s=14, color="tab:gray",
                   alpha=0.7, label="per-group candidates")
    if front:
        fp = sorted((allp[i] for i in front), key=lambda d: d["tax"])
        ax.plot([d["tax"] for d in fp], [d["reward"] for d in fp], "--", color="tab:red", lw=1)
        ax.scatter([d["tax"] for d in fp], [d["reward"] for d in fp], s=50, facecolors="none",
                   edgecolors="tab:red", linewidths=1.5, label="Pareto front")
    ax.set_xlabel("alignment tax (lower is better)")
    ax.set_ylabel("reward (higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
