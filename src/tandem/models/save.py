"""Save models so that plain transformers / peft ``from_pretrained`` loads them (safetensors only), with a model card.

* Full models: weights + ``config.json`` (``pad_token_id`` filled from the tokenizer when missing) + tokenizer.
* LoRA (peft) causal LMs: the adapter; its ``base_model_name_or_path`` is a Hub id or an **absolute** path (a path
  relative to where the command ran would break as soon as the folder is used from elsewhere).
* LoRA reward models (peft ``SEQ_CLS``): the adapter *and* the base sequence classifier (``config.json`` with
  ``num_labels=1`` and ``pad_token_id``, the backbone and the initial score head) in the same folder, the
  adapter's base being the folder itself. ``AutoModelForSequenceClassification.from_pretrained(final)`` and
  ``AutoPeftModelForSequenceClassification.from_pretrained(final)`` then load the trained reward model with no
  extra argument and no "newly initialized score.weight" warning (the trained head is in ``modules_to_save``).
* ``README.md``: a model card (:mod:`tandem.models.card`).

Everything is written atomically (the folder appears complete or not at all).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tandem.models.atomic import atomic_dir
from tandem.models.card import CardInfo, render_card


def portable_base(name_or_path: str | None) -> str | None:
    """A base model reference that works from any cwd: an existing local path made absolute, anything else (a Hub
    id) unchanged."""
    if not name_or_path:
        return name_or_path
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if p.exists() else name_or_path


def _saved_as_seq_cls(model_dir: Path) -> bool:
    """Whether the saved ``config.json`` names a sequence classifier (transformers writes the class it saved)."""
    cfg = model_dir / "config.json"
    return cfg.is_file() and any(a.endswith("ForSequenceClassification")
                                 for a in json.loads(cfg.read_text()).get("architectures") or [])


def _base_state_dict(peft_model) -> dict:
    """The base model's own tensors (LoRA layers and modules_to_save copies dropped, wrapped names unwrapped),
    shared with the live model (no copy)."""
    out = {}
    for k, v in peft_model.get_base_model().state_dict().items():
        if ".lora_" in k or ".modules_to_save." in k:
            continue
        out[k.replace(".base_layer.", ".").replace(".original_module.", ".")] = v
    return out


def save_model(model, tokenizer, out_dir: str | Path, merged: bool = False,
               card: CardInfo | dict | None = None) -> Path:
    """Save ``model`` (+ ``tokenizer``) to ``out_dir`` as described in the module docstring; with ``merged`` a LoRA
    model also gets a merged full model in ``out_dir/merged``. ``card``: what the model card says (a
    :class:`~tandem.models.card.CardInfo` or its dict form, e.g. from :func:`tandem.models.card.card_info`);
    ``None`` writes a card with what the saved files tell (kind, base model, versions)."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    info = CardInfo.from_dict(card) if isinstance(card, dict) else card
    is_peft = isinstance(model, PeftModel)
    base_model = model.get_base_model() if is_peft else model
    if tokenizer is not None and base_model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        base_model.config.pad_token_id = tokenizer.pad_token_id
    reward_adapter = is_peft and any(c.task_type == "SEQ_CLS" for c in model.peft_config.values())
    original_base = None
    if is_peft:
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = portable_base(cfg.base_model_name_or_path)
        original_base = next(iter(model.peft_config.values())).base_model_name_or_path
    with atomic_dir(out_dir) as tmp:
        if reward_adapter:
            _save_embedded_reward(model, tmp, out_dir.resolve())
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if is_peft and merged:
            import copy

            full = copy.deepcopy(model).merge_and_unload()
            full.save_pretrained(tmp / "merged", safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "merged")
        base_name = original_base if is_peft else base_model.config.name_or_path
        base_name = portable_base(base_name) if base_name else None
        kind = "reward" if reward_adapter or _saved_as_seq_cls(tmp) else "causal-lm"
        render_card(info, kind=kind, adapter=is_peft, base_model=base_name).save(tmp / "README.md")
        if is_peft and merged:  # the merged copy is pushable on its own: it gets its card too
            render_card(info, kind=kind, adapter=False, base_model=base_name).save(tmp / "merged" / "README.md")
    return out_dir


def _save_embedded_reward(model, tmp: Path, final: Path) -> None:
    """Adapter + base sequence classifier in one folder; the adapter's base is the folder (``final``, absolute)."""
    cfgs = model.peft_config
    before = {name: c.base_model_name_or_path for name, c in cfgs.items()}
    try:
        for c in cfgs.values():
            c.base_model_name_or_path = str(final)
        with warnings.catch_warnings():  # peft looks for the base's config at `final`, which appears on rename
            warnings.filterwarnings("ignore", message="Could not find a config file")
            model.save_pretrained(tmp, safe_serialization=True)
    finally:
        for name, c in cfgs.items():
            c.base_model_name_or_path = before[name]
    model.get_base_model().save_pretrained(tmp, state_dict=_base_state_dict(model), safe_serialization=True)
