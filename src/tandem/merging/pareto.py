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


TAX_LABELS = {
    "perplexity": "alignment tax: held-out perplexity increase over θ₀ (ppl / ppl₀ − 1)",
    "mc": "alignment tax: multiple-choice accuracy drop from θ₀ (acc₀ − acc)",
}
KIND_STYLE = {  # kind -> (marker, colour, size, legend label)
    "group": ("^", "tab:gray", 30, "per-group ratios (optuna)"),
    "adaptive": ("D", "tab:green", 55, "adaptive ratios (learned)"),
}


def plot_pareto(
    global_sweep: Sequence[Mapping],
    group_points: Sequence[Mapping],
    front: Sequence[int],
    path: str | Path,
    title: str = "Reward vs alignment tax",
    *,
    tax_metric: str | None = None,
    budget: float | None = None,
    pick: int | None = None,
) -> Path:
    """Save a PNG/PDF/SVG (by suffix) of tax (x, lower is better) against reward (y, higher is better).

    ``global_sweep``: dicts with ``alpha``, ``reward``, ``tax`` (the Wise-FT line, points labelled by alpha, θ₀ at
    alpha 0 and θ₁ at alpha 1); ``group_points``: dicts with ``reward``, ``tax`` and ``kind`` (``group``: per-group
    candidates, ``adaptive``: learned ratios; distinct markers); ``front``: indices into
    ``list(global_sweep) + list(group_points)`` (e.g. ``pareto_front`` of that list), joined in tax order.
    ``tax_metric`` (``perplexity`` / ``mc``; default: read from the points) names what the tax axis measures;
    ``budget`` draws the budget line and shades the allowed side; ``pick`` (default: the point with
    ``picked: true``) is drawn as a star.
    """
    from tandem.io.figures import plt, save_figure

    allp = list(global_sweep) + list(group_points)
    if tax_metric is None:
        tax_metric = next((m for m in TAX_LABELS if any(m in p for p in allp)), None)
    if pick is None:
        pick = next((i for i, p in enumerate(allp) if p.get("picked")), None)
    fig, ax = plt.subplots(figsize=(7.4, 5.2))
    if budget is not None:
        ax.axvline(budget, color="tab:red", linestyle=":", linewidth=1.5, label=f"tax budget ({budget:g})")
        ax.axvspan(ax.get_xlim()[0] if not allp else min(min(p["tax"] for p in allp), budget) - 1e9, budget,
                   color="tab:red", alpha=0.05, zorder=0)
    if global_sweep:
        gs = sorted(global_sweep, key=lambda d: d.get("alpha", 0.0))
        ax.plot([d["tax"] for d in gs], [d["reward"] for d in gs], "-o", color="tab:blue", ms=5,
                label="global α (Wise-FT sweep)")
        for d in gs:
            if "alpha" in d:
                a = d["alpha"]
                text = "θ₀" if a == 0 else "θ₁" if a == 1 else f"α={a:.2g}"
                ax.annotate(text, (d["tax"], d["reward"]), textcoords="offset points", xytext=(5, -11), fontsize=8,
                            color="tab:blue")
    for kind, (marker, color, size, label) in KIND_STYLE.items():
        pts = [d for d in group_points if d.get("kind", "group") == kind]
        if pts:
            ax.scatter([d["tax"] for d in pts], [d["reward"] for d in pts], marker=marker, s=size, color=color,
                       alpha=0.8, label=label, zorder=3)
    if front:
        fp = sorted((allp[i] for i in front), key=lambda d: d["tax"])
        ax.plot([d["tax"] for d in fp], [d["reward"] for d in fp], "--", color="tab:red", lw=1, zorder=2)
        ax.scatter([d["tax"] for d in fp], [d["reward"] for d in fp], s=110, facecolors="none",
                   edgecolors="tab:red", linewidths=1.3, label="Pareto front", zorder=4)
    if pick is not None:
        p = allp[pick]
        ax.scatter([p["tax"]], [p["reward"]], marker="*", s=320, color="gold", edgecolors="black", linewidths=0.8,
                   label="picked (highest reward under budget)", zorder=5)
    if budget is not None and allp:
        lo = min(min(p["tax"] for p in allp), budget)
        hi = max(max(p["tax"] for p in allp), budget)
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(f"{TAX_LABELS.get(tax_metric, 'alignment tax')}\n(lower is better ←)")
    ax.set_ylabel("reward: mean reward-model score of replies\n(higher is better ↑)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)
