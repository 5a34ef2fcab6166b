"""Data checked against its role, and the messages that say why no example is left.

A *role* is the kind of example a training stage needs (an objective's ``data_kind``):

* ``"sft"``: formats ``prompt_response``, ``alpaca``, ``messages``, ``sharegpt``, ``tldr``; rows with an empty
  response are left out (``empty_response``).
* ``"preference"``: formats ``preference``, ``implicit_preference``, ``sharegpt_preference``, ``hh_rlhf``,
  ``tldr_comparison``; pairs with an empty chosen or
  rejected reply are left out (``empty_chosen`` / ``empty_rejected``), as are pairs with
  ``chosen == rejected`` (``identical``, for every caller).

* ``"prompt"`` (the online objectives ``grpo`` and ``rloo``): format ``prompt_only`` (TRL's prompt-only rows:
  ``prompt`` and any other columns, which reward functions read), and every SFT and preference format (their prompt
  is used, the replies are not).

* ``"unpaired"`` (the ``kto`` objective): format ``unpaired_preference``, TRL's unpaired preference rows
  (``prompt``, ``completion``, ``label``: true for a desirable completion, false for an undesirable one; ``label``
  may be a boolean or, from a CSV file, the text ``true``/``false``). A ``prompt``/``completion`` source whose first
  row carries such a label is read in this format for this role; a later row whose ``label`` is missing or not
  true/false is an error naming it. Rows with an empty completion are left out (``empty_completion``).

A source whose format does not fit the role is refused at its first row, naming the file, the row (and line)
and the fields found. An unpaired (KTO-style) row is refused for the ``sft`` and ``preference`` roles, saying to
train on it with the ``kto`` objective. With a role, a source whose rows are all
left out is an error that says how many rows each filter removed (:func:`all_filtered_message`).
"""

from __future__ import annotations

from typing import Literal

from tandem.data.errors import DataError

Role = Literal["sft", "preference", "unpaired", "prompt"]

SFT_FORMATS = frozenset({"prompt_response", "alpaca", "messages", "sharegpt", "tldr"})
PREFERENCE_FORMATS = frozenset({"preference", "implicit_preference", "sharegpt_preference", "hh_rlhf", "tldr_comparison"})
UNPAIRED_FORMATS = frozenset({"unpaired_preference"})
PROMPT_FORMATS = SFT_FORMATS | PREFERENCE_FORMATS | {"prompt_only"}  # online methods read only the prompt
ROLE_FORMATS: dict[str, frozenset[str]] = {"sft": SFT_FORMATS, "preference": PREFERENCE_FORMATS,
                                          "unpaired": UNPAIRED_FORMATS, "prompt": PROMPT_FORMATS}
ROLE_FIELDS = {
    "sft": "a prompt and one reply (prompt/response, instruction/output, messages, ...)",
    "preference": "a prompt and two replies (prompt/chosen/rejected, HH-RLHF chosen/rejected transcripts, ...)",
    "unpaired": "a prompt, one completion and a true/false label (prompt/completion/label, TRL's unpaired format)",
    "prompt": "a prompt (TRL's prompt-only rows; the prompts of SFT rows and pairs too)",
}
ROLE_USE = {"sft": "data.sft", "preference": "data.preference with a paired objective (dpo, ...)",
            "unpaired": "data.preference with objective kto",
            "prompt": "data.preference with an online objective (grpo, rloo)"}

#: Why a row (loader) or an example (encoder) was left out, in words.
REASONS = {
    "identical": "chosen == rejected",
    "prompt_mismatch": "the rejected transcript does not start with the chosen one's prompt",
    "empty_chosen": "empty chosen reply",
    "empty_rejected": "empty rejected reply",
    "empty_response": "empty response",
    "empty_completion": "empty completion",
    "prompt_not_user_last": "the prompt does not end with a user turn",
    "no_assistant_turn": "no assistant turn",
    "no_assistant_marker": "no '\\n\\nAssistant:' in the transcript",
    "reply_not_one_turn": "after the shared prompt turns, a side is not exactly one assistant turn",
    "not_a_post": "a comparison of a news article, not a Reddit post",
    "over_long": "longer than max_length (overlong: drop)",
    "no_room": "max_length too small for any token of the reply",
    "empty_prompt": "too long and an empty prompt to cut",
}


def where(source: str, row: int, line: int | None) -> str:
    """``"SOURCE: row N"``, plus ``" (line L)"`` when the record's line differs from its row number."""
    return f"{source}: row {row}" + (f" (line {line})" if line is not None and line != row else "")


def check_role(role: str | None) -> None:
    if role is not None and role not in ROLE_FORMATS:
        raise ValueError(f"role must be one of {sorted(ROLE_FORMATS)} or None, got {role!r}")


def check_format_fits(format: str, role: str | None, record: dict, at: str, declared: bool) -> None:
    """Refuse a source whose format cannot feed ``role`` (``at`` names the first row)."""
    if role is None or format in ROLE_FORMATS[role]:
        return
    other = next((r for r, fmts in ROLE_FORMATS.items() if format in fmts), "other")
    how = "declared" if declared else "detected"
    raise DataError(
        f"{at}: the {role} data needs {ROLE_FIELDS[role]}, but the rows are '{format}' ({how}; fields found: "
        f"{sorted(record)}), which is {other} data; give {role} rows here, or use this source as "
        f"{ROLE_USE.get(other, 'data of its kind')}"
    )


def is_unpaired(record: dict) -> bool:
    """A KTO-style unpaired preference row: a completion (or response) with a true/false ``label``, no pair."""
    label = record.get("label")
    is_bool = isinstance(label, bool) or (isinstance(label, str) and label.strip().lower() in ("true", "false"))
    return is_bool and bool({"completion", "response"} & set(record)) and not {"chosen", "rejected"} <= set(record)


def role_format(format: str, role: str | None, record: dict, declared: bool) -> str:
    """The format to read a source in for ``role``: a detected ``prompt_response`` source whose first row is
    unpaired (:func:`is_unpaired`) is ``unpaired_preference`` for the ``unpaired`` role."""
    if role == "unpaired" and not declared and format == "prompt_response" and is_unpaired(record):
        return "unpaired_preference"
    return format


def check_unpaired(record: dict, at: str, role: str | None = None) -> None:
    """Refuse a KTO-style unpaired preference row (one completion with a boolean ``label``) for the ``sft`` and
    ``preference`` roles."""
    if role != "unpaired" and is_unpaired(record):
        raise DataError(
            f"{at}: unpaired preference row (one completion with a true/false 'label', KTO-style; fields found: "
            f"{sorted(record)}): train on it with the kto objective (schedule.method: kto, or "
            "objectives.preference.name: kto), or give paired rows (prompt, chosen, rejected), or keep only the good "
            "completions, without 'label', as SFT data"
        )


def role_skip(example, role: str | None) -> str | None:
    """The role filter that leaves ``example`` out (``empty_response``, ``empty_chosen``, ...) or ``None``."""
    if role == "sft" and not example.response.strip():
        return "empty_response"
    if role == "unpaired" and not example.completion.strip():
        return "empty_completion"
    if role == "preference":
        if not example.chosen.strip():
            return "empty_chosen"
        if not example.rejected.strip():
            return "empty_rejected"
    return None


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason} ({REASONS.get(reason, reason)})" for reason, n in sorted(counts.items()))


def all_filtered_message(source: str, rows: int, skipped: dict[str, int]) -> str:
    """``SOURCE: no usable rows: all N rows were left out: 3 identical (chosen == rejected), ...``."""
    return f"{source}: no usable rows: all {rows} rows were left out: {_counts(skipped)}; fix or replace the data"


def no_usable_message(source: str, report, stats, max_length: int, overlong: str = "truncate") -> str:
    """Why no example of ``source`` is left after loading (``report``: :class:`~tandem.data.formats.LoadReport`)
    and encoding (``stats``: :class:`~tandem.data.encode.EncodeStats`), with the count of each cause and what
    to do. For the engine's 'no usable examples' error."""
    parts = [f"{source}: no usable examples: {report.rows} rows read"]
    if report.skipped:
        parts.append(f"left out by the loader: {_counts(report.skipped)}")
    if stats.total:
        reasons = dict(stats.reasons) or ({"dropped": stats.dropped} if stats.dropped else {})
        parts.append(f"{stats.total} examples encoded with max_length={max_length} (overlong: {overlong}), "
                     f"dropped: {_counts(reasons) or 'none'}")
        if "over_long" in reasons:
            parts.append("raise data.max_length or set data.overlong: truncate")
        elif "no_room" in reasons:
            parts.append("raise data.max_length")
    elif not report.skipped:
        parts.append("no examples")
    return "; ".join(parts)
