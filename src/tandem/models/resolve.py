"""What a model reference names: a Hub id, a local model dir, a LoRA adapter dir, a tandem run dir or a GGUF file.

A run's stage (``RUN/stages/NN-name``) names the run's final model with that stage's trainable weights
(:func:`stage_weights`). A string that is clearly a local path -- it exists, is not shaped like a Hub id (more than one ``/``, a
backslash, a space ...), starts with ``.``, ``/`` or ``~``, ends with ``.gguf``, or its first path component exists here -- must exist:
:func:`check_exists` raises ``FileNotFoundError("not found: PATH")`` at once instead of letting transformers
try the Hub with it. Anything else that looks like a Hub id (``name`` or ``org/name``) goes to the Hub.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def torch_dtype(dtype: str | torch.dtype | None):
    """``"float32"``/``"bfloat16"``/``"float16"`` or a torch dtype -> that dtype; ``None``/``"auto"`` -> ``"auto"``
    (the checkpoint's own dtype)."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def looks_local(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` names a local file or directory rather than a Hub id (see the module docstring)."""
    s = os.fspath(name_or_path)
    if Path(s).expanduser().exists():
        return True
    if s.startswith((".", "/", "~")) or s.endswith(".gguf") or not _HUB_ID.match(s):
        return True  # a Hub id has at most one "/" and no other separator (so a Windows path is local too)
    first = s.split("/")[0]
    return "/" in s and Path(first).exists()


def check_exists(name_or_path: str | os.PathLike, what: str = "") -> None:
    """Raise ``FileNotFoundError("not found: PATH")`` when ``name_or_path`` is a local path that does not exist."""
    s = os.fspath(name_or_path)
    if looks_local(s) and not Path(s).expanduser().exists():
        raise FileNotFoundError(f"{what + ' ' if what else ''}not found: {s}")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A peft (LoRA) adapter dir: it holds ``adapter_config.json``."""
    return (Path(path) / "adapter_config.json").is_file()


def is_model_dir(path: str | os.PathLike) -> bool:
    """A full model dir (``config.json``) or an adapter dir."""
    p = Path(path)
    return (p / "config.json").is_file() or is_adapter_dir(p)


def resolve_model_path(name_or_path: str | os.PathLike, what: str = "") -> str:
    """``name_or_path`` checked (:func:`check_exists`) and resolved: a tandem run dir (no model files, a ``final/``
    subdir) becomes its ``final/``; a Hub id is returned as is."""
    s = os.fspath(name_or_path)
    check_exists(s, what)
    p = Path(s).expanduser()
    if p.is_dir() and not is_model_dir(p) and is_model_dir(p / "final"):
        return str(p / "final")
    return str(p) if looks_local(s) else s


STAGE_WEIGHTS = "end.safetensors"
CHECKPOINT_WEIGHTS = "trainable.safetensors"  # RUN/checkpoints/<name>: the trainable weights at that checkpoint


def stage_weights(path: str | os.PathLike) -> tuple[str, Path] | None:
    """``(the run's final model dir, the stage's weights file)`` when ``path`` is a stage of a tandem run
    (``RUN/stages/NN-name`` holding ``end.safetensors``: the trainable weights at the end of that stage, e.g. the
    SFT stage of a sequential run) or one of its checkpoints (``RUN/checkpoints/<name>`` holding
    ``trainable.safetensors``: an early stop); ``None`` for anything else. The stage's weights are loaded over the run's final
    model (the LoRA adapter, or the full model), so every other weight is the run's. ``FileNotFoundError`` when the
    run has no ``final/`` yet."""
    p = Path(path).expanduser()
    weights = {"stages": STAGE_WEIGHTS, "checkpoints": CHECKPOINT_WEIGHTS}.get(p.parent.name)
    if weights is None or not (p / weights).is_file():
        return None
    final = p.parent.parent / "final"
    if not is_model_dir(final):
        raise FileNotFoundError(f"{p}: a stage of a run without a final model ({final}); finish or resume the run first")
    return str(final), p / weights


def adapter_config(adapter_dir: str | os.PathLike) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def adapter_base(adapter_dir: str | os.PathLike, base: str | None = None) -> str:
    """The base model of an adapter dir: ``base`` when given, else ``base_model_name_or_path`` of its config
    (a relative path is tried relative to the adapter dir too)."""
    if base is not None:
        return str(base)
    adapter_dir = Path(adapter_dir)
    name = adapter_config(adapter_dir).get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{adapter_dir / 'adapter_config.json'}: field 'base_model_name_or_path' is empty; "
                         "pass the base model explicitly")
    if not Path(name).exists() and (adapter_dir / name).exists():
        return str(adapter_dir / name)
    return str(name)


def tokenizer_source(name_or_path: str | os.PathLike) -> str:
    """Where the tokenizer of a model comes from: an adapter dir's own tokenizer files, else its base model's;
    any other model dir or Hub id itself."""
    s = os.fspath(name_or_path)
    p = Path(s)
    if is_adapter_dir(p) and not (p / "tokenizer_config.json").is_file():
        return adapter_base(p)
    return s
