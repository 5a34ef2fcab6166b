"""The column map of a data source: ``columns: {tandem_field: source_column}`` renames a dataset's columns to
the fields tandem reads, before the format is detected.

``{prompt: question, response: answer}`` reads ``question`` as ``prompt`` and ``answer`` as ``response`` (so
the rows become ``prompt_response`` rows). A mapped source column replaces any column that already has the
field's name; the source column itself is not kept under its old name. A target that is not a field of any
format, or a source column missing from the first row, is a :class:`~tandem.data.errors.DataError` naming it;
in later rows a missing (or null) source column leaves the field absent, so the format's own check names it.
"""

from __future__ import annotations

from tandem.data.errors import DataError

#: Every field a format reads (the targets a column map may name).
FIELDS = frozenset({
    "prompt", "response", "completion", "instruction", "input", "output", "messages", "conversations", "system",
    "chosen", "rejected", "subreddit", "title", "post", "summary", "gold_response", "summaries", "summary_0",
    "summary_1", "choice", "info", "label", "margin",
})


def check_columns(columns: dict[str, str] | None, source: str | None = None) -> dict[str, str]:
    """The map itself, checked: every key a field tandem reads, every value a non-empty column name (errors
    start with ``source`` when given)."""
    if not columns:
        return {}
    at = f"{source}: " if source else ""
    bad = sorted(k for k in columns if k not in FIELDS)
    if bad:
        raise DataError(f"{at}column map names {bad}, which no format reads; map your columns to tandem's "
                        f"fields: {', '.join(sorted(FIELDS))}")
    empty = sorted(k for k, v in columns.items() if not isinstance(v, str) or not v)
    if empty:
        raise DataError(f"{at}column map gives no source column for {empty}")
    return dict(columns)


def apply_columns(record: dict, columns: dict[str, str], where: str, first: bool = False) -> dict:
    """``record`` with its columns renamed by the (checked) map; in the ``first`` row a missing source column is
    an error naming it."""
    if not columns:
        return record
    missing = sorted(col for col in columns.values() if col not in record)
    if missing and first:
        raise DataError(f"{where}: column(s) {missing} named in the column map are not in the row "
                        f"(columns: {sorted(record)})")
    out = {k: v for k, v in record.items() if k not in columns.values() and k not in columns}
    out.update({field: record[col] for field, col in columns.items() if col in record})
    return out
