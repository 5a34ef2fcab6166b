"""Load policies and reward models by Hub id, local directory or GGUF file (safetensors weights only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger("tandem")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _split_gguf(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    if gguf_file is None and str(name_or_path).endswith(".gguf"):
        p = Path(name_or_path)
        return str(p.parent), p.name
    return name_or_path, gguf_file


def _check_safetensors(name_or_path: str, gguf_file: str | None) -> None:
    p = Path(name_or_path)
    if gguf_file or not p.is_dir():
        return
    if not list(p.glob("*.safetensors")) and (list(p.glob("*.bin")) or list(p.glob("*.pt"))):
        raise ValueError(f"{p}: only pickle weights (.bin/.pt) found; tandem loads safetensors only. "
                         "Convert with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment.")


def load_tokenizer(name_or_path: str, gguf_file: str | None = None, trust_remote_code: bool = False, revision=None):
    from transformers import AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token: using EOS (%s) for padding", tok.eos_token)
    return tok


def _load(auto_cls, name_or_path, gguf_file, dtype, trust_remote_code, revision, **extra):
    name_or_path, gguf_file = _split_gguf(str(name_or_path), gguf_file)
    _check_safetensors(name_or_path, gguf_file)
    kw = dict(trust_remote_code=trust_remote_code, revision=revision, **extra)
    if gguf_file:
        from transformers import GgufConfig

        kw["gguf_file"] = gguf_file
        # Training needs plain dense weights: unpack every GGUF block at load time (transformers would otherwise
        # keep them packed when a matmul kernel is installed, and such a model can be neither trained nor saved).
        kw["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    else:
        kw["use_safetensors"] = True
    if dtype in DTYPES:
        kw["dtype"] = DTYPES[dtype]
    model = auto_cls.from_pretrained(name_or_path, **kw)
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # dense now: a normal, trainable, saveable model
    if dtype in DTYPES and gguf_file:
        model = model.to(DTYPES[dtype])  # GGUF weights are dequantised to float32
    tok = load_tokenizer(name_or_path, gguf_file, trust_remote_code, revision)
    return model, tok


def load_policy(name_or_path: str, gguf_file: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                revision: str | None = None):
    """``(AutoModelForCausalLM, tokenizer)``."""
    from transformers import AutoModelForCausalLM

    model, tok = _load(AutoModelForCausalLM, name_or_path, gguf_file, dtype, trust_remote_code, revision)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_reward_model(name_or_path: str, gguf_file: str | None = None, dtype: str = "auto",
                      trust_remote_code: bool = False, revision: str | None = None):
    """``(AutoModelForSequenceClassification(num_labels=1), tokenizer)``: the LM with a scalar head.

    From a causal-LM checkpoint the backbone weights are kept and the head ``score`` is new (transformers
    initialises it with normal(0, initializer_range)); from a saved reward model everything is loaded.
    """
    from transformers import AutoModelForSequenceClassification

    model, tok = _load(AutoModelForSequenceClassification, name_or_path, gguf_file, dtype, trust_remote_code, revision,
                       num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


load_value_model = load_reward_model


def load_saved(path: str | Path, dtype: str = "auto"):
    """A model saved by tandem: a full model dir, or a LoRA adapter dir (loaded on its base, not merged)."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        cfg = json.loads((path / "adapter_config.json").read_text())
        kw = {"dtype": DTYPES[dtype]} if dtype in DTYPES else {}
        if cfg.get("task_type") == "SEQ_CLS":
            from peft import AutoPeftModelForSequenceClassification as cls

            kw["num_labels"] = 1  # a tandem reward model (the default head would have 2 labels)
        else:
            cls = AutoPeftModelForCausalLM
        model = cls.from_pretrained(str(path), **kw)
        tok = load_tokenizer(str(path) if (path / "tokenizer_config.json").exists() else cfg["base_model_name_or_path"])
        return model, tok
    cfg = json.loads((path / "config.json").read_text())
    if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures", [])):
        return load_reward_model(str(path), dtype=dtype)
    return load_policy(str(path), dtype=dtype)
