"""``tandem compare`` at a glance: which way each metric is better, the default axes of the method scatter
(instruction-following quality against preference quality), the scatter itself with arrows toward "better", and
a console table that fits 100 columns (the full table stays in the markdown report)."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

from tandem.io.figures import plt, save_figure

# instruction-following quality, best first: evaluation metrics, then the SFT validation loss every run has
X_CANDIDATES = ("instruction_following", "ifeval", "if_score", "rouge/rougeL", "rougeL", "rouge/rouge1", "rouge1",
                "bartscore/mean", "exact_match/exact_match", "mc_accuracy/acc", "mc_accuracy", "acc", "sft/loss",
                "perplexity/perplexity", "perplexity", "sft/ppl")
# preference quality, best first: judge and reward-model win rates, reward, then DPO validation accuracy / margin
Y_CANDIDATES = ("judge_win_rate/win_rate", "judge_win_rate", "reward_win_rate/win_rate", "reward_win_rate",
                "win_rate", "reward/mean", "reward", "preference/rewards/accuracy", "rewards/accuracy",
                "preference_accuracy", "preference/rewards/margin", "reward/accuracy")
# which side of the trade-off each metric family of `tandem eval` measures: the scatter's defaults come from them
X_FAMILIES = ("instruction_following", "ifeval", "conflict", "exact_match", "rouge", "bartscore", "mc_accuracy",
              "reference_nll", "perplexity", "lm_eval")
Y_FAMILIES = ("judge_win_rate", "reward_win_rate", "reward_fn", "reward", "implicit_reward_accuracy")
LOWER_IS_BETTER = ("loss", "nll", "ppl", "perplexity", "tax", "seconds")
BOOKKEEPING = ("seed", "steps", "seconds")
NEUTRAL = ("budget/", "seed", "steps", "seconds")  # counts and costs: no "better" direction
VALIDATION_ROLES = ("sft", "preference", "pretrain", "ppo", "aux")  # final_val keys: "<role>/<metric>"
COUNT_SUFFIXES = ("/n", "/n_tokens", "/wins", "/losses", "/ties", "/baseline_mean")
SHORT = {"sft/loss": "sft loss", "sft/ppl": "sft ppl", "preference/loss": "pref loss",
         "preference/rewards/accuracy": "pref acc", "preference/rewards/margin": "pref margin",
         "perplexity/perplexity": "ppl", "rouge/rougeL": "ROUGE-L", "rouge/rouge1": "ROUGE-1",
         "judge_win_rate/win_rate": "judge win", "reward_win_rate/win_rate": "RM win", "reward/mean": "reward",
         "bartscore/mean": "BARTScore", "mc_accuracy/acc": "MC acc", "reward/accuracy": "RM acc"}
WIDTH = 100


def lower_is_better(key: str) -> bool:
    return key.split("/")[-1] in LOWER_IS_BETTER or key.endswith("perplexity")


def direction(key: str) -> str:
    """The header arrow: ``↑`` higher is better, ``↓`` lower is better, ``·`` neither (budgets, steps, time)."""
    if key.startswith(NEUTRAL) or key in NEUTRAL:
        return "·"
    return "↓" if lower_is_better(key) else "↑"


def is_eval_metric(key: str) -> bool:
    """A metric of ``tandem eval`` (``rouge/rougeL``, ``reward_win_rate/win_rate``, ``t0.7/reward/mean``), not a
    training-time validation metric (``sft/loss``, ``preference/rewards/accuracy``: a data role's prefix), a budget or
    a count."""
    family = key.split("/")[0]
    if family in VALIDATION_ROLES or (family == "reward" and key.split("/")[-1] in ("loss", "accuracy", "margin")):
        return False  # validation metrics of a role (a reward model's own: reward/loss, reward/accuracy)
    return is_score(key)


def _family_pick(keys: list[str], families: tuple[str, ...], avoid: str | None) -> str | None:
    for fam in families:
        hits = [k for k in keys if k != avoid and (k == fam or k.startswith(fam + "/")) and is_score(k)]
        if hits:
            return min(hits, key=lambda k: (k.count("/"), k.endswith(("/std", "/stderr")), k))
    return None


def is_score(key: str) -> bool:
    """A metric of quality (not a seed, step count, time, budget or sample count)."""
    return key not in BOOKKEEPING and not key.startswith("budget/") and not key.endswith(COUNT_SUFFIXES)


def pick_axes(keys: list[str], x_key: str | None = None, y_key: str | None = None) -> tuple[str | None, str | None]:
    """The scatter's x (instruction following) and y (preference) metrics: the given ones (a missing one is a
    ``ValueError`` listing what there is), else an evaluation metric of each side (:data:`X_CANDIDATES` /
    :data:`Y_CANDIDATES` that are evaluation metrics, then any key of :data:`X_FAMILIES` / :data:`Y_FAMILIES`), else
    the validation candidates, else the first quality metrics (never a count or a budget)."""
    def pick(wanted, candidates, families, avoid):
        if wanted is not None:
            if wanted not in keys:
                raise ValueError(f"metric {wanted!r} is not in table.json (have: {', '.join(keys)})")
            return wanted
        rest = [k for k in keys if is_score(k) and k != avoid and not re.match(r"^t\d", k)]
        evals = [c for c in candidates if c in rest and is_eval_metric(c)]
        return (evals[0] if evals else _family_pick(rest, families, avoid)
                or next((c for c in candidates if c in rest), rest[0] if rest else None))

    x = pick(x_key, X_CANDIDATES, X_FAMILIES, None)
    return x, pick(y_key, Y_CANDIDATES, Y_FAMILIES, x)


def axis_label(key: str, axis: str) -> str:
    """``key`` with which way is better; a lower-is-better axis is drawn reversed, so better is always right / up."""
    arrow = "→" if axis == "x" else "↑"
    how = f"lower is better; axis reversed, better {arrow}" if lower_is_better(key) else f"higher is better {arrow}"
    return f"{role_name(key)}\n{key}  ({how})".strip()


def role_name(key: str) -> str:
    if key in X_CANDIDATES:
        return "instruction following"
    if key in Y_CANDIDATES:
        return "preference"
    return ""


# label positions tried around a point, in points: right-above, right-below, left-above, left-below, further out
LABEL_OFFSETS = ((7, 6), (7, -16), (-7, 6), (-7, -16), (7, 20), (7, -30))


def label_points(fig, ax, pts: list[tuple[str, float, float]], fontsize: int = 9, keep_clear: list | None = None) -> int:
    """Name each point next to it, at the first offset of :data:`LABEL_OFFSETS` where its text lies inside the axes
    and overlaps no label placed before it, no point's marker and nothing in ``keep_clear`` (artists, e.g. the
    "better" arrow); the legend names a point when no place is free: no label is drawn over another. Returns the
    number of labels drawn."""
    fig.canvas.draw()  # fixes the axes limits and the renderer the extents are measured with
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    marker = 6.0 * fig.dpi / 72  # half a marker (8 pt) plus a little, in pixels
    from matplotlib.transforms import Bbox

    placed = [a.get_window_extent(renderer) for a in keep_clear or []]
    for x, y in ((x, y) for _, x, y in pts):
        px, py = ax.transData.transform((x, y))
        placed.append(Bbox.from_extents(px - marker, py - marker, px + marker, py + marker))
    drawn = 0
    for name, x, y in pts:
        for dx, dy in LABEL_OFFSETS:
            t = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                            ha="left" if dx > 0 else "right")
            box = t.get_window_extent(renderer)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(b) for b in placed):
                placed.append(box)
                drawn += 1
                break
            t.remove()
    return drawn


def plot_method_scatter(summary: dict[str, dict], x_key: str, y_key: str, out_png: str | Path,
                        title: str | None = None) -> Path | None:
    """One point per method at the mean of ``x_key`` and ``y_key`` over seeds, with ±std error bars; axis labels
    and an arrow say which way is better. ``summary`` is ``{method: {metric: {"mean", "std", "n"}}}`` (see
    :func:`tandem.report.build.summarize`)."""
    pts = [(m, s[x_key], s[y_key]) for m, s in summary.items() if x_key in s and y_key in s]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(8.6, 5.2))
    cmap = plt.get_cmap("tab10")
    markers = "osD^vP*Xh<>"
    several = any(min(x["n"], y["n"]) > 1 for _, x, y in pts)
    for i, (method, x, y) in enumerate(pts):
        n = min(x["n"], y["n"])
        ax.errorbar(x["mean"], y["mean"], xerr=x["std"] if n > 1 else None, yerr=y["std"] if n > 1 else None,
                    fmt=markers[i % len(markers)], markersize=8, capsize=4, color=cmap(i % 10),
                    label=f"{method} (n={n})" if several else method)
    ax.margins(0.25)
    ax.set_xlabel(axis_label(x_key, "x"))
    ax.set_ylabel(axis_label(y_key, "y"))
    if lower_is_better(x_key):
        ax.invert_xaxis()  # better is always to the right
    if lower_is_better(y_key):
        ax.invert_yaxis()  # and up
    # the "better" arrow inside the axes, in the upper-right corner (better is always right and up); the legend outside
    arrow = ax.annotate("better", xy=(0.975, 0.955), xytext=(0.885, 0.85), xycoords="axes fraction",
                        textcoords="axes fraction", fontsize=9, color="0.35", ha="center", va="center",
                        arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1.5))
    default = ("Instruction following vs preference (mean ± std over seeds)" if several
               else "Instruction following vs preference (one seed)")
    ax.set_title(title or default, fontsize=11)
    ax.grid(alpha=0.3)
    label_points(fig, ax, [(m, x["mean"], y["mean"]) for m, x, y in pts], keep_clear=[arrow])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return save_figure(fig, out_png)


def summarize(table: list[dict], metrics: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """``{method: {metric: {"mean", "std", "n"}}}`` over the rows (seeds) of each method, in first-seen order;
    ``std`` is the sample standard deviation (0 for one seed)."""
    if not isinstance(table, list) or not all(isinstance(r, dict) and "method" in r for r in table):
        raise ValueError("table.json must be a list of objects, each with a 'method' field")
    keys = metrics or sorted({k for r in table for k, v in r.items() if k not in ("method", "seed") and _finite(v)})
    out: dict[str, dict[str, dict]] = {}
    for method in dict.fromkeys(str(r["method"]) for r in table):
        rows = [r for r in table if str(r["method"]) == method]
        out[method] = {}
        for k in keys:
            vals = [float(r[k]) for r in rows if _finite(r.get(k))]
            if vals:
                out[method][k] = {"mean": statistics.fmean(vals), "n": len(vals),
                                  "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
        return f"{v:.2g}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _short(key: str) -> str:
    if key in SHORT:
        return SHORT[key]
    name = key.replace("preference/", "pref ").replace("rewards/", "").replace("/", " ")
    return name if len(name) <= 16 else name[:15] + "…"


def console_table(rows: list[dict], keys: list[str] | None = None, width: int = WIDTH) -> str:
    """Mean ± std per method over seeds, as plain text no wider than ``width``: the scatter's two metrics first,
    then the other quality metrics while they fit; a last line names what was left out (it is in
    ``table.md`` / ``report.md``). Evaluation metrics come first; headers say which way is better (↑ / ↓; ``·``
    for budgets and counts). One seed shows the value alone, several ``mean±std``."""
    summary = summarize(rows)
    seeds = {m: len({r.get("seed") for r in rows if str(r["method"]) == m}) for m in summary}
    have = sorted({k for s in summary.values() for k in s if is_score(k)})
    budgets = sorted({k for s in summary.values() for k in s if k.startswith("budget/")})
    x, y = pick_axes(have)
    evals = [k for k in have if is_eval_metric(k) and not re.match(r"^t\d", k)]  # evaluation metrics first
    known = [c for c in (*X_CANDIDATES, *Y_CANDIDATES) if c in have]
    order = keys or [k for k in dict.fromkeys([x, y, *evals, *known, *[k for k in have if k.endswith("/loss")], *have,
                                               *budgets]) if k]
    cell = {m: {k: f"{_num(s[k]['mean'])}±{s[k]['std']:.2g}" if s[k]["n"] > 1 else _num(s[k]["mean"])
                for k in s} for m, s in summary.items()}
    name_w = min(22, max(len("method"), *(len(m) for m in summary)))
    cols: list[tuple[str, str, int]] = []  # (key, header, width)
    used = name_w + 2 + len("seeds")
    left = []
    for k in order:
        head = f"{_short(k)} {direction(k)}"
        w = max(len(head), *(len(cell[m].get(k, "—")) for m in summary))
        if used + 2 + w <= width:
            cols.append((k, head, w))
            used += 2 + w
        else:
            left.append(k)
    clip = lambda m: m if len(m) <= name_w else m[: name_w - 1] + "…"  # noqa: E731
    lines = ["  ".join([f"{'method':<{name_w}}", "seeds", *(f"{h:>{w}}" for _, h, w in cols)])]
    lines.append("-" * len(lines[0]))
    for m in summary:
        lines.append("  ".join([f"{clip(m):<{name_w}}", f"{seeds[m]:>5}",
                                *(f"{cell[m].get(k, '—'):>{w}}" for k, _, w in cols)]))
    if left:
        more = f"+ {len(left)} more metric{'s' if len(left) > 1 else ''} in table.md / report.md: " + ", ".join(left)
        lines.append(more if len(more) <= width else more[: width - 1] + "…")
    return "\n".join(lines)
