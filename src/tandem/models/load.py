"""The one place that loads models: policies, reward models and saved tandem models, by Hub id, local dir,
tandem run dir (its ``final/``), LoRA adapter dir or GGUF file (safetensors weights only, never pickle).

=========================  ==================================================================================
:func:`load_policy`        ``(AutoModelForCausalLM, tokenizer)`` from a Hub id, model dir, run dir or ``.gguf``
:func:`load_reward_model`  ``(AutoModelForSequenceClassification(num_labels=1), tokenizer)``: a reward model,
                           a tandem LoRA reward run (merged), or a causal LM that gets a new scalar head
:func:`load_saved`         a model saved by tandem (full dir or LoRA adapter dir, *not* merged), or its run dir
:func:`load_any`           whatever a user may name: run dir, adapter dir, model dir, ``.gguf`` file or Hub id
:func:`load_tokenizer`     the tokenizer of any of these (an adapter dir without one: its base model's)
:func:`load_seq2seq`       ``(AutoModelForSeq2SeqLM, tokenizer)``, e.g. the BART model of metric ``bartscore``
=========================  ==================================================================================

Training options of :func:`load_policy` / :func:`load_reward_model` (the recipe's ``model`` block):
``attn_implementation`` is passed to ``from_pretrained``; ``quantization`` (``"4bit"``: NF4 with double
quantization, the QLoRA setting; ``"8bit"``: LLM.int8) loads the base through bitsandbytes'
``BitsAndBytesConfig`` on one CUDA device. :func:`check_model_options` refuses, in one line, the options this
machine cannot run (call it before anything is written). Gradient checkpointing and k-bit preparation:
:func:`tandem.models.lora.prepare_for_training`.

Full merged weights of an adapter dir: :mod:`tandem.models.merged`. Path rules: :mod:`tandem.models.resolve`.
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path

from tandem.models.checks import ModelInputError, check_finite_weights, check_model_files, check_tokenizer_files
from tandem.models.resolve import (
    DTYPES,
    adapter_base,
    adapter_config,
    check_exists,
    is_adapter_dir,
    is_model_dir,
    looks_local,
    resolve_model_path,
    tokenizer_source,
    torch_dtype,
)

log = logging.getLogger("tandem")

__all__ = ["DTYPES", "ModelOptionError", "NoSafetensorsError", "check_model_options", "load_any", "load_policy",
           "load_reward_model", "load_saved", "load_seq2seq", "load_tokenizer", "load_value_model",
           "pretrained_options", "quantization_config"]


class ModelOptionError(ValueError):
    """A model option (``model.quantization``, ``model.attn_implementation``) this machine cannot run."""


def check_model_options(quantization: str | None = None, attn_implementation: str | None = None,
                        cuda: bool | None = None) -> None:
    """Refuse options that need what this machine lacks (``cuda``: default ``torch.cuda.is_available()``):
    quantization needs CUDA and bitsandbytes; FlashAttention needs CUDA. One line that names the field."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if quantization is not None:
        if quantization not in ("4bit", "8bit"):
            raise ModelOptionError(f"model.quantization: {quantization!r}; choose 4bit, 8bit or null")
        if not cuda:
            raise ModelOptionError(
                f"model.quantization: {quantization} (QLoRA through bitsandbytes) needs a CUDA GPU, and this machine "
                "has none; remove model.quantization to train the LoRA on the full-precision base, or run on a CUDA machine")
        if find_spec("bitsandbytes") is None:
            raise ModelOptionError(f"model.quantization: {quantization} needs the bitsandbytes package; "
                                   "pip install bitsandbytes, or remove model.quantization")
    if attn_implementation in ("flash_attention_2", "flash_attention_3") and not cuda:
        raise ModelOptionError(f"model.attn_implementation: {attn_implementation} needs a CUDA GPU, and this machine "
                               "has none; use sdpa or eager (or null for transformers' default)")


def quantization_config(quantization: str, dtype: str = "auto"):
    """``BitsAndBytesConfig`` of ``"4bit"`` (NF4, double quantization, compute in ``dtype`` when it is bfloat16
    or float16, else bfloat16 where the GPU supports it, else float16) or ``"8bit"``. Builds the config only
    (no GPU needed); loading with it needs CUDA (:func:`check_model_options`)."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization != "4bit":
        raise ModelOptionError(f"model.quantization: {quantization!r}; choose 4bit, 8bit or null")
    compute = torch_dtype(dtype)
    if compute not in (torch.bfloat16, torch.float16):
        compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def pretrained_options(dtype, attn_implementation: str | None, quantization: str | None, device) -> dict:
    """``from_pretrained`` keyword arguments of the training options (empty when none is set)."""
    kw: dict = {}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    if quantization is not None:
        import torch

        kw["quantization_config"] = quantization_config(quantization, dtype)
        kw["device_map"] = {"": device if device is not None else torch.cuda.current_device()}
    return kw


class NoSafetensorsError(FileNotFoundError, ValueError):
    """A local model dir without ``*.safetensors`` weights (tandem never reads pickle weights)."""


def check_safetensors(path: str | Path) -> None:
    """Refuse a local model dir that has no ``*.safetensors`` file (pickle ``.bin``/``.pt`` are never read)."""
    p = Path(path)
    if not p.is_dir() or any(p.glob("*.safetensors")):
        return
    if any(p.glob("*.bin")) or any(p.glob("*.pt")):
        raise NoSafetensorsError(
            f"{p}: only pickle weights (.bin/.pt) found; tandem loads safetensors only. Convert with "
            "`model.save_pretrained(dir, safe_serialization=True)` in a trusted environment.")
    raise NoSafetensorsError(f"{p}: no *.safetensors weights (only safetensors are read)")


def check_adapter_weights(adapter_dir: str | Path) -> None:
    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
        raise NoSafetensorsError(f"{adapter_dir}: adapter dir without adapter_model.safetensors "
                                 "(only safetensors are read)")


def _split_gguf(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    if gguf_file is None and str(name_or_path).endswith(".gguf"):
        p = Path(name_or_path)
        return str(p.parent), p.name
    return name_or_path, gguf_file


def load_tokenizer(name_or_path: str, gguf_file: str | None = None, trust_remote_code: bool = False, revision=None):
    """The tokenizer of a Hub id, model dir, run dir, adapter dir (its own, else its base model's) or GGUF file;
    a missing pad token becomes EOS."""
    from transformers import AutoTokenizer

    name, gguf_file = _split_gguf(resolve_model_path(name_or_path, "tokenizer"), gguf_file)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    source = name if gguf_file else tokenizer_source(name)
    check_exists(source, "tokenizer")
    if not gguf_file:
        check_tokenizer_files(source)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token: using EOS (%s) for padding", tok.eos_token)
    return tok


def _from_pretrained(auto_cls, name_or_path: str, gguf_file: str | None, dtype, trust_remote_code: bool = False,
                     revision: str | None = None, loading_info: dict | None = None, **extra):
    """``auto_cls.from_pretrained`` of a resolved reference (safetensors only; GGUF dequantised to dense); its weights
    are checked to be finite. ``loading_info``: filled with transformers' (``missing_keys``: newly initialised)."""
    name_or_path, gguf_file = _split_gguf(name_or_path, gguf_file)
    if not gguf_file:
        check_safetensors(name_or_path)
        check_model_files(name_or_path)  # config.json there, safetensors not truncated: one line, not a traceback
    elif looks_local(name_or_path):
        check_exists(Path(name_or_path) / gguf_file)
    kw = dict(trust_remote_code=trust_remote_code, revision=revision, **extra)
    if gguf_file:
        from transformers import GgufConfig

        kw["gguf_file"] = gguf_file
        # Training needs plain dense weights: unpack every GGUF block at load time (transformers would otherwise
        # keep them packed when a matmul kernel is installed, and such a model can be neither trained nor saved).
        kw["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    else:
        kw["use_safetensors"] = True
    want = torch_dtype(dtype)
    if want != "auto":
        kw["dtype"] = want
    if loading_info is not None:
        model, info = auto_cls.from_pretrained(name_or_path, output_loading_info=True, **kw)
        loading_info.update(info)
    else:
        model = auto_cls.from_pretrained(name_or_path, **kw)
    check_finite_weights(model, f"{name_or_path}{'/' + gguf_file if gguf_file else ''}")
    if gguf_file and model.is_quantized:  # transformers sets hf_quantizer only for a quantised load
        model.hf_quantizer.remove_quantization_config(model)  # dense now: a normal, trainable, saveable model
    if gguf_file and want != "auto":
        model = model.to(want)  # GGUF weights are dequantised to float32
    return model


def _load_adapter(adapter_dir: str, dtype, reward: bool, merge: bool, base: str | None = None):
    """A LoRA adapter dir on its base model (``SEQ_CLS`` adapters on a 1-label sequence classifier)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    task = adapter_config(adapter_dir).get("task_type")
    if reward and task != "SEQ_CLS":
        raise ValueError(f"{adapter_dir}: a LoRA adapter of task {task!r}, not a reward model (task_type SEQ_CLS)")
    check_adapter_weights(adapter_dir)
    base_name = resolve_model_path(adapter_base(adapter_dir, base), "base model")
    if task == "SEQ_CLS":
        # a tandem reward model: the default head of a sequence classifier would have 2 labels
        model = _from_pretrained(AutoModelForSequenceClassification, base_name, None, dtype, num_labels=1)
    else:
        model = _from_pretrained(AutoModelForCausalLM, base_name, None, dtype)
    model = PeftModel.from_pretrained(model, adapter_dir, use_safetensors=True)
    return (model.merge_and_unload() if merge else model).eval()


def load_policy(name_or_path: str, gguf_file: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                revision: str | None = None, attn_implementation: str | None = None, quantization: str | None = None,
                device=None):
    """``(AutoModelForCausalLM, tokenizer)`` from a Hub id, model dir, run dir (its ``final/``) or ``.gguf`` file.
    ``attn_implementation`` / ``quantization`` (loaded on ``device``, default the current CUDA device): see the
    module docstring."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path, "model")
    model = _from_pretrained(AutoModelForCausalLM, path, gguf_file, dtype, trust_remote_code, revision,
                             **pretrained_options(dtype, attn_implementation, quantization, device))
    tok = load_tokenizer(path, gguf_file, trust_remote_code, revision)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_reward_model(name_or_path: str, gguf_file: str | None = None, dtype: str = "auto",
                      trust_remote_code: bool = False, revision: str | None = None, device=None,
                      attn_implementation: str | None = None, quantization: str | None = None, scorer: bool = False):
    """``(AutoModelForSequenceClassification(num_labels=1), tokenizer)``: the LM with a scalar head ``score``.

    * a saved reward model (dir or Hub id): everything is loaded;
    * a tandem LoRA reward run (its run dir, ``final/`` or any ``SEQ_CLS`` adapter dir): the adapter and its
      trained head are loaded on the base model and **merged** (a plain model, as fast as a full one);
    * a causal-LM checkpoint: the backbone weights are kept and ``score`` is new (transformers initialises it
      with normal(0, initializer_range)) -- the start of reward-model training.

    The model's ``pad_token_id`` is the tokenizer's; with ``device`` the model is moved there (a quantized
    model is loaded there). ``attn_implementation`` / ``quantization``: see the module docstring. ``scorer``: the
    model scores (tax, evaluation), so a head that would be newly initialised -- a random reward -- is refused.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path, "reward model")
    info: dict = {}
    if is_adapter_dir(path):
        model = _load_adapter(path, dtype, reward=True, merge=True)
    else:
        model = _from_pretrained(AutoModelForSequenceClassification, path, gguf_file, dtype, trust_remote_code,
                                 revision, loading_info=info, num_labels=1,
                                 **pretrained_options(dtype, attn_implementation, quantization, device))
    new_head = [k for k in info.get("missing_keys") or [] if k.split(".")[0] in ("score", "classifier")]
    if scorer and new_head:
        raise ModelInputError(f"reward model {name_or_path}: has no trained reward head ({', '.join(sorted(new_head))} "
                              "would be initialised at random: a different reward each run); give a trained reward "
                              "model, e.g. a run of `tandem train` with schedule.method: reward")
    tok = load_tokenizer(path, gguf_file, trust_remote_code, revision)
    model.config.pad_token_id = tok.pad_token_id
    return (model.to(device) if device is not None and quantization is None else model), tok


load_value_model = load_reward_model


def load_seq2seq(name_or_path: str, dtype: str = "auto", device=None):
    """``(AutoModelForSeq2SeqLM, tokenizer)`` (e.g. BART) from a Hub id or a local dir, in eval mode, on ``device``."""
    from transformers import AutoModelForSeq2SeqLM

    path = resolve_model_path(name_or_path, "model")
    model = _from_pretrained(AutoModelForSeq2SeqLM, path, None, dtype).eval()
    return (model.to(device) if device is not None else model), load_tokenizer(path)


def _is_reward_dir(path: Path) -> bool:
    import json

    cfg = json.loads((path / "config.json").read_text())
    return any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def load_saved(path: str | Path, dtype: str = "auto"):
    """A model saved by tandem, or its run dir: a full model dir (a reward model when its architecture is a
    sequence classifier), or a LoRA adapter dir loaded on its base model as a peft model (*not* merged, so the
    adapter weights stay trainable and countable)."""
    p = Path(resolve_model_path(path, "model"))
    if not is_model_dir(p):
        raise ValueError(f"{p}: not a model dir (no config.json or adapter_config.json) nor a run dir with final/")
    if is_adapter_dir(p):
        model = _load_adapter(str(p), dtype, reward=False, merge=False)
        tok = load_tokenizer(str(p))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        return model, tok
    if _is_reward_dir(p):
        return load_reward_model(str(p), dtype=dtype)
    return load_policy(str(p), dtype=dtype)


def load_any(name_or_path: str | Path, dtype: str = "auto"):
    """``(model, tokenizer)`` from whatever a user may name: a run dir (its ``final/``), a LoRA adapter dir (not
    merged), a full model dir, a ``.gguf`` file or a Hub id. A local path that does not exist is refused with
    ``FileNotFoundError("... not found: PATH")``."""
    path = resolve_model_path(name_or_path, "model")
    if Path(path).is_dir():
        return load_saved(path, dtype=dtype)
    return load_policy(path, dtype=dtype)
