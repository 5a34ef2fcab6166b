"""The conflict benchmark's files read back: scoring a file of replies against its checkers."""

from __future__ import annotations

from pathlib import Path


def prompt_of(row: dict, where: str) -> str:
    """A row's prompt as text: a string, or the last user message of a message list (generations.jsonl)."""
    p = row.get("prompt")
    if isinstance(p, list) and p and isinstance(p[-1], dict):
        p = p[-1].get("content")
    if not isinstance(p, str):
        raise ValueError(f"{where}: no 'prompt' (a string or a list of chat messages)")
    return p


def read_benchmark_rows(path: str | Path) -> list[dict]:
    """Evaluation rows (``prompt``, ``family``, ``check``) of a ``tandem conflict make`` file, checked."""
    from tandem.data.conflict.checks import KINDS
    from tandem.data.readers import read_records

    rows = read_records(str(path))
    for i, r in enumerate(rows, start=1):
        check = r.get("check")
        if not isinstance(check, dict) or check.get("kind") not in KINDS or not isinstance(r.get("family"), str):
            raise ValueError(f"{path}: row {i} needs 'family' and 'check' ({{kind, args}}, kind one of "
                             f"{', '.join(KINDS)}): is this a file of `tandem conflict make`?")
        r["prompt"] = prompt_of(r, f"{path}: row {i}")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def score_files(test: str | Path, replies: str | Path) -> dict:
    """Scores of the replies in ``replies`` (rows ``{prompt, reply}`` or ``{prompt, output}``) to the rows of
    ``test``, joined on the prompt; every test prompt needs exactly one reply."""
    from tandem.data.conflict import score
    from tandem.data.readers import read_records

    rows = read_benchmark_rows(test)
    by_prompt: dict[str, str] = {}
    for i, r in enumerate(read_records(str(replies)), start=1):
        where = f"{replies}: row {i}"
        reply = r.get("reply", r.get("output"))
        if not isinstance(reply, str):
            raise ValueError(f"{where}: needs 'reply' (or 'output') as a string")
        p = prompt_of(r, where)
        if p in by_prompt:
            raise ValueError(f"{where}: a second reply to the prompt {p[:60]!r}")
        by_prompt[p] = reply
    missing = [r["prompt"] for r in rows if r["prompt"] not in by_prompt]
    if missing:
        raise ValueError(f"{replies}: no reply to {len(missing)} of the {len(rows)} prompts of {test} (first: "
                         f"{missing[0][:60]!r}); give one reply per prompt")
    return score(rows, [by_prompt[r["prompt"]] for r in rows])
