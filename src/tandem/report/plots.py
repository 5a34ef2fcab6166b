"""PNG plots of a run for reports (matplotlib, Agg backend): training curves (train and validation overlaid, one
panel per objective metric, units on the axes, integer optimizer steps, stage boundaries labelled), chosen vs
rejected log-probs with the entanglement probe, runs overlaid, and temperature sweeps with a ±std band. Each
function writes one PNG and returns its path (or None when there is nothing to plot).

Curves are keyed by *tag*: a train row's objective metric ``k`` in a stage of role ``r`` is ``r/k`` (so an HBAT
run's SFT NLL and DPO loss are two curves, ``sft/loss`` and ``preference/loss``), validation rows already name
their role (``sft/loss``), and run-level values (``lr``, ``grad_norm``, ``tokens_per_s``, ``reg/*``) keep their
name.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from tandem.io.figures import plt, save_figure
from tandem.io.metrics import role_of

# keys of a metrics.jsonl row that are coordinates or bookkeeping, not curves
NON_METRIC_KEYS = {"split", "stage", "stage_index", "step", "stage_step", "epoch", "tokens", "time", "wall_time", "role"}
PREFERRED_ORDER = ["loss", "val_loss", "lr", "tokens_per_s", "grad_norm"]
# values of the whole run, not of one objective: never prefixed with a role
RUN_LEVEL = {"lr", "grad_norm", "tokens_per_s", "seconds", "warmup", "rollout_tokens_per_s", "train_tokens_per_s"}
RUN_PREFIXES = ("reg/", "aux/", "probe/")
ROLES = ("sft", "preference", "reward", "pretrain", "ppo")
# the default training-curve panels after each role's loss (tags ending so), then run-level ones
DEFAULT_SUFFIXES = ("rewards/accuracy", "rewards/margin", "/accuracy", "reward_mean", "/kl")
DEFAULT_RUN_LEVEL = ("lr", "grad_norm", "tokens_per_s", "reg/penalty", "aux/loss")
TITLES = {"sft/loss": "SFT loss", "preference/loss": "Preference loss", "reward/loss": "Reward-model loss",
          "preference/rewards/accuracy": "Preference: reward accuracy (chosen > rejected)",
          "preference/rewards/margin": "Preference: reward margin", "reward/accuracy": "Reward model: accuracy",
          "lr": "Learning rate", "grad_norm": "Gradient norm (before clipping)", "tokens_per_s": "Throughput",
          "reg/penalty": "Regularizer penalty", "aux/loss": "Auxiliary loss"}
# (tag suffix, y-axis label): first match wins
UNITS = (
    ("sft/loss", "NLL (nats / token)"), ("pretrain/loss", "NLL (nats / token)"), ("aux/loss", "loss (nats)"),
    ("loss", "loss (nats / pair)"), ("nll", "NLL (nats / token)"), ("nll_chosen", "NLL (nats / token)"),
    ("ppl", "perplexity"), ("rewards/accuracy", "fraction of pairs"), ("accuracy", "fraction of pairs"),
    ("rewards/margin", "β · log-ratio margin (nats)"), ("rewards/chosen", "β · log-ratio (nats)"),
    ("rewards/rejected", "β · log-ratio (nats)"), ("margin", "reward margin"), ("_logp", "summed log-prob (nats)"),
    ("lr", "learning rate"), ("grad_norm", "L2 norm"), ("tokens_per_s", "tokens / s"), ("n_tokens", "tokens"),
    ("penalty", "penalty"), ("kl", "KL (nats)"), ("reward_mean", "reward-model score"),
)


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_keys(rows: list[dict]) -> list[str]:
    """Numeric keys present in any row, ``loss``/``lr``/... first, then alphabetical."""
    keys = {k for r in rows for k, v in r.items() if k not in NON_METRIC_KEYS and is_finite_number(v)}
    return [k for k in PREFERRED_ORDER if k in keys] + sorted(keys - set(PREFERRED_ORDER))


def curve_tag(row: dict, key: str) -> str:
    """The curve a row's value belongs to (see the module docstring)."""
    if key in RUN_LEVEL or key.startswith(RUN_PREFIXES) or key.split("/")[0] in ROLES:
        return key
    role = role_of(row)
    return f"{role}/{key}" if role else key


def curves(rows: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{tag: {"train": [(step, value)], "val": [...], "stages": {stage_index: [(step, value)]}}}`` in step order
    (tags in first-seen order); ``stages`` splits the train points by stage, so a curve is not drawn across the
    stages of another objective."""
    out: dict[str, dict] = {}
    for r in rows:
        if not is_finite_number(r.get("step")):
            continue
        split = "val" if r.get("split") == "val" else "train"
        for k, v in r.items():
            if k not in NON_METRIC_KEYS and is_finite_number(v):
                c = out.setdefault(curve_tag(r, k), {"train": [], "val": [], "stages": {}})
                c[split].append((r["step"], v))
                if split == "train":
                    c["stages"].setdefault(r.get("stage_index", 0), []).append((r["step"], v))
    for c in out.values():
        c["train"].sort()
        c["val"].sort()
        c["stages"] = {i: sorted(p) for i, p in c["stages"].items()}
    return out


def _segments(c: dict) -> list[list[tuple[float, float]]]:
    """The train points as runs of consecutive stages (a gap where another objective's stages were)."""
    segs: list[list] = []
    prev = None
    for i in sorted(c.get("stages") or {0: c["train"]}):
        pts = (c.get("stages") or {0: c["train"]})[i]
        if prev is not None and i == prev + 1 and segs:
            segs[-1] += pts
        else:
            segs.append(list(pts))
        prev = i
    return [s for s in segs if s]


def default_tags(series: dict[str, dict]) -> list[str]:
    """The panels a researcher looks at first: each role's loss, preference accuracy/margin, lr, gradient norm,
    throughput, a non-zero regularizer penalty."""
    tags = [t for t in series if t.endswith("/loss") and t.split("/")[0] in ROLES]
    tags = list(dict.fromkeys(tags + [t for suf in DEFAULT_SUFFIXES for t in series if t.endswith(suf)]))
    for t in DEFAULT_RUN_LEVEL:
        pts = series.get(t, {}).get("train", []) + series.get(t, {}).get("val", [])
        if pts and (t != "reg/penalty" or any(v != 0 for _, v in pts)):
            tags.append(t)
    return tags or list(series)


def unit_of(tag: str) -> str:
    return next((u for suf, u in UNITS if tag.endswith(suf)), tag)


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


def mark_stages(ax, spans, label: bool = True) -> None:
    """Dashed vertical lines between stages and, with ``label``, the stage names on a top axis over each stage
    (turned upright when there are many); x ticks are whole steps."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for i, (_, lo, _) in enumerate(spans):
        if i > 0:
            ax.axvline(lo - 0.5, color="0.45", linestyle="--", linewidth=1)
    if label and spans:
        top = ax.secondary_xaxis("top")
        top.set_xticks([(lo + hi) / 2 for _, lo, hi in spans])
        many = len(spans) > 4
        top.set_xticklabels([n for n, _, _ in spans], fontsize=7, color="0.3", rotation=90 if many else 0)
        top.tick_params(length=0, pad=2)


def _panel_grid(n: int, max_cols: int, width: float, height: float):
    """A figure with ``n`` panels in rows of at most ``max_cols`` (unused cells hidden)."""
    ncols = min(max_cols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes


def _xlim(ax, rows) -> None:
    steps = [r["step"] for r in rows if is_finite_number(r.get("step"))]
    if steps:  # every panel spans the whole run, so stage boundaries line up across panels
        ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)


def plot_training_curves(rows: list[dict], out_png: str | Path, metrics: list[str] | None = None,
                         title: str = "Training curves") -> Path | None:
    """One panel per tag (``metrics``: tags or raw keys; default :func:`default_tags`): the train curve as a line,
    validation as dots on a dashed line, x = global optimizer step, stage boundaries marked and named."""
    series = curves(rows)
    if metrics:  # a raw key not used as a tag (e.g. "loss") means that key over every stage
        raw = {k: {"train": sorted((r["step"], r[k]) for r in rows if r.get("split", "train") == "train"
                                   and is_finite_number(r.get("step")) and is_finite_number(r.get(k))),
                   "val": sorted((r["step"], r[k]) for r in rows if r.get("split") == "val"
                                 and is_finite_number(r.get("step")) and is_finite_number(r.get(k))), "stages": {}}
               for k in metrics if k not in series}
        series = {**series, **raw}
    tags = [t for t in (metrics or default_tags(series)) if t in series and (series[t]["train"] or series[t]["val"])]
    if not tags:
        return None
    spans = stage_spans(rows)
    fig, axes = _panel_grid(len(tags), 3, 5.2, 3.6)
    for ax, tag in zip(axes.flat, tags):
        tr, va = series[tag]["train"], series[tag]["val"]
        for j, seg in enumerate(_segments(series[tag])):
            ax.plot([p[0] for p in seg], [p[1] for p in seg], color="tab:blue", linewidth=1.4,
                    marker="o" if len(tr) < 12 else None, markersize=3, label="train" if j == 0 else None)
        if va:
            ax.plot([p[0] for p in va], [p[1] for p in va], color="tab:orange", linestyle="--", linewidth=1.2,
                    marker="o", markersize=5, label="validation")
        _xlim(ax, rows)
        mark_stages(ax, spans)
        ax.set_title(TITLES.get(tag, tag), fontsize=10, pad=18 if len(spans) <= 4 else 48)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit_of(tag))
        ax.grid(alpha=0.3)
        if tag == "lr":
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.1e"))  # no offset text above the axes
        if tr and va:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # keep the suptitle clear of the first row's titles
    return save_figure(fig, out_png)


ENTANGLEMENT_PANELS = (  # (title, y label, [(key, label)]): chosen vs rejected log-probs, then the probe's metrics
    ("log-probs (train batches)", "summed log-prob (nats)", [("chosen_logp", "chosen"), ("rejected_logp", "rejected")]),
    ("log-probs (probe pairs)", "summed log-prob (nats)", [("probe/logp_w", "chosen"), ("probe/logp_l", "rejected")]),
    ("first-order conditions (probe)", "fraction of pairs", [("probe/frac_chosen_falls", "chosen falls"),
                                                              ("probe/frac_rejected_rises", "rejected rises")]),
    ("gradient cosine (probe)", "cosine", [("probe/mean_cosine", "mean"), ("probe/median_cosine", "median")]),
)


def plot_entanglement(rows: list[dict], out_png: str | Path, title: str = "Gradient entanglement") -> Path | None:
    """Chosen and rejected log-probs on shared axes (train rows), and the ``probe/*`` metrics of the training-time
    entanglement probe; one panel per group present, stage boundaries marked. None when no key is present."""
    panels = [(t, unit, [(k, lab) for k, lab in keys if any(is_finite_number(r.get(k)) for r in rows)])
              for t, unit, keys in ENTANGLEMENT_PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    spans = stage_spans(rows)
    fig, axes = _panel_grid(len(panels), 2, 6.0, 3.8)
    for ax, (t, unit, keys) in zip(axes.flat, panels):
        for color, (key, label) in zip(("tab:blue", "tab:orange"), keys):
            segs = _segments(curves([{k: v for k, v in r.items() if k in ("split", "step", "stage_index", key)}
                                     for r in rows if r.get("split", "train") == "train"]).get(key, {"train": []}))
            for j, seg in enumerate(segs):
                ax.plot([p[0] for p in seg], [p[1] for p in seg], color=color, markersize=3,
                        marker="o" if sum(map(len, segs)) < 30 else None, label=label if j == 0 else None)
        _xlim(ax, rows)
        mark_stages(ax, spans)
        ax.set_title(t, fontsize=10, pad=18 if len(spans) <= 4 else 48)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, out_png)


def plot_temperature_sweep(rows: list[dict], out_png: str | Path, title: str = "Temperature sweep") -> Path | None:
    """One panel per metric: mean vs temperature with a ±std band (over the repeats, seeds). Rows are
    ``{"temperature", "mean", "std"}`` plus an optional ``"metric"`` name (default ``"value"``), ``"n"`` and
    ``"method"`` (one line each)."""
    by_metric: dict[str, dict[str, list]] = {}
    for r in rows:
        if not (is_finite_number(r.get("temperature")) and is_finite_number(r.get("mean"))):
            continue
        by_metric.setdefault(str(r.get("metric", "value")), {}).setdefault(str(r.get("method", "")), []).append(r)
    if not by_metric:
        return None
    n = len(by_metric)
    fig, axes = _panel_grid(n, 3, 5.2, 3.8)
    for ax, (metric, lines) in zip(axes.flat, by_metric.items()):
        for method, pts in lines.items():
            pts = sorted(pts, key=lambda r: r["temperature"])
            t = [r["temperature"] for r in pts]
            mu = [r["mean"] for r in pts]
            sd = [r.get("std") or 0.0 for r in pts]
            reps = max((r.get("n") or 1) for r in pts)
            (line,) = ax.plot(t, mu, marker="o", label=(f"{method} " if method else "") + ("mean" if reps > 1 else "(one seed)"))
            if reps > 1:  # one seed: no band (a std of one value is not a spread)
                ax.fill_between(t, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)],
                                color=line.get_color(), alpha=0.2,
                                label=f"{method} ± 1 std ({reps} seeds)" if method else f"± 1 std ({reps} seeds)")
        several = any((r.get("n") or 1) > 1 for pts in lines.values() for r in pts)
        ax.set_title(f"{metric} (mean ± std over seeds)" if several else f"{metric} (one seed)", fontsize=10)
        ax.set_xlabel("sampling temperature (0 = greedy)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
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
            pts = sorted((r["step"], r[key]) for r in rows if r.get("split", "train") == "train"
                         and is_finite_number(r.get(key)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.4, label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit_of(key))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, out_png)
