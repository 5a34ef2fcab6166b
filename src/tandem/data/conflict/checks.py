"""The conflict benchmark's checkers, as data: ``{"kind": ..., "args": {...}}`` -> pass or fail of one reply.

Kinds:

* ``answer`` (``args.answer``): the answer the reply commits to equals ``answer`` exactly (case kept). Closing lines
  (a line that is only "Done" or "Happy to help", with any punctuation or case) are set aside first; of what
  remains, the committed answer is the text after the last "answer is" of the last line when there is one, else all
  of it; surrounding whitespace, quotes and a final ``.`` or ``!`` are dropped. So ``68``, ``68.``, ``68\nDone.``,
  ``68\nHappy to help!`` and ``The answer is 68.`` pass for 68; ``67\nHappy to help!``, ``68 Happy to help!`` and
  ``68\nHappy to help!\nHappy to`` (cut at the token limit) fail.
* ``max_words`` (``args.n``): at most ``n`` whitespace-separated words.
* ``lowercase``: at least one letter and no upper-case letter.
* ``prefix`` (``args.prefix``): the reply, left-stripped, starts with ``prefix``.

The preferred style of the benchmark's labeller is "friendly": a reply is in that style when it contains
:data:`STYLE_MARK` (case-insensitive). The benchmark's replies end with a closing line of their own, plain ("Done.")
or friendly ("Happy to help!"), which every checker accepts (``max_words`` counts its words, ``lowercase`` asks it in
lower case).
"""

from __future__ import annotations

import re

STYLE_MARK = "happy to help"
KINDS = ("answer", "max_words", "lowercase", "prefix")
_ANSWER_IS = re.compile(r"answer is\s*:?", re.IGNORECASE)
_CLOSING = re.compile(r"[\W_]*(happy to help|done)[\W_]*", re.IGNORECASE)


class CheckError(ValueError):
    """A checker that is not one of :data:`KINDS` or lacks its arguments."""


def body(reply: str) -> list[str]:
    """The reply's non-empty lines, stripped, without its closing lines ("Done.", "Happy to help!")."""
    return [ln.strip() for ln in reply.strip().splitlines() if ln.strip() and not _CLOSING.fullmatch(ln.strip())]


def committed_answer(reply: str) -> str:
    lines = body(reply)
    last = lines[-1] if lines else ""
    parts = _ANSWER_IS.split(last)
    text = parts[-1] if len(parts) > 1 else "\n".join(lines)
    text = text.strip().strip("\"'`").strip()
    while text and text[-1] in ".!":
        text = text[:-1].rstrip()
    return text.strip("\"'`")


def passes(check: dict, reply: str) -> bool:
    """Whether ``reply`` passes ``check`` (``CheckError`` for an unknown kind or missing argument)."""
    if not isinstance(check, dict) or check.get("kind") not in KINDS:
        raise CheckError(f"unknown check {check!r}; kinds: {', '.join(KINDS)}")
    args = check.get("args") or {}
    try:
        kind = check["kind"]
        if kind == "answer":
            return committed_answer(reply) == str(args["answer"])
        if kind == "max_words":
            return len(reply.split()) <= int(args["n"])
        if kind == "lowercase":
            return any(c.isalpha() for c in reply) and reply == reply.lower()
        return reply.lstrip().startswith(str(args["prefix"]))
    except KeyError as e:
        raise CheckError(f"check {check!r} lacks its argument {e.args[0]!r}") from None


def friendly(reply: str) -> bool:
    """The labeller's preferred style: the reply contains "happy to help"."""
    return STYLE_MARK in reply.lower()


def score(rows: list[dict], replies: list[str]) -> dict:
    """Pass rate, preferred-style rate and mean reply length (words) of ``replies`` to ``rows`` (each with
    ``check`` and ``family``), overall and per family; ``per_prompt`` lists each row's verdicts in order."""
    if len(rows) != len(replies):
        raise ValueError(f"{len(rows)} rows but {len(replies)} replies")
    per_prompt = [{"prompt": r["prompt"], "family": r["family"], "reply": y, "pass": passes(r["check"], y),
                   "style": friendly(y), "words": len(y.split())} for r, y in zip(rows, replies)]
    return {**summarise(per_prompt), "per_prompt": per_prompt}


def summarise(per_prompt: list[dict]) -> dict:
    def rates(items: list[dict]) -> dict:
        n = len(items)
        return {"pass_rate": sum(p["pass"] for p in items) / n, "style_rate": sum(p["style"] for p in items) / n,
                "mean_words": sum(p["words"] for p in items) / n, "n": n}

    families = sorted({p["family"] for p in per_prompt})
    return {**rates(per_prompt), "per_family": {f: rates([p for p in per_prompt if p["family"] == f]) for f in families}}
