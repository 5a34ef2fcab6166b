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


def asked_contrasts(contrasts: list[str], metrics: list[str]) -> list[dict]:
    """``--contrast A:B`` flags as questions on ``metrics`` (default: ``pass``)."""
    return [{"a": a, "b": b, "name": "", "metrics": list(metrics) or ["pass"]} for a, b in map(parse_contrast, contrasts)]


def read_questions(path: Path) -> list[dict]:
    """The contrasts of a ``_contrasts.yaml`` file as ``{a, b, name, metrics}`` (a contrast's own ``metrics``, else the
    file's, else ``[pass]``), checked, with one-line errors."""
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"contrasts", "metrics", "frontier", "group_ratios"} if isinstance(raw, dict) else set()
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (keys: contrasts, metrics, frontier, "
                         "group_ratios)")
    items = raw.get("contrasts") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items or not all(
            isinstance(c, dict) and {"a", "b"} <= set(c) <= {"a", "b", "name", "metrics"} for c in items):
        raise ValueError(f"{path}: expected 'contrasts: [{{name, a, b, metrics (optional)}}, ...]' (a and b: row "
                         "names; a minus b)")
    out = []
    for c in items:
        metrics = c.get("metrics", raw.get("metrics", ["pass"]))
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"{path}: 'metrics' must be a non-empty list of names")
        out.append({"a": str(c["a"]), "b": str(c["b"]), "name": str(c.get("name", "")), "metrics": metrics})
    return out


def read_frontier(path: Path) -> dict:
    """The checked ``frontier`` block of a ``_contrasts.yaml`` file (``{}`` when it has none)."""
    import yaml

    from tandem.pipelines.frontier import check_frontier

    raw = yaml.safe_load(path.read_text()) or {}
    return check_frontier(raw.get("frontier") if isinstance(raw, dict) else None, str(path))


def read_group_ratios(path: Path) -> dict:
    """The checked ``group_ratios`` block of a ``_contrasts.yaml`` file (``{}`` when it has none; question (d))."""
    import yaml

    from tandem.pipelines.group_ratios import check_group_ratios

    raw = yaml.safe_load(path.read_text()) or {}
    return check_group_ratios(raw.get("group_ratios") if isinstance(raw, dict) else None, str(path))


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
    return out


def write_contrasts(out_dir: Path, rows: list[dict], questions: list[dict], n_boot: int = 2000,
                    strict: bool = True) -> list[dict]:
    """``OUT/contrasts.json`` and ``OUT/contrasts.md``: every question (``{a, b, name, metrics}``) on each of its
    metrics, Holm-corrected across the questions of one metric; returns the rows. A question naming an arm the table
    lacks is a ``ValueError`` when ``strict`` (a typo), else it is left out and listed as not run yet (a questions
    file on a study run in pieces)."""
    from tandem.report.stats import contrasts, contrasts_markdown

    out_dir = Path(out_dir)
    result, md = [], ["# Paired contrasts (A minus B)\n",
                      "Difference: mean over seeds of the per-seed mean paired difference; 95% CI: hierarchical bootstrap "
                      f"(seeds, then prompts; {n_boot} draws); p: seed-level paired t-test; Holm across each metric's "
                      "contrasts. One seed: n = 1, no interval.\n"]
    arms = {str(r["method"]) for r in rows}
    missing = sorted({q[k] for q in questions for k in ("a", "b")} - arms)
    if missing and strict:
        raise ValueError(f"contrast arm(s) {', '.join(missing)} not found; arms: {', '.join(sorted(arms))}")
    if missing:
        md.append(f"Not run yet (arms {', '.join(missing)}): "
                  + "; ".join(f"{q['a']} - {q['b']}" for q in questions if {q["a"], q["b"]} - arms) + ".\n")
        questions = [q for q in questions if {q["a"], q["b"]} <= arms]
    for metric in dict.fromkeys(m for q in questions for m in q["metrics"]):
        qs = [q for q in questions if metric in q["metrics"]]
        if metric not in PER_PROMPT and not any(metric in r for r in rows):
            raise ValueError(f"no row has metric {metric!r} (per-prompt fields: {', '.join(PER_PROMPT)} from "
                             "eval/per_prompt.jsonl, or a column of table.json)")
        values = arm_values(rows, metric)
        measured = [q for q in qs if q["a"] in values and q["b"] in values]
        rows_m = contrasts(values, [(q["a"], q["b"]) for q in measured], n_boot=n_boot) if measured else []
        rows_m += [{"a": q["a"], "b": q["b"], "diff": None, "ci_low": None, "ci_high": None, "t": None, "p": None,
                    "p_holm": None, "n_seeds": 0, "n_prompts": 0} for q in qs if q not in measured]  # not measured
        for r, q in zip(rows_m, measured + [q for q in qs if q not in measured]):
            r.update(metric=metric, name=q["name"])
        result += rows_m
        md.append(contrasts_markdown(rows_m, metric))
    (out_dir / "contrasts.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "contrasts.md").write_text("\n".join(md))
    return result


def read_table(out_dir: Path) -> list[dict]:
    """The rows of ``OUT/table.json`` (a study's or comparison's)."""
    table = Path(out_dir) / "table.json"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: give the output directory of `tandem study` or `tandem compare`")
    return json.loads(table.read_text())


def parse_with(text: str) -> tuple[str, Path]:
    """``--with NAME=DIR``: another study's rows, named ``NAME/<row>``."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip() or "/" in name or ":" in name:
        raise ValueError(f"--with {text!r}: expected NAME=DIR (NAME without '/' or ':'), e.g. rho0=runs/conflict-rho0")
    return name.strip(), Path(path.strip())


def contrasts_of_table(out_dir: Path, questions: list[dict], n_boot: int = 2000, strict: bool = True,
                       others: dict[str, Path] | None = None) -> list[dict]:
    """:func:`write_contrasts` on ``OUT/table.json`` of a finished (or partly finished) study or comparison, with the
    rows of ``others`` (``{NAME: DIR}``) added as ``NAME/<row>``: contrasts across studies (another dose, another
    learning rate), paired by seed and prompt as within one; the test prompts must be the same for a pairing."""
    rows = read_table(out_dir)
    for name, path in (others or {}).items():
        rows += [{**r, "method": f"{name}/{r['method']}"} for r in read_table(path)]
    return write_contrasts(Path(out_dir), rows, questions, n_boot, strict)
