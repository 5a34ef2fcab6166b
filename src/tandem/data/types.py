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
    margin: float | None = None  # the row's optional ``margin`` (reward models: -log sigmoid(r_c - r_r - margin))


@dataclass(frozen=True)
class UnpairedExample:
    """One completion of a prompt, desirable (``label`` True) or not: TRL's unpaired preference (KTO) row."""

    prompt: list[Message]
    completion: str
    label: bool
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PromptExample:
    """A prompt alone (TRL's prompt-only rows): online methods sample its replies; ``meta`` keeps the other columns."""

    prompt: list[Message]
    meta: dict = field(default_factory=dict, compare=False)


def user(text: str) -> list[Message]:
    """A one-turn prompt."""
    return [{"role": "user", "content": text}]
