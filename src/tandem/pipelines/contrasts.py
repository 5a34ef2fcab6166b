"""Paired contrasts between the arms of a finished study or comparison (``OUT/table.json``): the differences with
hierarchical-bootstrap CIs, seed-level paired t-tests and Holm's correction of :mod:`tandem.report.stats`.

A metric is either a per-prompt field of each run's ``eval/per_prompt.jsonl`` (the conflict benchmark's ``pass``,
``style``, ``words``: resampled over seeds then prompts) or a numeric column of the table (one value per seed:
resampled over seeds). ``STUDY_DIR/_contrasts.yaml`` (optional) lists the questions a study asks::

    metrics: [pass, style]
    contrasts:
      - {name: "(a) is there a tax?", a: sft-only, b: sequential}
"""

from __future__ import annotations

import json
from pathlib import Path

PER_PROMPT = ("pass", "style", "words")


def parse_contrast(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a.strip() or not b.strip():
        raise ValueError(f"--contrast {text!r}: expected A:B (row names; A minus B), e.g. hbat:sequential")
    return a.strip(), b.strip()


def read_questions(path: Path) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """``(contrasts, their names, metrics)`` of a ``_contrasts.yaml`` file (checked, one-line errors)."""
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    items = raw.get("contrasts") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(c, dict) and {"a", "b"} <= set(c) for c in items):
        raise ValueError(f"{path}: expected 'contrasts: [{{name, a, b}}, ...]' (a and b: row names; a minus b)")
    metrics = raw.get("metrics", ["pass"])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ValueError(f"{path}: 'metrics' must be a list of names")
    return [(str(c["a"]), str(c["b"])) for c in items], [str(c.get("name", "")) for c in items], metrics


def arm_values(rows: list[dict], metric: str) -> dict[str, dict[int, dict[str, float]]]:
    """``values[arm][seed][prompt or '']`` of ``metric`` for every row of a table."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for row in rows:
        arm, seed = str(row["method"]), int(row.get("seed", 0))
        if metric in PER_PROMPT:
            path = Path(row.get("run", "")) / "eval" / "per_prompt.jsonl"
            if not path.is_file():
                continue  # a row without per-prompt verdicts (e.g. no conflict metric)
            vals = {}
            for line in path.read_text().splitlines():
                r = json.loads(line)
                vals[r["prompt"]] = float(r[metric])
        elif isinstance(row.get(metric), (int, float)):
            vals = {"": float(row[metric])}
        else:
            continue
        out.setdefault(arm, {})[seed] = vals
    if not out:
        raise ValueError(f"no row has metric {metric!r} (per-prompt fields: {', '.join(PER_PROMPT)} from "
                         "eval/per_prompt.jsonl, or a column of table.json)")
    return out


def write_contrasts(out_dir: Path, rows: list[dict], asked: list[tuple[str, str]], metrics: list[str],
                    names: list[str] | None = None, n_boot: int = 2000) -> list[dict]:
    """``OUT/contrasts.json`` and ``OUT/contrasts.md``: every asked contrast on every metric (Holm across the
    contrasts of one metric); returns the rows."""
    from tandem.report.stats import contrasts, contrasts_markdown

    out_dir = Path(out_dir)
    result, md = [], ["# Paired contrasts (A minus B)\n",
                      "Difference: mean over seeds of the per-seed mean paired difference; 95% CI: hierarchical bootstrap "
                      f"(seeds, then prompts; {n_boot} draws); p: seed-level paired t-test; Holm across each metric's "
                      "contrasts. One seed: n = 1, no interval.\n"]
    for metric in metrics:
        rows_m = contrasts(arm_values(rows, metric), asked, n_boot=n_boot)
        for r, name in zip(rows_m, names or [""] * len(rows_m)):
            r.update(metric=metric, name=name)
        result += rows_m
        md.append(contrasts_markdown(rows_m, metric))
    (out_dir / "contrasts.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "contrasts.md").write_text("\n".join(md))
    return result


def contrasts_of_table(out_dir: Path, asked: list[tuple[str, str]], metrics: list[str], names: list[str] | None = None,
                       n_boot: int = 2000) -> list[dict]:
    """:func:`write_contrasts` on ``OUT/table.json`` of a finished (or partly finished) study or comparison."""
    table = Path(out_dir) / "table.json"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: give the output directory of `tandem study` or `tandem compare`")
    return write_contrasts(Path(out_dir), json.loads(table.read_text()), asked, metrics, names, n_boot)
