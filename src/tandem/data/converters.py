"""One converter per format: a raw record -> :class:`SFTExample` / :class:`PreferenceExample` /
:class:`UnpairedExample`.

A converter raises :class:`Skip` for a row to leave out (counted by reason in the load report), ``KeyError``
naming a missing field and ``TypeError`` for a field of the wrong shape (both turned into a
:class:`~tandem.data.errors.DataError` naming the row by :func:`tandem.data.formats.convert`). The
conventions of each format are in :mod:`tandem.data.formats` and docs/formats.md.
"""

from __future__ import annotations

import re

from tandem.data.types import Message, PreferenceExample, PromptExample, SFTExample, UnpairedExample, user

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}
#: ShareGPT speaker names (``from``) -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}


class Skip(Exception):
    """A row to leave out; ``reason`` is the key counted in :attr:`LoadReport.skipped`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------- helpers


def need(rec: dict, *names: str):
    """The first of ``names`` present in ``rec`` (aliases), else KeyError naming them."""
    for n in names:
        if n in rec and rec[n] is not None:
            return rec[n]
    raise KeyError(" or ".join(repr(n) for n in names))


def text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def messages(value, name: str) -> list[Message]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise TypeError(f"field {name!r} must be a list of {{'role', 'content'}} messages")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def sharegpt_turns(value, name: str) -> list[Message]:
    """ShareGPT turns (``{"from": "human"|"gpt"|"system", "value": ...}``, or role/content) -> chat messages."""
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise TypeError(f"field {name!r} must be a list of {{'from', 'value'}} turns")
    out = []
    for i, m in enumerate(value):
        if "from" in m and "value" in m:
            speaker, content = str(m["from"]), m["value"]
        elif "role" in m and "content" in m:
            speaker, content = str(m["role"]), m["content"]
        else:
            raise TypeError(f"{name}[{i}] must have 'from' and 'value' (keys seen: {sorted(m)})")
        role = SHAREGPT_ROLES.get(speaker.lower())
        if role is None:
            raise TypeError(f"{name}[{i}]: speaker {speaker!r} is not one tandem trains on "
                            f"(accepted: {', '.join(SHAREGPT_ROLES)})")
        out.append({"role": role, "content": str(content)})
    return out


def with_system(rec: dict, msgs: list[Message]) -> list[Message]:
    """A top-level ``system`` string becomes the first turn (unless the conversation has a system turn)."""
    system = rec.get("system")
    if isinstance(system, str) and system.strip() and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *msgs]
    return msgs


def check_prompt(prompt: list[Message]) -> list[Message]:
    if not prompt or prompt[-1]["role"] != "user":
        raise Skip("prompt_not_user_last")
    return prompt


def parse_hh_transcript(text_: str) -> list[Message]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` -> user/assistant/user messages.

    The trailing empty assistant turn (the generation slot) is dropped; consecutive turns of one role are
    joined with ``"\\n\\n"``; text before the first marker, if any, is prepended to the first turn.
    """
    parts = _HH_TURN.split(text_)
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


def split_hh(text_: str) -> tuple[str, str]:
    """``(prompt_transcript, response)`` split at the last ``"\\n\\nAssistant:"``; one leading space removed."""
    i = text_.rfind(HH_ASSISTANT)
    if i < 0:
        raise Skip("no_assistant_marker")
    prompt, response = text_[: i + len(HH_ASSISTANT)], text_[i + len(HH_ASSISTANT) :]
    return prompt, response[1:] if response.startswith(" ") else response


def prompt_field(value) -> tuple[list[Message], bool]:
    """A prompt given as a string, messages, or an HH transcript -> (messages, was_hh_transcript)."""
    if isinstance(value, list):
        return messages(value, "prompt"), False
    s = text(value, "prompt")
    if s.startswith("\n\nHuman:") and s.rstrip().endswith("Assistant:"):
        return parse_hh_transcript(s), True
    return user(s), False


def response_field(value, name: str) -> str:
    """A response string, or a message list whose last assistant turn is the response."""
    if isinstance(value, list):
        msgs = messages(value, name)
        for m in reversed(msgs):
            if m["role"] == "assistant":
                return m["content"]
        raise Skip("no_assistant_turn")
    return text(value, name)


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def _summary_text(s) -> str:
    if isinstance(s, dict):
        s = need(s, "text", "summary")
    return text(s, "summaries").strip()


def _last_assistant_split(msgs: list[Message]) -> tuple[list[Message], str]:
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise Skip("no_assistant_turn")
    return check_prompt(msgs[:last]), msgs[last]["content"]


# ------------------------------------------------------------------------------------------ converters


def prompt_response(rec: dict) -> SFTExample:
    prompt, _ = prompt_field(need(rec, "prompt"))
    return SFTExample(check_prompt(prompt), response_field(need(rec, "response", "completion"), "response"))


def prompt_only(rec: dict) -> PromptExample:
    prompt, _ = prompt_field(need(rec, "prompt"))
    return PromptExample(check_prompt(prompt))


def alpaca(rec: dict) -> SFTExample:
    instruction = text(need(rec, "instruction"), "instruction")
    inp = rec.get("input") or ""
    body = f"{instruction}\n\n{text(inp, 'input')}" if str(inp).strip() else instruction
    return SFTExample(user(body), text(need(rec, "output"), "output"))


def chat(rec: dict) -> SFTExample:
    return SFTExample(*_last_assistant_split(with_system(rec, messages(need(rec, "messages"), "messages"))))


def sharegpt(rec: dict) -> SFTExample:
    turns = sharegpt_turns(need(rec, "conversations"), "conversations")
    return SFTExample(*_last_assistant_split(with_system(rec, turns)))


def _sharegpt_reply(value, name: str) -> str:
    if isinstance(value, dict):
        return sharegpt_turns([value], name)[0]["content"]
    return response_field(value, name)


def sharegpt_preference(rec: dict) -> PreferenceExample:
    prompt = with_system(rec, sharegpt_turns(need(rec, "conversations"), "conversations"))
    chosen = _sharegpt_reply(need(rec, "chosen"), "chosen")
    rejected = _sharegpt_reply(need(rec, "rejected"), "rejected")
    if chosen == rejected:
        raise Skip("identical")
    return PreferenceExample(check_prompt(prompt), chosen, rejected)


def preference(rec: dict) -> PreferenceExample:
    prompt, hh = prompt_field(need(rec, "prompt"))
    chosen = response_field(need(rec, "chosen"), "chosen")
    rejected = response_field(need(rec, "rejected"), "rejected")
    if hh:
        chosen = chosen[1:] if chosen.startswith(" ") else chosen
        rejected = rejected[1:] if rejected.startswith(" ") else rejected
    if chosen == rejected:
        raise Skip("identical")
    return PreferenceExample(check_prompt(prompt), chosen, rejected)


def implicit_preference(rec: dict) -> PreferenceExample:
    """TRL's implicit prompt: ``chosen`` and ``rejected`` are whole conversations; the turns they share are the
    prompt and what follows must be one assistant turn on each side."""
    chosen = messages(need(rec, "chosen"), "chosen")
    rejected = messages(need(rec, "rejected"), "rejected")
    if chosen == rejected:
        raise Skip("identical")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    rest_c, rest_r = chosen[k:], rejected[k:]
    if len(rest_c) != 1 or len(rest_r) != 1 or rest_c[0]["role"] != "assistant" or rest_r[0]["role"] != "assistant":
        raise Skip("reply_not_one_turn")
    return PreferenceExample(check_prompt(chosen[:k]), rest_c[0]["content"], rest_r[0]["content"])


def hh_rlhf(rec: dict) -> PreferenceExample:
    chosen_full, rejected_full = text(need(rec, "chosen"), "chosen"), text(need(rec, "rejected"), "rejected")
    if chosen_full == rejected_full:
        raise Skip("identical")
    p_c, chosen = split_hh(chosen_full)
    if not rejected_full.startswith(p_c):
        raise Skip("prompt_mismatch")
    rejected = rejected_full[len(p_c) :]
    rejected = rejected[1:] if rejected.startswith(" ") else rejected
    if chosen == rejected:
        raise Skip("identical")
    return PreferenceExample(check_prompt(parse_hh_transcript(p_c)), chosen, rejected)


def _post_fields(rec: dict) -> tuple[str, str, str]:
    src = rec["info"] if isinstance(rec.get("info"), dict) else rec
    if src.get("post") is None and src.get("instruction") is None and src.get("article") is not None:
        raise Skip("not_a_post")  # summarize-from-feedback also compares CNN/DM article summaries
    return (
        text(need(src, "subreddit"), "subreddit"),
        text(need(src, "title"), "title"),
        text(need(src, "post", "instruction"), "post"),
    )


def tldr(rec: dict) -> SFTExample:
    prompt = tldr_prompt(*_post_fields(rec))
    return SFTExample(user(prompt), text(need(rec, "summary", "gold_response"), "summary").strip())


def _choice(value) -> int:
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)  # CSV cells are strings
    if isinstance(value, bool) or value not in (0, 1):
        raise TypeError(f"field 'choice' must be 0 or 1, got {value!r}")
    return int(value)


def _label(value) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # CSV cells are strings
    if not isinstance(value, bool):
        raise TypeError(f"field 'label' must be true or false (desirable or undesirable completion), got {value!r}")
    return value


def unpaired_preference(rec: dict) -> UnpairedExample:
    """TRL's unpaired preference (KTO) row: ``prompt``, ``completion`` (or ``response``), ``label`` true/false."""
    prompt, hh = prompt_field(need(rec, "prompt"))
    completion = response_field(need(rec, "completion", "response"), "completion")
    if hh and completion.startswith(" "):
        completion = completion[1:]
    return UnpairedExample(check_prompt(prompt), completion, _label(need(rec, "label")))


def margin_field(value) -> float | None:
    """A pair's optional ``margin`` (a number; a numeric string from CSV; null: none)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"field 'margin' must be a number, got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise TypeError(f"field 'margin' must be a finite number, got {value!r}")
    return out


def tldr_comparison(rec: dict) -> PreferenceExample:
    prompt = tldr_prompt(*_post_fields(rec))
    if "summaries" in rec:
        summaries = rec["summaries"]
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise TypeError("field 'summaries' must be a list of two summaries")
    else:
        summaries = [need(rec, "summary_0"), need(rec, "summary_1")]
    a, b = (_summary_text(s) for s in summaries)
    chosen, rejected = (a, b) if _choice(need(rec, "choice")) == 0 else (b, a)
    if chosen == rejected:
        raise Skip("identical")
    return PreferenceExample(user(prompt), chosen, rejected)


CONVERTERS = {
    "prompt_response": prompt_response,
    "alpaca": alpaca,
    "messages": chat,
    "sharegpt": sharegpt,
    "preference": preference,
    "implicit_preference": implicit_preference,
    "sharegpt_preference": sharegpt_preference,
    "hh_rlhf": hh_rlhf,
    "tldr": tldr,
    "tldr_comparison": tldr_comparison,
    "unpaired_preference": unpaired_preference,
    "prompt_only": prompt_only,
}
