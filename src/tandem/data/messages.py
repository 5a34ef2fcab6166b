"""Small views of a chat prompt (a list of ``{"role", "content"}`` messages)."""

from __future__ import annotations

from tandem.data.types import Message


def prompt_text(messages: list[Message]) -> str:
    """The text a reward function sees as the prompt: the content of the last user turn (else of the last turn)."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else messages[-1]["content"]
