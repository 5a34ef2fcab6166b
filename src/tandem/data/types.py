"""The example types every reader produces and every encoder consumes.

A prompt is always a list of chat messages (``{"role": ..., "content": ...}``) that ends with a
user turn, so one encoder handles plain prompts, Alpaca, chat data and HH-RLHF transcripts alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Message = dict[str, str]


@dataclass(frozen=True)
class SFTExample:
    prompt: list[Message]
    response: str
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PreferenceExample:
    prompt: list[Message]
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict, compare=False)


def user(text: str) -> list[Message]:
    """A one-turn prompt."""
    return [{"role": "user", "content": text}]
