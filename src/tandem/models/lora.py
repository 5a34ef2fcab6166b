"""LoRA adapters through peft."""

from __future__ import annotations


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
