"""``write_report``: a markdown report (with PNG plots) for a run dir or a compare dir.

* **Run dir** (has ``metrics.jsonl``): a stage table (steps, last train/val loss), training curves (one panel
  per metric, stage boundaries marked), chosen vs rejected log-probs and the ``probe/*`` entanglement metrics
  on shared axes when logged, the last logged value of every metric per stage.
* **Compare dir** (has ``table.json``: a list of ``{"method", "seed", metric: value, ...}``): a table of
  ``mean ± std`` per method over seeds (sample std, ``ddof=1``; ``n`` = number of seeds with the metric) and
  a scatter of an instruction-following metric (x) against a preference metric (y), one point per method.
* Either kind: every ``*sweep*.json`` (rows ``{"temperature", "mean", "std", ["metric"], ["method"]}``, as
  written from :func:`tandem.evaluation.metrics.temperature_sweep`) becomes a line plot with a ±std band,
  and every ``results.json`` from :func:`tandem.evaluation.evaluate` found in the dir or one level below is
  listed.

The report is ``out`` (default ``DIR/report.md``); plots go to ``<out stem>_plots/`` next to it and are
linked with relative paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tandem.io.metrics import role_of
from tandem.report import plots as P
from tandem.report.compare import X_CANDIDATES, Y_CANDIDATES, pick_axes, plot_method_scatter, summarize

__all__ = ["X_CANDIDATES", "Y_CANDIDATES", "read_jsonl", "summarize", "write_report", "write_runs_report"]


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (interrupted write) is skipped, any other bad line is an error."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):
                continue
            raise ValueError(f"{path}:{i}: not valid JSON ({e})") from e
    return rows


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if (abs(v) < 1e-3 or abs(v) >= 1e4) and v != 0 else f"{v:.4f}"
    return str(v)


def _rel(path: Path | None, base: Path) -> str | None:
    return None if path is None else str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _last_loss(rows: list[dict], stage: str, split: str):
    """The stage's last logged loss of its own objective (validation rows name it ``<role>/loss``)."""
    for r in reversed(rows):
        if r.get("stage") == stage and r.get("split", "train") == split:
            for key in ("loss", f"{role_of(r)}/loss"):
                if P.is_finite_number(r.get(key)):
                    return r[key]
    return None


def _run_section(d: Path, plots_dir: Path, base: Path) -> list[str]:
    rows = read_jsonl(d / "metrics.jsonl")
    if not rows:
        return ["No rows in `metrics.jsonl` yet.", ""]
    lines = ["## Stages", "", "| # | stage | steps | last train loss | last val loss |", "|---|---|---|---|---|"]
    spans = P.stage_spans(rows)
    for i, (name, lo, hi) in enumerate(spans):
        lines.append(f"| {i} | {name} | {lo}–{hi} | {_fmt(_last_loss(rows, name, 'train'))} | "
                     f"{_fmt(_last_loss(rows, name, 'val'))} |")
    png = P.plot_training_curves(rows, plots_dir / "training_curves.png", title=f"Training curves: {d.name}")
    lines += ["", "## Training curves", ""]
    if png is not None:
        lines += [f"![training curves]({_rel(png, base)})", ""]
    ent = P.plot_entanglement(rows, plots_dir / "entanglement.png", title=f"Chosen vs rejected: {d.name}")
    if ent is not None:
        lines += ["## Chosen vs rejected log-probs and gradient entanglement", "", f"![entanglement]({_rel(ent, base)})", ""]
    keys = P.metric_keys(rows)
    lines += ["## Last logged values per stage", ""]
    for split in ("train", "val"):
        srows = [r for r in rows if r.get("split", "train") == split]
        if not srows:
            continue
        present = [k for k in keys if any(P.is_finite_number(r.get(k)) for r in srows)]
        lines += [f"**{split}**", "", "| stage | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
        for name, _, _ in spans:
            st = [r for r in srows if r.get("stage") == name]
            if st:
                vals = [next((r[k] for r in reversed(st) if P.is_finite_number(r.get(k))), None) for k in present]
                lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in vals) + " |")
        lines.append("")
    return lines


def _compare_section(d: Path, plots_dir: Path, base: Path, x_key: str | None, y_key: str | None) -> list[str]:
    path = d / "table.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    try:
        summary = summarize(table)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    keys = sorted({k for s in summary.values() for k in s})
    several = any(v["n"] > 1 for s in summary.values() for v in s.values())  # one seed: values, no ± 0
    lines = ["## Methods (mean ± std over seeds)" if several else "## Methods (one seed)", "",
             "| method | seeds | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for method, s in summary.items():
        seeds = len({r.get("seed") for r in table if str(r["method"]) == method})
        cells = [("—" if k not in s else f"{_fmt(s[k]['mean'])} ± {_fmt(s[k]['std'])}" if s[k]["n"] > 1
                  else _fmt(s[k]["mean"])) for k in keys]
        lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
    lines.append("")
    x, y = pick_axes(keys, x_key, y_key)
    if x and y:
        png = plot_method_scatter(summary, x, y, plots_dir / "methods_scatter.png")
        if png is not None:
            lines += [f"## {y} vs {x}", "", f"![{y} vs {x}]({_rel(png, base)})", ""]
    return lines


def sweep_files(d: Path) -> list[Path]:
    """``*sweep*.json`` in ``d`` or one level below (``RUN/eval/temperature_sweep.json`` from ``tandem eval``)."""
    return sorted({*d.glob("*sweep*.json"), *d.glob("*/*sweep*.json")})


def _sweep_section(d: Path, plots_dir: Path, base: Path) -> list[str]:
    lines = []
    for f in sweep_files(d):
        try:
            rows = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from e
        if isinstance(rows, dict):
            rows = rows.get("rows", [])
        rel = f.relative_to(d)
        stem = "_".join(rel.with_suffix("").parts)  # eval/temperature_sweep -> eval_temperature_sweep
        png = P.plot_temperature_sweep(rows, plots_dir / f"{stem}.png", title=f"Temperature sweep: {rel}")
        if png is not None:
            lines += [f"## Temperature sweep (`{rel}`)", "", f"![{stem}]({_rel(png, base)})", ""]
    return lines


def _eval_section(d: Path, base: Path) -> list[str]:
    found = sorted([*d.glob("results.json"), *d.glob("*/results.json")])
    if not found:
        return []
    lines = ["## Evaluations", "", "| results | metric | value |", "|---|---|---|"]
    for f in found:
        try:
            res = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        flat: dict = {}

        def walk(prefix, v):
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}/{k}" if prefix else k, x)
            elif P.is_finite_number(v):
                flat[prefix] = v

        walk("", res.get("metrics", {}))
        for k, v in flat.items():
            lines.append(f"| `{_rel(f, base)}` | {k} | {_fmt(v)} |")
    return lines + [""]


def write_report(run_or_compare_dir: str | Path, out: str | Path | None = None, x_key: str | None = None,
                 y_key: str | None = None, title: str | None = None) -> Path:
    """Write the markdown report for a run dir or a compare dir (see the module docstring); returns its path.

    ``x_key`` / ``y_key`` pick the compare scatter's instruction-following and preference metrics (default:
    the first of :data:`X_CANDIDATES` / :data:`Y_CANDIDATES` present, else the first numeric columns)."""
    d = Path(run_or_compare_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory")
    is_run, is_compare = (d / "metrics.jsonl").is_file(), (d / "table.json").is_file()
    sweeps = sweep_files(d)
    if not (is_run or is_compare or sweeps):
        raise FileNotFoundError(f"{d}: neither a run dir (metrics.jsonl) nor a compare dir (table.json), and no *sweep*.json")
    out = Path(out) if out is not None else d / "report.md"
    base = out.parent
    plots_dir = base / f"{out.stem}_plots"
    kind = "Run" if is_run else "Comparison" if is_compare else "Report"
    lines = [f"# {title or f'{kind}: {d.name}'}", "", f"Source: `{d}`", ""]
    if is_run:
        lines += _run_section(d, plots_dir, base)
    if is_compare:
        lines += _compare_section(d, plots_dir, base, x_key, y_key)
    lines += _sweep_section(d, plots_dir, base)
    lines += _eval_section(d, base)
    base.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return out


def write_runs_report(runs: dict[str, str | Path], keys: list[str], out: str | Path, title: str = "Runs compared") -> Path:
    """Markdown with one overlay plot of ``keys`` across ``runs`` ({label: run dir}) and a table of each run's
    first and last value of every key; the PNG goes to ``OUT_plots/runs_overlay.png``."""
    from tandem.report.plots import plot_runs_overlay

    rows = {}
    for name, d in runs.items():
        path = Path(d) / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{d}: not a run dir (no metrics.jsonl)")
        rows[name] = read_jsonl(path)
    out = Path(out)
    png = plot_runs_overlay(rows, keys, out.parent / f"{out.stem}_plots" / "runs_overlay.png", title=title)
    lines = [f"# {title}", "", "| run | " + " | ".join(f"{k} (first → last)" for k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for name, rs in rows.items():
        cells = []
        for k in keys:
            v = [r[k] for r in rs if r.get("split", "train") == "train" and isinstance(r.get(k), (int, float))]
            cells.append(f"{_fmt(v[0])} → {_fmt(v[-1])}" if v else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if png is not None:
        lines += ["", f"![{title}]({_rel(png, out.parent)})"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
