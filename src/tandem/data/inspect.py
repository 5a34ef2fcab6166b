"""``tandem data inspect``: what a source looks like before training on it.

Lengths are measured in tokens when a tokenizer is given (the prompt rendered exactly as the encoder renders
it, responses without EOS), else in whitespace-separated words of the message contents; ``length_unit`` says
which. Percentiles use numpy's linear interpolation.
"""

from __future__ import annotations

import numpy as np

from tandem.data.formats import examples_from_rows
from tandem.data.readers import iter_records
from tandem.data.types import PreferenceExample, UnpairedExample


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


def parse_columns(text: str | None) -> dict[str, str] | None:
    """``--columns prompt=question,response=answer`` (or the JSON object a recipe's ``columns`` holds) as a map."""
    import json

    from tandem.data.columns import check_columns
    from tandem.data.errors import DataError

    if not text:
        return None
    if text.strip().startswith("{"):
        try:
            cols = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"--columns {text!r}: not valid JSON ({e.msg})") from None
    else:
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
            raise DataError(f"--columns {text!r}: expected field=column pairs, e.g. prompt=question,response=answer")
        cols = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(cols, dict) or not all(isinstance(v, str) for v in cols.values()):
        raise DataError(f"--columns {text!r}: expected a map of tandem field -> column name")
    check_columns(cols)
    return cols


def _inspect_text(source: str, tokenizer, split: str) -> dict:
    from tandem.data.text import read_plain_texts

    texts = read_plain_texts(source, split)
    _, text_len = _measure(tokenizer)
    return {"source": source, "format": "text", "kind": "text (continued pre-training: data.pretrain, or data.sft "
            "with format: text)", "rows": len(texts), "kept": sum(1 for t in texts if t.strip()), "skipped": {},
            "length_unit": "tokens" if tokenizer is not None else "whitespace words",
            "lengths": {"text": percentiles([text_len(t) for t in texts])},
            "sample": {"text": texts[0]} if texts else None}


def inspect_source(source: str, tokenizer=None, format: str | None = None, split: str = "train",
                   columns: dict[str, str] | None = None, role: str | None = None) -> dict:
    """Detected format, row/kept/skipped counts, length percentiles and one sample of ``source`` (rows read one at
    a time; ``columns``: a column map, see :mod:`tandem.data.columns`; ``role``: ``sft``, ``preference`` or
    ``pretrain``, the rows checked as a stage of that role checks them, with the same errors). Plain text
    (``format: text``, ``{"text": ...}`` rows, a ``.txt`` file) is reported as such."""
    from tandem.data.text import looks_like_text

    if role not in (None, "sft", "preference", "unpaired", "pretrain"):
        from tandem.data.errors import DataError

        raise DataError(f"--role {role!r}: choose sft, preference, unpaired (kto) or pretrain")
    if format == "text" or (format is None and not columns and (role == "pretrain" or looks_like_text(source, split))):
        if role == "preference":
            from tandem.data.errors import DataError

            raise DataError(f"{source}: plain text (format text) cannot train the preference role: it needs "
                            "prompt, chosen and rejected")
        return _inspect_text(source, tokenizer, split)
    check = None if role is None else "sft" if role == "pretrain" else role
    examples, report = examples_from_rows(iter_records(source, split=split), source, format=format, columns=columns,
                                          role=check)
    prompt_len, text_len = _measure(tokenizer)
    kind = "preference" if examples and isinstance(examples[0], PreferenceExample) else "sft"
    if examples and isinstance(examples[0], UnpairedExample):
        return _unpaired_report(source, report, examples, tokenizer, prompt_len, text_len)
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


def _unpaired_report(source, report, examples, tokenizer, prompt_len, text_len) -> dict:
    """:func:`inspect_source`'s report of unpaired (KTO) rows: lengths, the desirable count, one sample."""
    e = examples[0]
    return {"source": source, "format": report.format, "kind": "unpaired", "rows": report.rows, "kept": report.kept,
            "skipped": dict(report.skipped), "desirable": sum(1 for x in examples if x.label),
            "length_unit": "tokens" if tokenizer is not None else "whitespace words",
            "lengths": {"prompt": percentiles([prompt_len(x.prompt) for x in examples]),
                        "completion": percentiles([text_len(x.completion) for x in examples])},
            "sample": {"prompt": e.prompt, "completion": e.completion, "label": e.label}}


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
    if s and "text" in s:
        t.add_row("sample text", Text(_short(s["text"])))
    elif s:
        # Text(): data is shown literally, never parsed as rich markup ("[user]" would vanish)
        t.add_row("sample prompt", Text(_short("\n".join(f"[{m['role']}] {m['content']}" for m in s["prompt"]))))
        for key in ("response", "chosen", "rejected", "completion"):
            if key in s:
                t.add_row(f"sample {key}", Text(_short(s[key])))
        if "label" in s:
            t.add_row("sample label", f"{str(s['label']).lower()} ({report['desirable']} of {report['kept']} desirable)")
    return t
