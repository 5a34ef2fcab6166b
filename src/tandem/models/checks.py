"""Checks of a model's inputs, each a one-line :class:`ModelInputError` naming the path or field at fault.

* :func:`check_model_files`: a local model dir has ``config.json`` and readable (not truncated) safetensors;
* :func:`check_tokenizer_files`: a local tokenizer dir has tokenizer files;
* :func:`check_finite_weights`: a loaded model holds no NaN or infinity (checked once, when loaded);
* :func:`check_lora`: ``model.lora.target_modules`` match a module of the model, and ``model.lora.r`` is no larger
  than the model's width.
"""

from __future__ import annotations

import re
from pathlib import Path

from tandem.errors import TandemError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tekken.json")


class ModelInputError(TandemError, ValueError):
    """A model, tokenizer or LoRA setting that cannot be used (one line naming it and what to do)."""


def check_model_files(path: str | Path, what: str = "model") -> None:
    """A local full-model dir must hold ``config.json`` and safetensors whose headers match their sizes."""
    from safetensors import SafetensorError, safe_open

    from tandem.io.rundir import read_marker

    p = Path(path)
    if not p.is_dir() or (p / "adapter_config.json").is_file():
        return
    if read_marker(p).get("command") == "merge" and not (p / "tandem_merge.json").is_file():
        raise ModelInputError(f"{what} {p}: an interrupted `tandem merge` (no tandem_merge.json, written last); run the "
                              "merge again with --overwrite")
    if not (p / "config.json").is_file():
        raise ModelInputError(f"{what} {p}: no config.json in this directory (an incomplete copy?); copy the whole "
                              "model directory (config.json, *.safetensors, tokenizer files)")
    for f in sorted(p.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except (SafetensorError, OSError) as e:
            raise ModelInputError(f"{what} {f}: truncated or corrupt safetensors file ({e}); copy the model again") from None


def check_tokenizer_files(path: str | Path, what: str = "tokenizer") -> None:
    """A local dir used as a tokenizer must hold a tokenizer file (``tokenizer.json``, ``tokenizer.model``, ...)."""
    p = Path(path)
    if p.is_dir() and not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ModelInputError(f"{what} {p}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in this "
                              "directory; copy them from the base model, or save the tokenizer with the model")


def check_finite_weights(model, where: str) -> None:
    """Refuse a model whose weights hold NaN or infinity (one fused pass; quantized weights are skipped)."""
    from tandem.io.weights import nonfinite

    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point() and p.device.type != "meta"]
    bad = [named[i][0] for i in nonfinite([p for _, p in named])] if named else []
    if bad:
        raise ModelInputError(f"{where}: the model's weights hold NaN or infinity in {len(bad)} tensor(s) (e.g. "
                              f"{', '.join(bad[:3])}); it cannot be trained, evaluated or probed: use a finite checkpoint "
                              "(a diverged run's last finite checkpoint, or the base model)")


def _matches(name: str, targets) -> bool:
    """peft's rule: a regex string must match the whole name; a list entry matches the name or its last parts."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def check_lora(model, r: int, target_modules) -> None:
    """``model.lora.target_modules`` must match a linear layer of ``model``; ``model.lora.r`` must not exceed the
    model's width (``hidden_size``): a rank beyond it adds parameters without adding rank."""
    import torch

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if target_modules != "all-linear" and not any(_matches(n, target_modules) for n in linear):
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ModelInputError(f"model.lora.target_modules {target_modules}: no module of the model matches; its linear "
                              f"layers are named {', '.join(names[:12])}")
    width = model.config.to_dict().get("hidden_size") or model.config.to_dict().get("d_model")
    if isinstance(width, int) and r > width:
        raise ModelInputError(f"model.lora.r {r} is larger than the model's width (hidden_size {width}); choose "
                              f"r <= {width} (typical: 8 to 64)")


__all__ = ["ModelInputError", "check_finite_weights", "check_lora", "check_model_files", "check_tokenizer_files"]
