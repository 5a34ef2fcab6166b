"""TRL's option names in a recipe: aliases of tandem's fields, one log line each.

A recipe (or a ``--set`` flag, or :meth:`tandem.Recipe.set`) may use the names of ``transformers.TrainingArguments``
and TRL's ``SFTConfig`` / ``DPOConfig``: at the top level (``learning_rate: 1e-5``, as in TRL's flat config) or
inside the block of the tandem field (``optimizer: {learning_rate: 1e-5}``). Each alias is rewritten to its
tandem field, and one line says so (``recipe: learning_rate is optimizer.lr``). An alias and its tandem field given
together is an error. The tables are data: a new alias is one line of :data:`ALIASES` (a plain rename) or of
:data:`CONVERTED` (a rename with a value conversion); :data:`NO_EQUIVALENT` lists TRL names tandem refuses, with why.

``per_device_train_batch_size`` is TRL's batch per process; tandem's ``batching.batch_size`` is the global batch of
one optimizer step. It converts to ``per_device_train_batch_size x processes x batching.grad_accum`` (processes:
``WORLD_SIZE``, set by ``accelerate launch``, else 1), and is refused with that formula where the product cannot be
known (``batching.batch_size`` given too, or ``WORLD_SIZE`` not a number).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from tandem.config.yamlsrc import RecipeError, line_of

log = logging.getLogger("tandem")

#: TRL / transformers name -> tandem field (dotted path).
ALIASES: dict[str, str] = {
    "learning_rate": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "adam_epsilon": "optimizer.eps",
    "lr_scheduler_type": "optimizer.scheduler",
    "warmup_ratio": "optimizer.warmup_ratio",
    "warmup_steps": "optimizer.warmup_steps",
    "max_grad_norm": "optimizer.max_grad_norm",
    "num_train_epochs": "schedule.epochs",
    "max_steps": "schedule.max_steps",
    "method": "schedule.method",
    "gradient_accumulation_steps": "batching.grad_accum",
    "logging_steps": "logging.every",
    "eval_steps": "logging.val_every",
    "report_to": "logging.report_to",
    "save_steps": "checkpoint.every",
    "save_total_limit": "checkpoint.keep",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "model_name_or_path": "model.name_or_path",
    "max_length": "data.max_length",
    "max_seq_length": "data.max_length",
    "beta": "objectives.preference.beta",
    "loss_type": "objectives.preference.loss_type",
    "label_smoothing": "objectives.preference.label_smoothing",
    "desirable_weight": "objectives.preference.desirable_weight",
    "undesirable_weight": "objectives.preference.undesirable_weight",
    "run_name": "name",
    "hub_model_id": "hub.repo_id",
    "hub_private_repo": "hub.private",
}


def _flag(field: str, value: str) -> Callable[[Any], tuple[str, Any] | None]:
    """A boolean TRL switch that sets ``field`` to ``value`` when true (false: nothing to set)."""
    return lambda v: (field, value) if v else None


#: TRL name -> function of its value giving (tandem field, value), or None when the value sets nothing.
CONVERTED: dict[str, Callable[[Any], tuple[str, Any] | None]] = {
    "bf16": _flag("precision", "bf16"),
    "fp16": _flag("precision", "fp16"),
    "packing": lambda v: ("batching.mode", "pack" if v else "pad"),
    "adam_beta1": lambda v: ("optimizer.betas.0", v),
    "adam_beta2": lambda v: ("optimizer.betas.1", v),
    "push_to_hub": lambda v: ("hub.push", bool(v)),
}

PER_DEVICE = "per_device_train_batch_size"

#: TRL names with no tandem equivalent, and what to do instead.
NO_EQUIVALENT: dict[str, str] = {
    "per_device_eval_batch_size": "validation uses batching.batch_size",
    "eval_strategy": "validation runs at stage ends and every logging.val_every steps",
    "save_strategy": "checkpoints are written at stage ends and every checkpoint.every steps",
    "logging_dir": "metrics go to OUTPUT_DIR/metrics.jsonl and OUTPUT_DIR/tb/",
    "dataset_text_field": "a plain-text source is read with format: text (data.pretrain or data.sft)",
    "optim": "tandem trains with AdamW (fp32 master weights for bf16: tandem.optim)",
}

#: every TRL name this module knows (for "did you mean" hints).
KNOWN = (*ALIASES, *CONVERTED, PER_DEVICE)


def _get(raw: dict, path: list[str]):
    node = raw
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _set(raw: dict, path: list[str], value: Any, what: str) -> None:
    node = raw
    for p in path[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise RecipeError(f"{what}: {p!r} is not a mapping")
        node = node[p]
    last = path[-1]
    if last.isdigit() and path[-2:-1] == ["betas"]:  # adam_beta1/2 -> one item of optimizer.betas
        node = raw["optimizer"]
        betas = list(node.get("betas") or (0.9, 0.999))
        betas[int(last)] = value
        node["betas"] = betas
        return
    if last in node and node[last] != value:
        raise RecipeError(f"{what} and {'.'.join(path)} are both given ({value!r} and {node[last]!r}); keep one "
                          f"(tandem's name is {'.'.join(path)})")
    node[last] = value


def _target(name: str, value: Any) -> tuple[str | None, Any]:
    if name in ALIASES:
        return ALIASES[name], value
    got = CONVERTED[name](value)
    return (None, None) if got is None else got


def canonical_key(key: str) -> str:
    """The tandem field a ``--set`` key names: ``learning_rate`` -> ``optimizer.lr``, ``optimizer.learning_rate`` ->
    ``optimizer.lr``; other keys unchanged (``per_device_train_batch_size`` is converted later, see the module
    docstring; a converted alias keeps its name here and is converted with the recipe)."""
    parts = key.split(".")
    name, parent = parts[-1], ".".join(parts[:-1])
    if name in ALIASES and (not parent or ALIASES[name].startswith(parent + ".")):
        log.info("--set %s: %s is tandem's %s", key, name, ALIASES[name])
        return ALIASES[name]
    return key


def normalise(raw: dict, where: str = "recipe", moved: dict | None = None, text: str | None = None) -> dict:
    """``raw`` with TRL names rewritten to tandem fields (in place; also returned). ``moved`` (if given) receives
    tandem path -> the alias's own path, so errors can name the line the alias is on (``text``: the YAML)."""
    moved = {} if moved is None else moved
    found = [([], k) for k in list(raw)]
    found += [([block], k) for block, v in list(raw.items()) if isinstance(v, dict) for k in list(v)]
    for parent, name in found:
        if name not in ALIASES and name not in CONVERTED:
            continue
        target = ALIASES.get(name)
        if target is not None and parent and (not target.startswith(parent[0] + ".") or target == f"{parent[0]}.{name}"):
            continue  # a field of its own block (schedule.max_steps), or an alias of another block's field
        container = _get(raw, parent)
        given = container.pop(name)
        dest, value = _target(name, given)
        own = ".".join([*parent, name])
        if dest is None:
            log.info("%s: %s: %r sets nothing (tandem's default stays)", where, own, given)
            continue
        ln = line_of(text, (*parent, name)) if text else None
        _set(raw, dest.split("."), value, f"{where}{f', line {ln}' if ln else ''}: {own}")
        moved[tuple(dest.split("."))] = tuple([*parent, name])
        log.info("%s: %s is tandem's %s", where, own, dest if name in ALIASES else f"{dest}: {value!r} ({name}: {given!r})")
    _per_device(raw, where, moved)
    return raw


def _per_device(raw: dict, where: str, moved: dict) -> None:
    batching = raw.get("batching") if isinstance(raw.get("batching"), dict) else {}
    top, inner = raw.pop(PER_DEVICE, None), batching.pop(PER_DEVICE, None) if batching else None
    if top is None and inner is None:
        return
    value = top if top is not None else inner
    own = PER_DEVICE if top is not None else f"batching.{PER_DEVICE}"
    formula = (f"tandem's batching.batch_size is the global batch of one optimizer step = {PER_DEVICE} x processes "
               "x batching.grad_accum")
    if "batch_size" in batching:
        raise RecipeError(f"{where}: {own} and batching.batch_size are both given; {formula}: keep one")
    try:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        accum = int(batching.get("grad_accum", 1))
        per = int(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: {own}: {value!r} cannot be converted ({formula}, processes from WORLD_SIZE="
                          f"{os.environ.get('WORLD_SIZE')!r}): give batching.batch_size instead") from None
    raw.setdefault("batching", {})["batch_size"] = per * processes * accum
    moved[("batching", "batch_size")] = tuple(own.split("."))
    log.info("%s: %s %d is tandem's batching.batch_size %d (= %d per device x %d process%s x %d grad_accum; "
             "batching.batch_size is the global batch)", where, own, per, per * processes * accum, per, processes,
             "" if processes == 1 else "es", accum)


__all__ = ["ALIASES", "CONVERTED", "KNOWN", "NO_EQUIVALENT", "PER_DEVICE", "canonical_key", "normalise"]
