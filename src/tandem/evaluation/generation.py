"""Text generation from chat prompts (sampling itself: :mod:`tandem.models.sampling`), and a JSONL cache.

Prompts are chat messages (``[{"role": "user", "content": ...}, ...]``) rendered exactly as in training by
:func:`tandem.data.encode.prompt_ids`: the tokenizer's chat template with the assistant generation slot when
it has one, else the plain fallback template ``"### User:\\n{content}\\n\\n### Assistant:\\n"`` (after BOS).

Conventions of :func:`generate` (those of :func:`tandem.models.sampling.sample_ids`):

* prompts are **left**-padded into batches of ``batch_size`` (the attention mask hides the padding, and
  transformers derives position ids from it), so every prompt ends right before its first new token;
* ``temperature == 0`` means greedy decoding (``do_sample=False``); otherwise nucleus sampling with
  ``temperature`` and ``top_p``;
* generation stops at EOS (the tokenizer's ``eos_token_id`` plus any EOS ids in the model's generation config);
  the returned text is the decoded new tokens up to (excluding) the first EOS, special tokens skipped;
* sampling is seeded with ``seed`` inside :func:`torch.random.fork_rng`, so the global RNG state of the caller
  is left untouched and the same call returns the same texts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tandem.data.encode import prompt_ids
from tandem.data.types import Message
from tandem.models.sampling import eos_ids, sample_ids, strip_eos

GENERATION_FORMAT = 1



def _check_prompts(prompts) -> None:
    for i, p in enumerate(prompts):
        if not isinstance(p, list) or not p or not all(isinstance(m, dict) and "role" in m and "content" in m for m in p):
            raise ValueError(f"prompts[{i}]: expected a non-empty list of chat messages {{'role', 'content'}}, got {p!r:.120}")


def generate(
    model,
    tokenizer,
    prompts: list[list[Message]],
    temperature: float = 0.75,
    top_p: float = 0.95,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 32,
    max_prompt_length: int | None = None,
    advance=None,
) -> list[str]:
    """One completion per prompt (see the module docstring for the conventions); ``advance(n)`` after each batch.

    Args:
        model: a causal LM (``PreTrainedModel`` or peft model) in eval mode.
        tokenizer: its tokenizer; ``pad_token_id`` falls back to the first EOS id when unset.
        prompts: chat messages per prompt, each ending with a user turn.
        temperature: 0 for greedy, else the sampling temperature.
        top_p: nucleus mass for sampling (ignored when greedy).
        max_new_tokens: cap on new tokens per completion.
        seed: sampling seed.
        batch_size: prompts sampled together (:func:`tandem.models.sampling.sample_ids`).
        max_prompt_length: keep only the last this-many prompt tokens (default: no cut).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_prompts(prompts)
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    if max_prompt_length is not None:
        encoded = [ids[-max_prompt_length:] for ids in encoded]
    new = sample_ids(model, encoded, pad_id=pad, eos=eos, temperature=temperature, top_p=top_p,
                     max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, advance=advance)
    return [tokenizer.decode(strip_eos(ids, eos), skip_special_tokens=True) for ids in new]


def model_identity(model_or_path) -> dict:
    """What identifies a model for the generation cache: its resolved path plus name, size and mtime of the
    weight/config files in it (so retraining into the same dir invalidates the cache); a Hub id as given."""
    path = model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        path = model_or_path.config._name_or_path or type(model_or_path).__name__
    p = Path(path)
    if not p.is_dir():
        return {"name": str(path)}
    files = []
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model", ".gguf"):
            st = f.stat()
            files.append([f.name, st.st_size, st.st_mtime_ns])
    return {"name": str(p.resolve()), "files": files}


def cache_key(model_id, prompts: list[list[Message]], settings: dict) -> str:
    """sha256 of the canonical JSON of (format version, model identity, prompts, settings)."""
    blob = json.dumps(
        {"format": GENERATION_FORMAT, "model": model_id, "prompts": prompts, "settings": settings},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_cached(path: Path, key: str, n: int) -> list[str] | None:
    if not path.is_file():
        return None
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    return None
    if len(rows) != n or any(r.get("key") != key for r in rows):
        return None
    return [r["output"] for r in rows]


def generate_to_file(
    model,
    tokenizer,
    prompts: list[list[Message]],
    path: str | Path,
    references: list[str] | None = None,
    model_id=None,
    temperature: float = 0.75,
    top_p: float = 0.95,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 32,
    max_prompt_length: int | None = None,
) -> list[str]:
    """:func:`generate`, saved to ``path`` as JSONL, or read back from it when nothing changed.

    Each line is ``{"prompt", "reference", "output", "model", "settings", "key"}``. ``key`` is
    :func:`cache_key` of (``model_id`` or :func:`model_identity` of the model, prompts, settings);
    ``batch_size`` is not part of it (it does not change greedy outputs and only reorders random draws).
    The file is reused when it holds exactly ``len(prompts)`` lines that all carry the current key;
    otherwise the outputs are regenerated and the file replaced atomically.
    """
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"{len(references)} references for {len(prompts)} prompts")
    settings = {
        "temperature": temperature,
        "top_p": top_p if temperature > 0 else None,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "max_prompt_length": max_prompt_length,
    }
    mid = model_id if model_id is not None else model_identity(model)
    key = cache_key(mid, prompts, settings)
    path = Path(path)
    cached = _read_cached(path, key, len(prompts))
    if cached is not None:
        return cached
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as prog:
        task = prog.add_task(f"generate (t={temperature:g})", total=len(prompts))
        outputs = generate(
            model, tokenizer, prompts, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            seed=seed, batch_size=batch_size, max_prompt_length=max_prompt_length,
            advance=lambda n: prog.update(task, advance=n),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    name = mid.get("name") if isinstance(mid, dict) else str(mid)
    with open(tmp, "w", encoding="utf-8") as f:
        for i, (p, o) in enumerate(zip(prompts, outputs)):
            row = {
                "prompt": p,
                "reference": None if references is None else references[i],
                "output": o,
                "model": name,
                "settings": settings,
                "key": key,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return outputs
