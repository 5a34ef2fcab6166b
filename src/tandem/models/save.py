"""Save models so that plain transformers / peft ``from_pretrained`` loads them (safetensors only)."""

from __future__ import annotations

from pathlib import Path

from tandem.models.atomic import atomic_dir


def save_model(model, tokenizer, out_dir: str | Path, merged: bool = False) -> Path:
    """Full models: weights + config + tokenizer. LoRA (peft) models: the adapter, and with ``merged`` a full
    merged model in ``out_dir/merged``. Written atomically."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    is_peft = isinstance(model, PeftModel)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if is_peft and merged:
            import copy

            full = copy.deepcopy(model).merge_and_unload()
            full.save_pretrained(tmp / "merged", safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "merged")
    return out_dir
