"""PNG plots for reports (matplotlib, Agg backend): training curves with stage boundaries, a method
scatter with error bars over seeds, and temperature sweeps with a ±std band. Each function writes one PNG
and returns its path (or None when there is nothing to plot)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import FormatStrFormatter
from matplotlib.transforms import blended_transform_factory

from tandem.io.figures import plt, save_figure

# keys of a metrics.jsonl row that are coordinates or bookkeeping, not curves
NON_METRIC_KEYS = {"split", "stage", "stage_index", "step", "stage_step", "epoch", "tokens", "time", "wall_time"}
PREFERRED_ORDER = ["loss", "val_loss", "lr", "tokens_per_s", "grad_norm"]


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_keys(rows: list[dict]) -> list[str]:
    """Numeric keys present in any row, ``loss``/``lr``/... first, then alphabetical."""
    keys = {k for r in rows for k, v in r.items() if k not in NON_METRIC_KEYS and is_finite_number(v)}
    return [k for k in PREFERRED_ORDER if k in keys] + sorted(keys - set(PREFERRED_ORDER))


def stage_spans(rows: list[dict]) -> list[tuple[str, float, float]]:
    """``(stage name, first step, last step)`` per stage, in run order (train and val rows together)."""
    spans: dict = {}
    for r in rows:
        if "step" not in r:
            continue
        key = (r.get("stage_index", 0), r.get("stage", f"stage {r.get('stage_index', 0)}"))
        lo, hi = spans.get(key, (r["step"], r["step"]))
        spans[key] = (min(lo, r["step"]), max(hi, r["step"]))
    return [(name, lo, hi) for (_, name), (lo, hi) in sorted(spans.items(), key=lambda kv: (kv[0][0], kv[1][0]))]


def _mark_stages(ax, spans, label: bool) -> None:
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for i, (name, lo, hi) in enumerate(spans):
        if i > 0:
            ax.axvline(lo - 0.5, color="0.45", linestyle="--", linewidth=1)
        if label:
            ax.text(lo - 0.5 if i else lo, 1.01, f" {name}", transform=trans, fontsize=8, color="0.3",
                    ha="left", va="bottom", clip_on=False)


def plot_training_curves(rows: list[dict], out_png: str | Path, metrics: list[str] | None = None,
                         title: str = "Training curves") -> Path | None:
    """One panel per metric: train rows as a line, validation rows as dots on a line, stage boundaries as
    dashed vertical lines labelled with the stage names; x is the global optimizer step."""
    keys = metrics or metric_keys(rows)
    if not keys:
        return None
    spans = stage_spans(rows)
    steps = [r["step"] for r in rows if is_finite_number(r.get("step"))]
    fig, axes = _panel_grid(len(keys), 3, 5.2, 3.5)
    for ax, key in zip(axes.flat, keys):
        for split, style in (("train", dict(linewidth=1.4)), ("val", dict(marker="o", markersize=4, linewidth=1.2))):
            pts = sorted((r["step"], r[key]) for r in rows if r.get("split", "train") == split and "step" in r and is_finite_number(r.get(key)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=split, **style)
        if steps:  # every panel spans the whole run, so stage boundaries line up across panels
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
        _mark_stages(ax, spans, label=True)
        ax.set_title(key, pad=16)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.1e"))  # no offset text above the axes
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # keep the suptitle clear of the first row's titles
    return save_figure(fig, out_png)


ENTANGLEMENT_PANELS = (  # (title, [(key, label)]): chosen vs rejected log-probs, then the probe's metrics
    ("log-probs (train batches)", [("chosen_logp", "chosen"), ("rejected_logp", "rejected")]),
    ("log-probs (probe pairs)", [("probe/logp_w", "chosen"), ("probe/logp_l", "rejected")]),
    ("first-order conditions (probe)", [("probe/frac_chosen_falls", "chosen falls"),
                                        ("probe/frac_rejected_rises", "rejected rises")]),
    ("gradient cosine (probe)", [("probe/mean_cosine", "mean"), ("probe/median_cosine", "median")]),
)


def _panel_grid(n: int, max_cols: int, width: float, height: float):
    """A figure with ``n`` panels in rows of at most ``max_cols`` (unused cells hidden)."""
    ncols = min(max_cols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_entanglement(rows: list[dict], out_png: str | Path, title: str = "Gradient entanglement") -> Path | None:
    """Chosen and rejected log-probs on shared axes (train rows), and the ``probe/*`` metrics of the training-time
    entanglement probe; one panel per group present, stage boundaries marked. None when no key is present."""
    panels = [(t, [(k, lab) for k, lab in keys if any(is_finite_number(r.get(k)) for r in rows)]) for t, keys in ENTANGLEMENT_PANELS]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    spans = stage_spans(rows)
    steps = [r["step"] for r in rows if is_finite_number(r.get("step"))]
    fig, axes = _panel_grid(len(panels), 2, 6.0, 3.8)
    for ax, (t, keys) in zip(axes.flat, panels):
        for key, label in keys:
            pts = sorted((r["step"], r[key]) for r in rows if r.get("split", "train") == "train" and "step" in r and is_finite_number(r.get(key)))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, markersize=3,
                    label=label)
        if steps:  # the whole run on every panel, so stage boundaries line up
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
        _mark_stages(ax, spans, label=True)
        ax.set_title(t, pad=16)
        ax.set_xlabel("step")
        ax.set_ylabel("fraction of pairs" if "conditions" in t else "cosine" if "cosine" in t else "summed log-prob")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # keep the suptitle clear of the first row's titles
    return save_figure(fig, out_png)


def plot_method_scatter(summary: dict[str, dict], x_key: str, y_key: str, out_png: str | Path,
                        title: str | None = None) -> Path | None:
    """One point per method at the mean of ``x_key`` and ``y_key`` over seeds, with ±std error bars.
    ``summary`` is ``{method: {metric: {"mean", "std", "n"}}}`` (see :func:`tandem.report.build.summarize`)."""
    pts = [(m, s[x_key], s[y_key]) for m, s in summary.items() if x_key in s and y_key in s]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, (method, x, y) in enumerate(pts):
        ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", markersize=7, capsize=4,
                    color=cmap(i % 10), label=f"{method} (n={min(x['n'], y['n'])})")
        ax.annotate(method, (x["mean"], y["mean"]), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(title or f"{y_key} vs {x_key} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_temperature_sweep(rows: list[dict], out_png: str | Path, title: str = "Temperature sweep") -> Path | None:
    """One panel per metric: mean vs temperature with a ±std band. Rows are ``{"temperature", "mean", "std"}``
    plus an optional ``"metric"`` name (default ``"value"``) and an optional ``"method"`` (one line each)."""
    by_metric: dict[str, dict[str, list]] = {}
    for r in rows:
        if not (is_finite_number(r.get("temperature")) and is_finite_number(r.get("mean"))):
            continue
        by_metric.setdefault(str(r.get("metric", "value")), {}).setdefault(str(r.get("method", "")), []).append(r)
    if not by_metric:
        return None
    n = len(by_metric)
    ncols = min(3, n)
    fig, axes = plt.subplots(math.ceil(n / ncols), ncols, figsize=(5.2 * ncols, 3.8 * math.ceil(n / ncols)), squeeze=False)
    for ax, (metric, lines) in zip(axes.flat, by_metric.items()):
        for method, pts in lines.items():
            pts = sorted(pts, key=lambda r: r["temperature"])
            t = [r["temperature"] for r in pts]
            mu = [r["mean"] for r in pts]
            sd = [r.get("std") or 0.0 for r in pts]
            (line,) = ax.plot(t, mu, marker="o", label=f"{method} mean" if method else "mean")
            ax.fill_between(t, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)],
                            color=line.get_color(), alpha=0.2, label=f"{method} ± 1 std" if method else "± 1 std")
        ax.set_title(metric)
        ax.set_xlabel("sampling temperature")
        ax.set_ylabel(f"{metric} (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # keep the suptitle clear of the first row's titles
    return save_figure(fig, out_png)


def plot_runs_overlay(runs: dict[str, list[dict]], keys: list[str], out_png: str | Path,
                      title: str = "Runs compared") -> Path | None:
    """One panel per metric, one line per run (train rows; x = global step): for runs that differ in one
    setting, e.g. the preference loss. None when no run has any of ``keys``."""
    keys = [k for k in keys if any(is_finite_number(r.get(k)) for rows in runs.values() for r in rows)]
    if not keys:
        return None
    fig, axes = _panel_grid(len(keys), 2, 6.0, 3.8)
    for ax, key in zip(axes.flat, keys):
        for name, rows in runs.items():
            pts = sorted((r["step"], r[key]) for r in rows if r.get("split", "train") == "train" and is_finite_number(r.get(key)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.4, label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, out_png)
