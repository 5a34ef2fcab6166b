"""Prompt rows of the online objectives (PPO, GRPO, RLOO): token ids of each distinct prompt, cut to the room left
for the completion."""

from __future__ import annotations

from tandem.data.encode import prompt_ids as render_prompt_ids

BOOKKEEPING = ("source", "row", "conversational")


def encode_prompts(tokenizer, examples, room: int, overlong: str, columns: bool) -> tuple[list[dict], dict]:
    """``({"prompt_ids", "prompt"[, "columns", "conversational"]} per distinct row, stats)``. A prompt keeps its last
    ``room`` tokens (``overlong: drop`` drops longer ones). With ``columns`` each row carries its other columns (what
    reward functions read, as in TRL) and rows are distinct by prompt and columns; else by prompt."""
    seen, feats = set(), []
    stats = {"total": 0, "kept": 0, "truncated": 0, "dropped": 0, "duplicates": 0}
    for ex in examples:
        stats["total"] += 1
        ids = render_prompt_ids(tokenizer, ex.prompt)
        cols = {k: v for k, v in ex.meta.items() if k not in BOOKKEEPING} if columns else {}
        key = (tuple(ids), repr(sorted(cols.items())))
        if key in seen:
            stats["duplicates"] += 1
            continue
        seen.add(key)
        if len(ids) > room:
            if overlong == "drop":
                stats["dropped"] += 1
                continue
            ids, stats["truncated"] = ids[-room:], stats["truncated"] + 1
        feat = {"prompt_ids": list(ids), "prompt": ex.prompt}
        if columns:
            feat.update(columns=cols, conversational=bool(ex.meta.get("conversational", True)))
        feats.append(feat)
    stats["kept"] = len(feats)
    return feats, stats
