"""LoRA adapters through peft, and the preparation of a model for training (gradient checkpointing, k-bit)."""

from __future__ import annotations

#: Gradient checkpointing without re-entrant autograd (the current PyTorch default; works with frozen inputs).
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def prepare_for_training(model, gradient_checkpointing: bool = False, quantized: bool = False, lora: bool = False):
    """Call after loading and before :func:`apply_lora`; returns the model.

    * ``quantized`` (loaded with ``model.quantization``): ``peft.prepare_model_for_kbit_training`` (norms and
      other non-quantized weights in float32, inputs that require grad, checkpointing when asked);
    * ``gradient_checkpointing``: ``gradient_checkpointing_enable(use_reentrant=False)`` and the KV cache off;
      with ``lora`` (frozen embeddings) also ``enable_input_require_grads`` so checkpointed blocks get a graph.
    """
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=dict(CHECKPOINTING_KWARGS))
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINTING_KWARGS))
        if lora:
            model.enable_input_require_grads()
    if gradient_checkpointing:
        model.config.use_cache = False
    return model


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules="all-linear",
               task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task_type,
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )
    return get_peft_model(model, cfg)


def trainable_summary(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
