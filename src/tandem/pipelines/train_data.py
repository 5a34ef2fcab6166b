"""The data of a training run: every role's sources read, checked and encoded (before the run directory is created).

Sources come from the recipe's ``data`` block: files, Hub datasets, saved datasets, or rows given as Python objects
(``memory://`` names, :mod:`tandem.data.memory`). Plain text (``format: text``, or ``{"text": ...}`` rows detected)
trains as continued pre-training: an LM loss on every token (``data.sft`` or ``data.pretrain``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass
from pathlib import Path

from tandem.config.recipe import Recipe
from tandem.data import encode_all, train_val_split
from tandem.data.errors import DataError, DataFileNotFound
from tandem.data.formats import load_source
from tandem.data.readers import looks_local
from tandem.data.roles import no_usable_message
from tandem.schedules import get_method

log = logging.getLogger("tandem")


def data_sources(recipe: Recipe, role: str) -> list:
    """The sources (``SourceConfig``) a role trains on, in order: ``data.sft``, ``data.pretrain`` or
    ``data.preference`` (also for reward and PPO), one or a list."""
    key = role if role in ("sft", "pretrain") else "preference"
    srcs = recipe.data.sources(key)
    if not srcs:
        raise ValueError(f"the schedule trains on '{role}' data but the recipe has no data.{key}")
    return srcs


def load_role_features(recipe: Recipe, role: str, tokenizer, encoder=None, data_kind: str | None = None
                       ) -> tuple[list[dict], list[dict], dict]:
    """(train features, validation features, load/encode stats) for a data role; rows are checked against
    ``data_kind`` (the objective's: ``sft`` or ``preference``), default the role's own kind. Several sources are
    read in order and concatenated (each must give usable rows); the validation split is drawn from the whole."""
    kind = data_kind or ("sft" if role in ("sft", "pretrain") else "preference")

    def plain_text(source) -> bool:  # plain text (format: text, or detected); "format: sft" reads SFT examples
        from tandem.data.text import looks_like_text

        return source.format == "text" or (
            kind == "sft" and source.format is None and (role == "pretrain" or looks_like_text(source.source, source.split)))

    def read(source):  # examples of a source -> (features, load report, encode stats)
        if plain_text(source):  # continued pre-training: LM loss on every token
            from tandem.data.text import encode_texts, read_plain_texts

            if kind != "sft":
                raise DataError(f"{source.source}: format text (plain text) trains an LM loss; data.{role} needs "
                                "preference pairs (prompt, chosen, rejected)")
            texts = read_plain_texts(source.source, source.split, source.skip, source.limit)
            feats = encode_texts(tokenizer, texts, recipe.data.max_length)
            return feats, {"kept": len(feats)}, {"format": "text", "rows": len(texts), "kept": len(feats)}
        if source.format == "sft":
            source = source.model_copy(update={"format": None})  # SFT examples, format detected
        examples, report = load_source(source, role=kind, max_record_bytes=int(recipe.data.max_record_mb * 2**20))
        check_prompts(source.source, role, examples)
        if encoder is not None:
            return (*encoder(tokenizer, examples, recipe.data.max_length, recipe.data.overlong), report)
        return (*encode_all(tokenizer, examples, recipe.data.max_length, recipe.data.overlong, loss_on=source.loss_on),
                report)

    srcs, feats, per_source = data_sources(recipe, role), [], []
    for src in srcs:
        f, stats, report = read(src)
        if not f and plain_text(src):
            raise DataError(f"{src.source}: no text to train on (data.{role} plain text: paragraphs, or JSONL with 'text')")
        if not f:
            raise DataError(no_usable_message(src.source, report, stats, recipe.data.max_length, recipe.data.overlong))
        check_content(src.source, role, f, _as_dict(stats), recipe.data.max_truncated, recipe.data.max_length)
        feats += f
        per_source.append({"source": src.source, "load": _as_dict(report), "encode": _as_dict(stats), "rows": len(f)})
    held_out = recipe.data.val.get(kind if role == "reward" else role) if role != "pretrain" else None
    if held_out is not None:  # validation rows from their own source: train on every row of this one
        train, (val, _, _) = feats, read(held_out)
        if not val:
            raise DataError(f"data.val.{kind}: no usable rows in {held_out.source} (all longer than data.max_length "
                            f"{recipe.data.max_length} with overlong: {recipe.data.overlong}?)")
    elif recipe.data.val_size and not all(plain_text(src) for src in srcs):
        train, val = train_val_split(feats, val_size=recipe.data.val_size, seed=recipe.seed)
    else:
        train, val = feats, []
    if len(per_source) == 1:
        info = {k: v for k, v in per_source[0].items() if k != "rows"}
    else:  # counts summed over the sources, each source's own under "sources"
        info = {"source": [p["source"] for p in per_source], "load": _summed([p["load"] for p in per_source]),
                "encode": _summed([p["encode"] for p in per_source]), "sources": per_source}
    info.update({"train": len(train), "val": len(val), **({"val_source": held_out.source} if held_out is not None else {})})
    return train, val, info


def _summed(dicts: list[dict]) -> dict:
    """Numbers summed key by key (nested dicts too) over ``dicts``; other values from the first that has them."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = _summed([out.get(k, {}), v])
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out


def _as_dict(x) -> dict:
    return x if isinstance(x, dict) else asdict(x) if is_dataclass(x) else {"value": str(x)}


def load_data(recipe: Recipe, tok, objectives: dict, log_main: bool = True) -> tuple[dict, dict, dict]:
    """(train, val, info) per role: every data check, run before the run directory is created."""
    method = get_method(recipe.schedule.method)
    train, val, infos = {}, {}, {}
    for role, objective in objectives.items():
        encoder = objective.encode if role == method.ppo_role else None
        train[role], val[role], infos[role] = load_role_features(recipe, role, tok, encoder, objective.data_kind)
        if log_main:
            info, enc = infos[role], infos[role]["encode"]
            log.info("data %s: %s -> %d train / %d val examples (%s truncated, %s dropped as over-long; skipped rows: %s)",
                     role, info["source"], info["train"], info["val"], enc.get("truncated", 0), enc.get("dropped", 0),
                     info["load"].get("skipped", {}))
    check_sizes(recipe, train, infos)
    return train, val, infos


def check_content(source: str, role: str, feats: list[dict], stats: dict, max_truncated: float, max_length: int) -> None:
    """Rows cut to ``data.max_length``: a warning line past half, an error past ``data.max_truncated``."""
    cut, n = int(stats.get("truncated") or 0), len(feats)
    if n and cut / n > max_truncated:
        raise DataError(f"data.{role} {source}: {cut} of {n} rows ({cut / n:.0%}) are longer than data.max_length "
                        f"{max_length} and were cut, more than data.max_truncated {max_truncated:g}; raise "
                        "data.max_length, or set data.overlong: drop")
    if n and cut / n > 0.5:
        log.warning("data.%s %s: %d of %d rows (%.0f%%) are longer than data.max_length %d and were cut (set "
                    "data.max_truncated to make this an error)", role, source, cut, n, 100 * cut / n, max_length)


def _text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "".join(str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in prompt or [])


def check_prompts(source: str, role: str, examples: list) -> None:
    """Refuse a source whose every prompt is empty (the model would learn replies to nothing)."""
    if examples and all(not _text(e.prompt).strip() for e in examples):
        raise DataError(f"data.{role} {source}: all {len(examples)} prompts are empty; give prompts (prompt/response, "
                        "or messages with a user turn), or train plain text as data.pretrain")


def check_sizes(recipe: Recipe, train: dict, infos: dict) -> None:
    """Refuse data smaller than a batch, or than the number of parts a role is split into (before the model loads)."""
    from tandem.schedules import build_stages

    stages = build_stages(recipe.schedule.method, recipe.schedule.parts)
    for role, feats in train.items():
        where = f"data.{role} ({infos[role]['source']})"
        parts = max([s.n_parts for s in stages if s.role == role] or [1])
        if len(feats) < parts:
            raise DataError(f"schedule.parts {parts}: more parts than the {len(feats)} training examples of {where}; "
                            "lower schedule.parts or add data")
        if len(feats) < recipe.batching.batch_size:
            raise DataError(f"batching.batch_size {recipe.batching.batch_size} is larger than the {len(feats)} training "
                            f"examples of {where}; lower batching.batch_size or add data")


def check_source(source: str) -> None:
    """A data source that names a local file must exist and be a file (checked before anything is written): a symlink
    loop or a device is said to be one, not "not found"."""
    from tandem.io.paths import input_problem

    if source and looks_local(source) and (problem := input_problem(source)):
        raise DataError(problem)
    if source and looks_local(source) and not Path(source).expanduser().exists():  # (memory:// is not local)
        raise DataFileNotFound(f"data file not found: {source}")
