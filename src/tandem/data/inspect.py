"""``tandem data inspect``: what a source looks like before training on it.

Lengths are measured in tokens when a tokenizer is given (the prompt rendered exactly as the encoder renders
it, responses without EOS), else in whitespace-separated words of the message contents; ``length_unit`` says
which. Percentiles use numpy's linear interpolation.
"""

from __future__ import annotations

import numpy as np

from tandem.data.formats import examples_from_rows
from tandem.data.readers import iter_records
from tandem.data.types import PreferenceExample


def percentiles(values: list[int]) -> dict[str, float]:
    """``{"p50", "p90", "p99", "max"}`` of ``values`` (all zero when empty)."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


def _measure(tokenizer):
    if tokenizer is None:
        return (lambda msgs: sum(len(m["content"].split()) for m in msgs)), (lambda text: len(text.split()))
    from tandem.data.encode import _ids, prompt_ids

    return (lambda msgs: len(prompt_ids(tokenizer, msgs))), (lambda text: len(_ids(tokenizer, text)))


def inspect_source(source: str, tokenizer=None, format: str | None = None, split: str = "train",
                   columns: dict[str, str] | None = None) -> dict:
    """Detected format, row/kept/skipped counts, length percentiles and one sample of ``source`` (rows read one at
    a time; ``columns``: a column map, see :mod:`tandem.data.columns`)."""
    examples, report = examples_from_rows(iter_records(source, split=split), source, format=format, columns=columns)
    prompt_len, text_len = _measure(tokenizer)
    kind = "preference" if examples and isinstance(examples[0], PreferenceExample) else "sft"
    lengths: dict[str, list[int]] = {"prompt": [prompt_len(e.prompt) for e in examples]}
    if kind == "preference":
        lengths["chosen"] = [text_len(e.chosen) for e in examples]
        lengths["rejected"] = [text_len(e.rejected) for e in examples]
    else:
        lengths["response"] = [text_len(e.response) for e in examples]
    sample = None
    if examples:
        e = examples[0]
        sample = {"prompt": e.prompt, **({"chosen": e.chosen, "rejected": e.rejected} if kind == "preference" else {"response": e.response})}
    return {
        "source": source,
        "format": report.format,
        "kind": kind,
        "rows": report.rows,
        "kept": report.kept,
        "skipped": dict(report.skipped),
        "length_unit": "tokens" if tokenizer is not None else "whitespace words",
        "lengths": {k: percentiles(v) for k, v in lengths.items()},
        "sample": sample,
    }


def _short(text: str, n: int = 400) -> str:
    return text if len(text) <= n else text[:n] + " …"


def render_inspection(report: dict):
    """A rich table of an :func:`inspect_source` report (summary, length percentiles, sample)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(str(report["source"])), show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("format", f"{report['format']} ({report['kind']})")
    t.add_row("rows", str(report["rows"]))
    t.add_row("kept", str(report["kept"]))
    skipped = report["skipped"]
    t.add_row("skipped", ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) if skipped else "0")
    unit = report["length_unit"]
    for name, p in report["lengths"].items():
        t.add_row(
            f"{name} length ({unit})",
            f"p50 {p['p50']:.0f} · p90 {p['p90']:.0f} · p99 {p['p99']:.0f} · max {p['max']:.0f}",
        )
    s = report.get("sample")
    if s:
        # Text(): data is shown literally, never parsed as rich markup ("[user]" would vanish)
        t.add_row("sample prompt", Text(_short("\n".join(f"[{m['role']}] {m['content']}" for m in s["prompt"]))))
        for key in ("response", "chosen", "rejected"):
            if key in s:
                t.add_row(f"sample {key}", Text(_short(s[key])))
    return t
