"""Detect a record's schema and convert rows into :class:`SFTExample` / :class:`PreferenceExample`.

Formats (``detect_format`` names, with the fields each needs):

=================== ============================================================== ===========
name                fields                                                         produces
=================== ============================================================== ===========
``prompt_response`` ``prompt`` (string or messages), ``response`` (or ``completion``) SFT
``alpaca``          ``instruction``, optional ``input``, ``output``                  SFT
``messages``        ``messages``: chat turns; the last assistant turn is the         SFT
                    response, the turns before it the prompt (system included)
``preference``      ``prompt`` (string, messages or an HH transcript), ``chosen``,   preference
                    ``rejected`` (strings, or message lists: last assistant turn)
``hh_rlhf``         ``chosen``, ``rejected``: full ``\\n\\nHuman: ... \\n\\nAssistant: ...``   preference
                    transcripts
``tldr``            ``subreddit``, ``title``, ``post`` (or ``instruction``),         SFT
                    ``summary`` (or ``gold_response``)
``tldr_comparison`` post fields (top level or under ``info``), ``summaries: [a, b]``   preference
                    (strings or ``{"text": ...}``) or ``summary_0``/``summary_1``,
                    and ``choice`` (0 or 1)
=================== ============================================================== ===========

Conventions:

* Alpaca: the prompt is ``instruction`` alone, or ``instruction + "\\n\\n" + input`` when ``input`` is non-empty.
* HH-RLHF: the chosen transcript is split at its **last** ``"\\n\\nAssistant:"``; the part up to and including
  the marker is the shared prompt, the rest the chosen response. The rejected transcript must start with the
  same prompt text; its rest is the rejected response (so a rejected response that itself contains an
  ``"\\n\\nAssistant:"`` is kept whole). Responses lose one leading space. The prompt transcript becomes
  chat messages (``Human`` -> ``user``, ``Assistant`` -> ``assistant``; consecutive turns of one role are joined
  with a blank line). Rows whose rejected text does not start with that prompt are skipped (``prompt_mismatch``), as are
  rows with ``chosen == rejected`` (``identical``); both are counted in :class:`LoadReport`.
* TL;DR: the prompt is ``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"`` as one user turn;
  summaries are stripped of surrounding whitespace (the EOS is added by the encoder).
* A prompt must end with a user turn; rows where it does not are skipped (``prompt_not_user_last``), rows of
  the ``messages`` format without an assistant turn are skipped (``no_assistant_turn``).
* The format is detected from the first record unless declared; a row missing a field its format needs is a
  :class:`DataError` naming the source, the 1-based row (and its line when they differ) and the field.
* ``role="sft"|"preference"`` checks the data against the stage that will train on it (see
  :mod:`tandem.data.roles`): a format of the other kind and KTO-style unpaired rows are refused, empty replies
  are left out, and a source with no row left is an error counting each filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tandem.data.errors import DataError
from tandem.data.readers import MAX_RECORD_BYTES, read_records_with_lines
from tandem.data.roles import PREFERENCE_FORMATS, SFT_FORMATS, all_filtered_message, check_format_fits, check_role
from tandem.data.roles import check_unpaired, role_skip, where as _where
from tandem.data.types import Message, PreferenceExample, SFTExample, user

FORMATS: dict[str, str] = {
    "prompt_response": "prompt, response",
    "alpaca": "instruction, input (optional), output",
    "messages": "messages",
    "preference": "prompt, chosen, rejected",
    "hh_rlhf": "chosen, rejected (full '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts)",
    "tldr": "subreddit, title, post|instruction, summary|gold_response",
    "tldr_comparison": "subreddit, title, post (or info{...}), summaries [a, b] | summary_0, summary_1, choice",
}

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


class Skip(Exception):
    """A row to leave out; ``reason`` is the key counted in :attr:`LoadReport.skipped`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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


def detect_format(record: dict) -> str:
    """The format name of one record (see the module table); :class:`DataError` for an unknown schema."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if "choice" in keys and ("summaries" in keys or {"summary_0", "summary_1"} <= keys):
        return "tldr_comparison"
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys:
            return "preference"
        if isinstance(record["chosen"], str) and HH_ASSISTANT in record["chosen"]:
            return "hh_rlhf"
    if {"subreddit", "title"} <= keys and keys & {"post", "instruction"} and keys & {"summary", "gold_response"}:
        return "tldr"
    if "messages" in keys:
        return "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "prompt" in keys and keys & {"response", "completion"}:
        return "prompt_response"
    raise DataError(f"unknown record schema: keys seen {sorted(keys)}; accepted formats: {_accepted()}")


# --------------------------------------------------------------------------------------------- helpers


def _need(rec: dict, *names: str):
    """The first of ``names`` present in ``rec`` (aliases), else KeyError naming them."""
    for n in names:
        if n in rec and rec[n] is not None:
            return rec[n]
    raise KeyError(" or ".join(repr(n) for n in names))


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _messages(value, name: str) -> list[Message]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise TypeError(f"field {name!r} must be a list of {{'role', 'content'}} messages")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def _check_prompt(prompt: list[Message]) -> list[Message]:
    if not prompt or prompt[-1]["role"] != "user":
        raise Skip("prompt_not_user_last")
    return prompt


def parse_hh_transcript(text: str) -> list[Message]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` -> user/assistant/user messages.

    The trailing empty assistant turn (the generation slot) is dropped; consecutive turns of one role are
    joined with ``"\\n\\n"``; text before the first marker, if any, is prepended to the first turn.
    """
    parts = _HH_TURN.split(text)
    lead, rest = parts[0], parts[1:]
    msgs: list[Message] = []
    for speaker, content in zip(rest[0::2], rest[1::2]):
        role, content = _ROLE[speaker], content.strip()
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] = (msgs[-1]["content"] + "\n\n" + content).strip()
        else:
            msgs.append({"role": role, "content": content})
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    if lead.strip():
        if msgs:
            msgs[0]["content"] = (lead.strip() + "\n\n" + msgs[0]["content"]).strip()
        else:
            msgs = [{"role": "user", "content": lead.strip()}]
    return msgs


def split_hh(text: str) -> tuple[str, str]:
    """``(prompt_transcript, response)`` split at the last ``"\\n\\nAssistant:"``; one leading space removed."""
    i = text.rfind(HH_ASSISTANT)
    if i < 0:
        raise Skip("no_assistant_marker")
    prompt, response = text[: i + len(HH_ASSISTANT)], text[i + len(HH_ASSISTANT) :]
    return prompt, response[1:] if response.startswith(" ") else response


def _prompt_field(value) -> tuple[list[Message], bool]:
    """A prompt given as a string, messages, or an HH transcript -> (messages, was_hh_transcript)."""
    if isinstance(value, list):
        return _messages(value, "prompt"), False
    text = _text(value, "prompt")
    if text.startswith("\n\nHuman:") and text.rstrip().endswith("Assistant:"):
        return parse_hh_transcript(text), True
    return user(text), False


def _response_field(value, name: str) -> str:
    """A response string, or a message list whose last assistant turn is the response."""
    if isinstance(value, list):
        msgs = _messages(value, name)
        for m in reversed(msgs):
            if m["role"] == "assistant":
                return m["content"]
        raise Skip("no_assistant_turn")
    return _text(value, name)


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def _summary_text(s) -> str:
    if isinstance(s, dict):
        s = _need(s, "text", "summary")
    return _text(s, "summaries").strip()


# ------------------------------------------------------------------------------------------ converters


def _prompt_response(rec: dict) -> SFTExample:
    prompt, _ = _prompt_field(_need(rec, "prompt"))
    return SFTExample(_check_prompt(prompt), _response_field(_need(rec, "response", "completion"), "response"))


def _alpaca(rec: dict) -> SFTExample:
    instruction = _text(_need(rec, "instruction"), "instruction")
    inp = rec.get("input") or ""
    text = f"{instruction}\n\n{_text(inp, 'input')}" if str(inp).strip() else instruction
    return SFTExample(user(text), _text(_need(rec, "output"), "output"))


def _chat(rec: dict) -> SFTExample:
    msgs = _messages(_need(rec, "messages"), "messages")
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise Skip("no_assistant_turn")
    return SFTExample(_check_prompt(msgs[:last]), msgs[last]["content"])


def _preference(rec: dict) -> PreferenceExample:
    prompt, hh = _prompt_field(_need(rec, "prompt"))
    chosen = _response_field(_need(rec, "chosen"), "chosen")
    rejected = _response_field(_need(rec, "rejected"), "rejected")
    if hh:
        chosen = chosen[1:] if chosen.startswith(" ") else chosen
        rejected = rejected[1:] if rejected.startswith(" ") else rejected
    if chosen == rejected:
        raise Skip("identical")
    return PreferenceExample(_check_prompt(prompt), chosen, rejected)


def _hh_rlhf(rec: dict) -> PreferenceExample:
    chosen_full, rejected_full = _text(_need(rec, "chosen"), "chosen"), _text(_need(rec, "rejected"), "rejected")
    if chosen_full == rejected_full:
        raise Skip("identical")
    p_c, chosen = split_hh(chosen_full)
    if not rejected_full.startswith(p_c):
        raise Skip("prompt_mismatch")
    rejected = rejected_full[len(p_c) :]
    rejected = rejected[1:] if rejected.startswith(" ") else rejected
    if chosen == rejected:
        raise Skip("identical")
    return PreferenceExample(_check_prompt(parse_hh_transcript(p_c)), chosen, rejected)


def _post_fields(rec: dict) -> tuple[str, str, str]:
    src = rec["info"] if isinstance(rec.get("info"), dict) else rec
    return (
        _text(_need(src, "subreddit"), "subreddit"),
        _text(_need(src, "title"), "title"),
        _text(_need(src, "post", "instruction"), "post"),
    )


def _tldr(rec: dict) -> SFTExample:
    prompt = tldr_prompt(*_post_fields(rec))
    return SFTExample(user(prompt), _text(_need(rec, "summary", "gold_response"), "summary").strip())


def _tldr_comparison(rec: dict) -> PreferenceExample:
    prompt = tldr_prompt(*_post_fields(rec))
    if "summaries" in rec:
        summaries = rec["summaries"]
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise TypeError("field 'summaries' must be a list of two summaries")
    else:
        summaries = [_need(rec, "summary_0"), _need(rec, "summary_1")]
    a, b = (_summary_text(s) for s in summaries)
    choice = _need(rec, "choice")
    if choice not in (0, 1):
        raise TypeError(f"field 'choice' must be 0 or 1, got {choice!r}")
    chosen, rejected = (a, b) if choice == 0 else (b, a)
    if chosen == rejected:
        raise Skip("identical")
    return PreferenceExample(user(prompt), chosen, rejected)


CONVERTERS = {
    "prompt_response": _prompt_response,
    "alpaca": _alpaca,
    "messages": _chat,
    "preference": _preference,
    "hh_rlhf": _hh_rlhf,
    "tldr": _tldr,
    "tldr_comparison": _tldr_comparison,
}


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


_CONTENT_KEYS = {
    "prompt", "response", "completion", "instruction", "input", "output", "messages", "chosen", "rejected",
    "subreddit", "title", "post", "summary", "gold_response", "summaries", "summary_0", "summary_1", "choice", "info",
}


def examples_from_records(records, source: str, format: str | None = None, limit: int | None = None,
                          role: str | None = None, lines: list[int] | None = None):
    """Convert raw records; returns ``(examples, LoadReport)``. ``limit`` caps the number of kept examples.

    ``role`` (``"sft"``/``"preference"``, optional) checks the rows against it (see the module docstring);
    ``lines`` (the 1-based line of each record, optional) puts lines into error messages. Each example's
    ``meta`` holds ``source``, the 1-based ``row`` and the record's other scalar fields (ids, answers, ...).
    """
    check_role(role)
    declared = format is not None
    if format is None:
        if not records:
            raise DataError(f"{source}: no records")
        try:
            format = detect_format(records[0])
        except DataError as e:
            raise DataError(f"{_where(source, 1, lines[0] if lines else None)}: {e}") from None
    elif format not in CONVERTERS:
        raise DataError(f"{source}: unknown format {format!r}; accepted formats: {_accepted()}")
    if role is not None:
        if not records:
            raise DataError(f"{source}: no records")
        first, at = (records[0] if isinstance(records[0], dict) else {}), _where(source, 1, lines[0] if lines else None)
        check_unpaired(first, at)
        check_format_fits(format, role, first, at, declared)
    report = LoadReport(source=source, format=format)
    out = []
    for i, rec in enumerate(records, start=1):
        if limit is not None and len(out) >= limit:
            break
        report.rows += 1
        where = _where(source, i, lines[i - 1] if lines else None)
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
        if role is not None:
            check_unpaired(rec, where)
        try:
            ex = convert(rec, format, where)
            reason = role_skip(ex, role)
            if reason is not None:
                raise Skip(reason)
        except Skip as s:
            report.skipped[s.reason] = report.skipped.get(s.reason, 0) + 1
            continue
        ex.meta.update({k: v for k, v in rec.items() if k not in _CONTENT_KEYS and isinstance(v, (str, int, float, bool))})
        ex.meta.update({"source": source, "row": i})
        out.append(ex)
    report.kept = len(out)
    if role is not None and not out:
        raise DataError(all_filtered_message(source, report.rows, report.skipped))
    return out, report


def load_examples(
    source: str, format: str | None = None, split: str = "train", limit: int | None = None,
    role: str | None = None, max_record_bytes: int = MAX_RECORD_BYTES,
) -> tuple[list[SFTExample | PreferenceExample], LoadReport]:
    """Read ``source`` (see :func:`tandem.data.readers.read_records`) and convert its rows.

    ``format`` overrides detection (detection looks at the first row). ``limit`` stops after that many kept
    examples; ``LoadReport.rows`` counts the rows looked at. ``role`` (``"sft"`` or ``"preference"``: the
    objective's ``data_kind``) refuses rows that do not fit it (see the module docstring);
    ``max_record_bytes`` caps one JSON Lines record.
    """
    records, lines = read_records_with_lines(source, split=split, max_record_bytes=max_record_bytes)
    return examples_from_records(records, source, format=format, limit=limit, role=role, lines=lines)
