"""Detect a record's schema and convert rows into :class:`SFTExample` / :class:`PreferenceExample`.

Formats (``detect_format`` names, with the fields each needs; docs/formats.md has an example of each):

======================= ========================================================== ===========
name                    fields                                                     produces
======================= ========================================================== ===========
``prompt_response``     ``prompt`` (string or messages), ``response`` or            SFT
                        ``completion`` (string, or messages: last assistant turn)
``alpaca``              ``instruction``, optional ``input``, ``output``              SFT
``messages``            ``messages``: chat turns; the last assistant turn is the     SFT
                        response, the turns before it the prompt (system included)
``sharegpt``            ``conversations``: ``{from: human|gpt|system, value}``       SFT
                        turns, read like ``messages``; optional ``system``
``preference``          ``prompt`` (string, messages or an HH transcript),           preference
                        ``chosen``, ``rejected`` (strings, or message lists: last
                        assistant turn) -- TRL's explicit prompt
``implicit_preference`` ``chosen``, ``rejected``: whole conversations sharing the    preference
                        prompt turns (TRL's implicit prompt, conversational)
``sharegpt_preference`` ``conversations`` (the prompt), ``chosen``, ``rejected``     preference
                        (``{from: gpt, value}`` turns or strings)
``hh_rlhf``             ``chosen``, ``rejected``: full ``\\n\\nHuman: ... \\n\\nAssistant: ...`` preference
                        transcripts
``tldr``                ``subreddit``, ``title``, ``post`` (or ``instruction``),     SFT
                        ``summary`` (or ``gold_response``)
``tldr_comparison``     post fields (top level or under ``info``), ``summaries:      preference
                        [a, b]`` (strings or ``{"text": ...}``) or ``summary_0``/
                        ``summary_1``, and ``choice`` (0 or 1)
``unpaired_preference`` ``prompt``, ``completion`` (or ``response``), ``label``      unpaired
                        (true: desirable, false: undesirable) -- TRL's unpaired
                        preference (KTO) format; read for the ``unpaired`` role
``prompt_only``         ``prompt`` (string or messages) and any other columns        prompt
                        (TRL's prompt-only rows: online methods sample the replies)
======================= ========================================================== ===========

Conventions:

* Alpaca: the prompt is ``instruction`` alone, or ``instruction + "\\n\\n" + input`` when ``input`` is non-empty.
* HH-RLHF: the chosen transcript is split at its **last** ``"\\n\\nAssistant:"``; the part up to and including
  the marker is the shared prompt, the rest the chosen response. The rejected transcript must start with the
  same prompt text; its rest is the rejected response (so a rejected response that itself contains an
  ``"\\n\\nAssistant:"`` is kept whole). Responses lose one leading space. The prompt transcript becomes
  chat messages (``Human`` -> ``user``, ``Assistant`` -> ``assistant``; consecutive turns of one role are joined
  with a blank line). Rows whose rejected text does not start with that prompt are skipped (``prompt_mismatch``), as are
  rows with ``chosen == rejected`` (``identical``); both are counted in :class:`LoadReport`.
* Implicit prompt: the longest run of identical leading turns is the prompt; each side must then have exactly
  one assistant turn, else the row is skipped (``reply_not_one_turn``).
* TL;DR: the prompt is ``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"`` as one user turn;
  summaries are stripped of surrounding whitespace (the EOS is added by the encoder). Comparisons of news
  articles (an ``article`` and no post) are skipped (``not_a_post``).
* A prompt must end with a user turn; rows where it does not are skipped (``prompt_not_user_last``), rows of
  the ``messages``/``sharegpt`` formats without an assistant turn are skipped (``no_assistant_turn``).
* A column map (``columns={field: column}``, :mod:`tandem.data.columns`) renames columns before detection.
* The format is detected from the first record unless declared; a row missing a field its format needs is a
  :class:`DataError` naming the source, the 1-based row (and its line when they differ) and the field.
* A preference row may carry a ``margin`` (a number, Llama-2 style; read by the reward objective): kept as
  :attr:`PreferenceExample.margin`; a non-number is a :class:`DataError` naming the row.
* ``role="sft"|"preference"|"unpaired"`` checks the data against the stage that will train on it (see
  :mod:`tandem.data.roles`): a format of the other kind and KTO-style unpaired rows are refused, empty replies
  are left out, and a source with no row left is an error counting each filter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from tandem.data.columns import FIELDS, apply_columns, check_columns
from tandem.data.converters import (  # noqa: F401 - re-exported: tandem.data.formats is the public place
    CONVERTERS,
    HH_ASSISTANT,
    Skip,
    margin_field,
    parse_hh_transcript,
    split_hh,
    tldr_prompt,
)
from tandem.data.errors import DataError
from tandem.data.readers import MAX_RECORD_BYTES, iter_records
from tandem.data.roles import all_filtered_message, check_format_fits, check_role, check_unpaired, role_format, role_skip
from tandem.data.roles import where as _where
from tandem.data.types import PreferenceExample, SFTExample, UnpairedExample



class SourceConfig(Protocol):
    """What :func:`load_source` reads of a data source (``tandem.config.inputs.SourceConfig`` has these fields; data
    sits below config, so it names the fields instead of importing the class)."""

    source: str
    format: str | None
    split: str
    limit: int | None
    skip: int
    columns: dict[str, str] | None
    streaming: bool

FORMATS: dict[str, str] = {
    "prompt_response": "prompt, response|completion",
    "alpaca": "instruction, input (optional), output",
    "messages": "messages",
    "sharegpt": "conversations [{from, value}]",
    "preference": "prompt, chosen, rejected",
    "implicit_preference": "chosen, rejected (whole conversations sharing the prompt turns)",
    "sharegpt_preference": "conversations, chosen, rejected",
    "hh_rlhf": "chosen, rejected (full '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts)",
    "tldr": "subreddit, title, post|instruction, summary|gold_response",
    "tldr_comparison": "subreddit, title, post (or info{...}), summaries [a, b] | summary_0, summary_1, choice",
    "prompt_only": "prompt (string or messages), other columns kept (online methods: GRPO, RLOO)",
    "unpaired_preference": "prompt, completion|response, label (true|false)",
}

_CONTENT_KEYS = FIELDS - {"label"}


@dataclass
class LoadReport:
    """What :func:`load_examples` did: ``rows`` read, ``kept`` examples, ``skipped`` rows per reason."""

    source: str
    format: str
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def _accepted() -> str:
    return "; ".join(f"{k} ({v})" for k, v in FORMATS.items())


def _pair_format(record: dict, keys: set[str]) -> str:
    if replies := sorted(keys & {"response", "completion", "output"}):
        raise DataError(f"ambiguous row: a reply ({', '.join(replies)}) and a preference pair (chosen, rejected) in one "
                        f"record (keys seen: {sorted(keys)}); keep one kind per file, or map your columns "
                        "(data.<role>.columns in the recipe)")
    if "prompt" in keys:
        return "preference"
    if "conversations" in keys:
        return "sharegpt_preference"
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        return "implicit_preference"
    if isinstance(chosen, str) and HH_ASSISTANT in chosen:
        return "hh_rlhf"
    raise DataError(
        f"chosen/rejected without a prompt (keys seen: {sorted(keys)}): give an explicit 'prompt', HH-RLHF "
        "transcripts ('\\n\\nHuman: ... \\n\\nAssistant: ...'), or whole conversations (lists of {role, content}) "
        "that share the prompt turns"
    )


def detect_format(record: dict) -> str:
    """The format name of one record (see the module table); :class:`DataError` for an unknown schema."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if "choice" in keys and ("summaries" in keys or {"summary_0", "summary_1"} <= keys):
        return "tldr_comparison"
    if {"chosen", "rejected"} <= keys:
        return _pair_format(record, keys)
    if {"subreddit", "title"} <= keys and keys & {"post", "instruction"} and keys & {"summary", "gold_response"}:
        return "tldr"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "prompt" in keys and keys & {"response", "completion"}:
        return "prompt_response"
    if "prompt" in keys:
        return "prompt_only"
    if "text" in keys:
        raise DataError(
            f"language-modelling rows (a 'text' field, keys seen: {sorted(keys)}) have no prompt/reply split; give "
            "prompt/completion or messages, or map your columns (data.<role>.columns in the recipe)"
        )
    raise DataError(f"unknown record schema: keys seen {sorted(keys)}; accepted formats: {_accepted()}; "
                    "or map your columns (data.<role>.columns in the recipe)")


def _margin(value, where: str) -> float | None:
    try:
        return margin_field(value)
    except TypeError as e:
        raise DataError(f"{where}: {e} (the pair's margin for the reward model's loss)") from None


def convert(record: dict, format: str, where: str = "record"):
    """One record -> example; raises :class:`Skip` for rows to leave out, :class:`DataError` for bad rows."""
    if format not in CONVERTERS:
        raise DataError(f"unknown format {format!r}; accepted formats: {_accepted()}")
    try:
        return CONVERTERS[format](record)
    except KeyError as e:
        raise DataError(
            f"{where}: format '{format}' needs field {e.args[0]} (keys seen: {sorted(record)}); "
            f"fields of '{format}': {FORMATS[format]}"
        ) from None
    except TypeError as e:
        raise DataError(f"{where}: {e}") from None


def examples_from_rows(rows: Iterable[tuple[dict, int | None]], source: str, format: str | None = None,
                       limit: int | None = None, role: str | None = None, columns: dict[str, str] | None = None,
                       skip: int = 0):
    """Convert ``(record, line)`` rows as they come; returns ``(examples, LoadReport)``.

    ``limit`` caps the number of kept examples (no row after it is read); ``skip`` leaves out the first rows
    (row numbers in messages stay those of the source); ``columns`` renames columns first (see
    :mod:`tandem.data.columns`); ``role`` (``"sft"``/``"preference"``, optional) checks the rows against it.
    Each example's ``meta`` holds ``source``, the 1-based ``row``, the record's other fields (scalars, objects and
    lists: the columns reward functions read) and ``conversational`` (False when the row's ``prompt`` is a string).
    """
    check_role(role)
    cols = check_columns(columns, source)
    declared = format is not None
    if declared and format not in CONVERTERS:
        raise DataError(f"{source}: unknown format {format!r}; accepted formats: {_accepted()}")
    report = LoadReport(source=source, format=format or "")
    out: list = []
    for i, (rec, line) in enumerate(rows, start=1):
        if i <= skip:
            continue
        where = _where(source, i, line)
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
        rec = apply_columns(rec, cols, where, first=report.rows == 0)
        if report.rows == 0:
            if format is None:
                try:
                    format = detect_format(rec)
                except DataError as e:
                    raise DataError(f"{where}: {e}") from None
            format = role_format(format, role, rec, declared)
            report.format = format
            if role is not None:
                check_unpaired(rec, where, role)
                check_format_fits(format, role, rec, where, declared)
        report.rows += 1
        if role is not None:
            check_unpaired(rec, where, role)
        try:
            ex = convert(rec, format, where)
            reason = role_skip(ex, role)
            if reason is not None:
                raise Skip(reason)
            if isinstance(ex, PreferenceExample) and rec.get("margin") is not None:
                ex = replace(ex, margin=_margin(rec["margin"], where))
        except Skip as s:
            report.skipped[s.reason] = report.skipped.get(s.reason, 0) + 1
            continue
        ex.meta.update({k: v for k, v in rec.items()
                        if k not in _CONTENT_KEYS and isinstance(v, (str, int, float, bool, dict, list))})
        ex.meta["conversational"] = not isinstance(rec.get("prompt"), str)  # TRL's standard vs conversational rows
        if isinstance(rec.get("check"), dict):  # a checker as data (tandem conflict make): read by the conflict metric
            ex.meta["check"] = rec["check"]
        ex.meta.update({"source": source, "row": i})
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break  # the next row is not even read
    if report.rows == 0 and (not declared or role is not None):
        raise DataError(f"{source}: no records" + (f" after the first {skip} rows (skip: {skip})" if skip else ""))
    report.kept = len(out)
    if role is not None and not out:
        raise DataError(all_filtered_message(source, report.rows, report.skipped))
    return out, report


def examples_from_records(records, source: str, format: str | None = None, limit: int | None = None,
                          role: str | None = None, lines: list[int] | None = None,
                          columns: dict[str, str] | None = None, skip: int = 0):
    """:func:`examples_from_rows` of a list of records (``lines``: the 1-based line of each, optional)."""
    return examples_from_rows(zip(records, lines or [None] * len(records)), source, format=format, limit=limit,
                              role=role, columns=columns, skip=skip)


def load_examples(
    source: str, format: str | None = None, split: str = "train", limit: int | None = None,
    role: str | None = None, max_record_bytes: int = MAX_RECORD_BYTES, columns: dict[str, str] | None = None,
    streaming: bool = False, skip: int = 0,
) -> tuple[list[SFTExample | PreferenceExample | UnpairedExample], LoadReport]:
    """Read ``source`` row by row (see :func:`tandem.data.readers.iter_records`) and convert its rows.

    ``format`` overrides detection (detection looks at the first row). ``limit`` stops after that many kept
    examples; ``LoadReport.rows`` counts the rows looked at. ``role`` (``"sft"`` or ``"preference"``: the
    objective's ``data_kind``) refuses rows that do not fit it (see the module docstring);
    ``max_record_bytes`` caps one JSON Lines record (or CSV line); ``columns`` maps tandem fields to the
    source's columns; ``streaming`` reads ``datasets`` sources lazily; ``skip`` leaves out the first rows.
    """
    rows = iter_records(source, split=split, max_record_bytes=max_record_bytes, streaming=streaming)
    return examples_from_rows(rows, source, format=format, limit=limit, role=role, columns=columns, skip=skip)


def load_source(src: SourceConfig, role: str | None = None, max_record_bytes: int = MAX_RECORD_BYTES,
                limit: int | None = None) -> tuple[list[SFTExample | PreferenceExample], LoadReport]:
    """:func:`load_examples` of a recipe's data source block (``source``, ``format``, ``split``, ``limit``, ``skip``,
    ``columns``, ``streaming``); ``limit`` overrides the block's."""
    return load_examples(src.source, format=src.format, split=src.split, limit=limit or src.limit, role=role,
                         max_record_bytes=max_record_bytes, columns=src.columns, streaming=src.streaming, skip=src.skip)
