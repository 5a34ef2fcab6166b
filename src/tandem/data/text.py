"""Plain text as language-modelling features (the pretraining-like corpus of ``rlhf+pt`` / ``ppo+pt``)."""

from __future__ import annotations

IGNORE = -100


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """``{"input_ids", "labels"}`` per non-empty text: BOS (when the tokenizer has one) + tokens, cut at
    ``max_length``, loss on every token after the first."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for t in texts:
        ids = (bos + tokenizer(t, add_special_tokens=False)["input_ids"])[:max_length]
        if len(ids) >= 2:
            out.append({"input_ids": ids, "labels": [IGNORE] + ids[1:]})
    return out


#: fields a plain-text record holds its text in (the first one present).
TEXT_FIELDS = ("text", "content")
#: fields that make a record an SFT or preference example rather than plain text.
_EXAMPLE_FIELDS = {"prompt", "response", "completion", "chosen", "rejected", "messages", "conversations",
                   "instruction", "output"}
PLAIN_SUFFIXES = (".txt", ".md", ".text")


def is_text_record(record: dict) -> bool:
    """A record of plain text (``{"text": ...}``, TRL's language-modelling format), not an SFT/preference example."""
    return isinstance(record.get("text"), str) and not (_EXAMPLE_FIELDS & set(record))


def looks_like_text(source: str, split: str = "train") -> bool:
    """``source`` holds plain text: a ``.txt``/``.md`` file, or records whose first one is plain text. A source that
    cannot be read is left to the reader's own error (False)."""
    from tandem.data.errors import DataError
    from tandem.data.readers import iter_records

    if source.lower().endswith(PLAIN_SUFFIXES):
        return True
    try:
        first = next(iter(iter_records(source, split=split)), None)
    except (DataError, OSError, ValueError):
        return False
    return first is not None and isinstance(first[0], dict) and is_text_record(first[0])


def read_plain_texts(source: str, split: str = "train", skip: int = 0, limit: int | None = None) -> list[str]:
    """The texts of a plain-text source (``format: text``): a ``.txt``/``.md`` file split at blank lines, else
    the records' ``text`` (or ``content``) field; rows without one are a :class:`DataError` naming the row."""
    from pathlib import Path

    from tandem.data.errors import DataError
    from tandem.data.readers import iter_records

    if source.lower().endswith(PLAIN_SUFFIXES):
        texts = [t for t in Path(source).expanduser().read_text(encoding="utf-8").split("\n\n") if t.strip()]
    else:
        texts = []
        for i, (rec, line) in enumerate(iter_records(source, split=split), start=1):
            value = next((rec[k] for k in TEXT_FIELDS if isinstance(rec, dict) and isinstance(rec.get(k), str)), None)
            if value is None:
                where = f"{source}, row {i}" + (f" (line {line})" if line and line != i else "")
                raise DataError(f"{where}: format text needs a 'text' field (a string); found "
                                f"{sorted(rec) if isinstance(rec, dict) else type(rec).__name__}")
            texts.append(value)
    texts = texts[skip:]
    return texts[:limit] if limit else texts
