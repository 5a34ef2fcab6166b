"""Paired comparisons between the arms of a study or comparison: differences with confidence intervals.

A contrast ``A:B`` asks "how much higher is A than B on this metric?". Each arm has, per seed, one value per prompt
(``eval/per_prompt.jsonl``: the same prompts for every arm) or one value per seed (a table metric). Only seeds that
both arms ran are used (paired by seed), and prompts are paired by their text.

* Difference: the mean over seeds of each seed's mean paired difference.
* 95% CI: hierarchical bootstrap: resample seeds with replacement, then prompts within each resampled seed, and take
  the 2.5 and 97.5 percentiles of the resampled differences (``n_boot`` draws, seeded). A table metric (one value per
  seed) resamples seeds only.
* p: the seed-level paired t-test (the per-seed differences against 0, df = seeds - 1); Holm's step-down correction
  across the contrasts asked together (``p_holm``).
* One seed: the difference alone (``n_seeds`` 1, no CI, no p): one seed says nothing about the spread across seeds.
"""

from __future__ import annotations

import math

import numpy as np


def hierarchical_bootstrap(diffs: list[list[float]], n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of the mean paired difference, resampling seeds then prompts.

    ``diffs[s][p]``: the difference on prompt ``p`` under seed ``s`` (rows may differ in length).
    """
    rng = np.random.default_rng(seed)
    rows = [np.asarray(d, dtype=float) for d in diffs]
    s = len(rows)
    means = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, s, size=s)
        means[b] = np.mean([rows[i][rng.integers(0, len(rows[i]), size=len(rows[i]))].mean() for i in picked])
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def paired_t(seed_diffs: list[float]) -> tuple[float, float]:
    """``(t, two-sided p)`` of the per-seed differences against 0 (needs two or more seeds). Identical non-zero
    differences give ``(inf, 0)``; all zero give ``(0, 1)``."""
    from scipy import stats

    d = np.asarray(seed_diffs, dtype=float)
    if len(d) < 2:
        raise ValueError("a paired t-test needs two or more seeds")
    sd = d.std(ddof=1)
    if sd == 0.0:
        return (0.0, 1.0) if d.mean() == 0.0 else (math.copysign(math.inf, d.mean()), 0.0)
    t = d.mean() / (sd / math.sqrt(len(d)))
    return float(t), float(2.0 * stats.t.sf(abs(t), df=len(d) - 1))


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (``None`` entries are left out and stay ``None``)."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), list(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def contrast(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], n_boot: int = 2000, seed: int = 0) -> dict:
    """A minus B. ``a[seed][prompt] -> value`` (a table metric: one entry per seed, any key). Seeds and prompts that
    only one arm has are left out; ``ValueError`` when nothing pairs."""
    seeds = sorted(set(a) & set(b))
    diffs = []
    for s in seeds:
        keys = [k for k in a[s] if k in b[s]]
        if keys:
            diffs.append([a[s][k] - b[s][k] for k in keys])
    if not diffs:
        raise ValueError("no seed and prompt that both arms have")
    seed_diffs = [float(np.mean(d)) for d in diffs]
    out = {"diff": float(np.mean(seed_diffs)), "n_seeds": len(diffs), "n_prompts": min(len(d) for d in diffs),
           "ci_low": None, "ci_high": None, "t": None, "p": None}
    if len(diffs) >= 2:
        out["ci_low"], out["ci_high"] = hierarchical_bootstrap(diffs, n_boot=n_boot, seed=seed)
        out["t"], out["p"] = paired_t(seed_diffs)
    return out


def contrasts(values: dict[str, dict[int, dict[str, float]]], asked: list[tuple[str, str]], n_boot: int = 2000,
              seed: int = 0) -> list[dict]:
    """Each asked ``(A, B)`` as a row ``{a, b, diff, ci_low, ci_high, t, p, p_holm, n_seeds, n_prompts}``, Holm-corrected
    together. ``values[arm][seed][prompt]``. An arm that is not in ``values`` is a ``ValueError`` naming the arms."""
    missing = sorted({x for pair in asked for x in pair if x not in values})
    if missing:
        raise ValueError(f"contrast arm(s) {', '.join(missing)} not found; arms: {', '.join(sorted(values))}")
    rows = [{"a": a, "b": b, **contrast(values[a], values[b], n_boot=n_boot, seed=seed)} for a, b in asked]
    for r, p in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = p
    return rows


def _fmt(v, spec: str = ".3f") -> str:
    return "" if v is None else format(v, spec)


def contrasts_markdown(rows: list[dict], metric: str) -> str:
    """The contrasts as a markdown table (one seed: the difference with ``n = 1`` and no interval)."""
    lines = [f"| contrast ({metric}) | difference | 95% CI | p (t-test) | p (Holm) | seeds | prompts |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["diff"] is None:
            lines.append(f"| {r['a']} - {r['b']} | not measured | | | | 0 | 0 |")
            continue
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if r["ci_low"] is not None else "n = 1"
        lines.append(f"| {r['a']} - {r['b']} | {r['diff']:+.3f} | {ci} | {_fmt(r['p'], '.3g')} | "
                     f"{_fmt(r['p_holm'], '.3g')} | {r['n_seeds']} | {r['n_prompts']} |")
    return "\n".join(lines) + "\n"
