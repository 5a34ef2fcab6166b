"""Which precision a training run computes in, and the model's weights for it (the dtype policy).

``resolve(requested)`` turns the recipe's ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) into a
:class:`Precision`: the weights' dtype while training, the autocast mode handed to accelerate, whether the loss is
scaled, and a one-line reason for the run log. ``auto`` picks bf16 where the hardware computes it natively:

* a CUDA GPU that supports bf16 (``torch.cuda.is_bf16_supported()``);
* a CPU with native bf16 instructions: ``avx512_bf16`` or ``amx_bf16`` (x86), ``bf16`` (aarch64), read from the
  ``flags``/``Features`` lines of ``/proc/cpuinfo``, unless ``ONEDNN_MAX_CPU_ISA`` (or its older name
  ``DNNL_MAX_CPU_ISA``) caps oneDNN, torch's CPU matmul library, below its bf16 instructions (``AVX2``,
  ``AVX512_CORE``, ...): oneDNN would then emulate bf16 (this is also how a bf16 machine behaves like one without);

and fp32 elsewhere (an older CPU would emulate bf16 and run slower than fp32).

bf16 means **bf16 weights** (no autocast): every matmul runs in bf16 without casting fp32 weights on each forward,
which measured faster than accelerate's autocast on a 2-core AVX512-bf16 CPU (docs/benchmarks.md). Updates do not
lose precision: the optimizer keeps fp32 master weights and fp32 state for every bf16 trainable parameter
(``tandem.optim.MasterAdamW``), for a full fine-tune and for a LoRA run's adapters alike (bf16 adapters on the bf16
base measured 1.14x faster than fp32 adapters, whose inputs peft casts to fp32 in every layer). Only parameters are
cast: buffers (e.g. the rotary ``inv_freq``) stay in fp32 as ``from_pretrained`` left them.

fp16 keeps fp32 weights, autocasts to fp16 and scales the loss (``tandem.optim.GradScaling``). fp32 forces fp32
weights (a recipe can always ask for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Requested = Literal["auto", "fp32", "bf16", "fp16"]
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) below its first bf16 instructions (``AVX512_CORE_BF16``)
ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")

__all__ = ["CPU_BF16_FLAGS", "Precision", "apply_precision", "cpu_bf16_flags", "inference_dtype", "resolve", "training_attention"]


@dataclass(frozen=True)
class Precision:
    """A resolved training precision."""

    name: Literal["fp32", "bf16", "fp16"]
    weights: torch.dtype | None  # dtype of the weights while training; None = keep the dtype they were loaded in
    autocast: Literal["no", "bf16", "fp16"]  # accelerate's ``mixed_precision``
    loss_scaling: bool  # fp16: scale the loss, unscale the gradients before clipping and regularizer terms
    reason: str

    def describe(self) -> str:
        return f"precision {self.name}: {self.reason}"


def onednn_cap() -> str | None:
    """``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) when it caps oneDNN below its bf16 instructions, else None."""
    import os

    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap if cap in ONEDNN_NO_BF16 else None


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 CPU flags found in ``/proc/cpuinfo`` (or in the given text); [] when unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return [f for f in CPU_BF16_FLAGS if f in flags]


def _gpu_bf16() -> tuple[bool, str]:
    name = torch.cuda.get_device_name()
    return bool(torch.cuda.is_bf16_supported()), name


def resolve(requested: Requested, device: str | None = None, cpuinfo: str | None = None) -> Precision:
    """The precision of a run on ``device`` (``cuda`` or ``cpu``; default: cuda when available)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "fp32":
        return Precision("fp32", torch.float32, "no", False, "asked for in the recipe")
    if requested == "fp16":
        return Precision("fp16", torch.float32, "fp16", True,
                         "asked for in the recipe: fp32 weights, fp16 autocast, scaled loss")
    if device == "cuda":
        ok, what = _gpu_bf16()
        what = f"GPU {what} {'supports' if ok else 'does not support'} bf16"
    else:
        flags, cap = cpu_bf16_flags(cpuinfo), onednn_cap()
        ok = bool(flags) and cap is None
        what = (f"CPU has native bf16 ({', '.join(flags)})" if ok
                else f"CPU has native bf16 ({', '.join(flags)}) but ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below it" if flags
                else "CPU has no native bf16 instructions (no avx512_bf16 / amx_bf16 / bf16 flag)")
    master = "bf16 weights (LoRA: base and adapters), fp32 master weights and optimizer state"
    if requested == "bf16":
        why = f"asked for in the recipe; {what}" + ("" if ok else " (emulated: slower than fp32)")
        return Precision("bf16", torch.bfloat16, "no", False, f"{why}; {master}")
    if requested != "auto":
        raise ValueError(f"precision {requested!r}: choose auto, fp32, bf16 or fp16")
    if ok:
        return Precision("bf16", torch.bfloat16, "no", False, f"auto: {what}; {master}")
    return Precision("fp32", None, "no", False, f"auto: {what}; weights stay in model.dtype (set precision: bf16 to force)")


def apply_precision(model: torch.nn.Module, precision: Precision, fp32_trainable: bool = False) -> torch.nn.Module:
    """Cast ``model``'s parameters (in place, buffers untouched) to ``precision.weights``; ``fp32_trainable`` keeps the
    trainable ones in fp32 (only the frozen ones take the low-precision dtype). FSDP shards (DTensor) are left to
    FSDP's mixed-precision policy."""
    from torch.distributed.tensor import DTensor

    target = precision.weights
    if target is None:
        return model
    with torch.no_grad():
        for p in model.parameters():
            want = torch.float32 if fp32_trainable and p.requires_grad else target
            if p.is_floating_point() and p.dtype != want and not isinstance(p, DTensor):  # FSDP: its mp policy
                p.data = p.data.to(want)
    return model


def inference_dtype(requested: Literal["auto", "float32", "bfloat16"], device: str | None = None) -> torch.dtype | None:
    """The dtype an evaluation loads its models in: ``auto`` = the weights ``resolve("auto")`` trains in (bf16 where
    the hardware computes it natively, else None: the checkpoint's own dtype); otherwise the named dtype."""
    if requested == "auto":
        return resolve("auto", device).weights
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[requested]


#: longest packed row (tokens) for which ``auto`` picks eager attention: eager keeps each layer's
#: ``[rows, heads, T, T]`` attention probabilities for the backward pass, which a flash kernel does not.
EAGER_MAX_ROW = 256


def training_attention(requested: str | None, precision: Precision, device: str, row_tokens: int | None,
                       prefix_sharing: bool = False) -> tuple[str | None, str]:
    """``(attn_implementation for from_pretrained, reason)`` of a training run. ``auto`` picks eager for bf16 weights
    on a CPU when every row has at most :data:`EAGER_MAX_ROW` tokens and no prefix-sharing block can be longer:
    torch's CPU flash-attention kernel runs bf16 inputs through fp32 matmuls, and eager measured 1.1-1.2x faster per
    SmolLM2 LoRA step at 256-token rows (slower in fp32; docs/benchmarks.md). Anything else: transformers' default
    (None). Any other value is passed through."""
    if requested != "auto":
        return requested, f"attention {requested or 'transformers default'}: asked for in the recipe"
    short = row_tokens is not None and row_tokens <= EAGER_MAX_ROW and not prefix_sharing
    if device == "cpu" and precision.weights == torch.bfloat16 and short:
        return "eager", f"attention eager (auto): bf16 on CPU, rows <= {row_tokens} tokens"
    return None, "attention transformers default (auto)"
