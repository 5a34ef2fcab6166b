"""Full weights of a run's output: a full model dir / Hub id / run dir, or a peft (LoRA) adapter dir.

For an adapter dir (one with ``adapter_config.json``) the base model named in the config (or ``base=``) is
loaded and the adapter merged into it with ``merge_and_unload()``, so the result is a plain model whose
weights can be interpolated, evaluated or probed. Only safetensors files are read (no pickle).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tandem.models.load import check_adapter_weights, check_safetensors, load_tokenizer
from tandem.models.resolve import (adapter_base, is_adapter_dir, resolve_model_path, stage_weights, tokenizer_source,
                                   torch_dtype)

__all__ = ["load_full_weights", "load_merged", "tokenizer_of"]


def load_full_weights(
    path: str | Path,
    base: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
):
    """A causal-LM ``PreTrainedModel`` with full weights, on ``device``, in eval mode.

    Args:
        path: model dir, run dir (its ``final/``), a run's stage (``RUN/stages/NN-name``: the final model with that
            stage's trainable weights), Hub id, or peft adapter dir.
        base: base model for an adapter dir (default: ``base_model_name_or_path`` from its config).
        dtype: load dtype (default: the checkpoint's own, ``"auto"``).
    """
    from transformers import AutoModelForCausalLM

    from tandem.io.weights import load_trainable_file

    p = resolve_model_path(path, "model")
    stage = stage_weights(p)
    if stage is not None:
        p = stage[0]
    kw = {"dtype": torch_dtype(dtype), "use_safetensors": True}
    if is_adapter_dir(p):
        from peft import PeftModel

        check_adapter_weights(p)
        base_name = resolve_model_path(adapter_base(p, base), "base model")
        check_safetensors(base_name)
        model = _in_own_memory(AutoModelForCausalLM.from_pretrained(base_name, **kw))
        model = PeftModel.from_pretrained(model, p, use_safetensors=True)
        if stage is not None:
            load_trainable_file(model, stage[1])
        model = model.merge_and_unload()
    else:
        check_safetensors(p)
        model = AutoModelForCausalLM.from_pretrained(p, **kw)
        if stage is not None:
            load_trainable_file(model, stage[1])
    return model.to(device).eval()


def _in_own_memory(model):
    """``model`` with every parameter copied out of the checkpoint file's memory map. The merge writes every adapted
    weight in place, and writing to mapped pages costs a copy-on-write fault per page: for SmolLM2 (fp32) the merge
    took 1.6-2.0 s that way and 0.3 s after this 0.2 s copy (docs/benchmarks.md, "Quickstart")."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model


def load_merged(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                base: str | None = None):
    """``(model, tokenizer)``: :func:`load_full_weights` of ``path`` and its tokenizer (an adapter dir's own,
    else its base model's)."""
    model = load_full_weights(path, base=base, dtype=dtype, device=device)
    return model, tokenizer_of(path, base)


def tokenizer_of(path: str | Path, base: str | None = None):
    """The tokenizer of what :func:`load_full_weights` loads from ``path``: a model dir's own, an adapter dir's own
    (else its base model's, ``base`` when given), a run stage's run's."""
    src = resolve_model_path(path, "model")
    src = (stage_weights(src) or (src,))[0]  # a run's stage: the run's final model's tokenizer
    own = tokenizer_source(src) == src  # an adapter dir without tokenizer files uses its base model's
    return load_tokenizer(src if own or base is None else base)
