"""Merge two checkpoints into a normal HF model (``merge_checkpoints``).

Loading the full weights of a run's output (a full model dir / Hub id, or a LoRA adapter dir merged into its
base) lives in :mod:`tandem.models.merged`.

The merged model is checked to be finite before anything is written, saved into a temporary directory inside OUT,
moved in (weights first), and ``tandem_merge.json`` is written last: a merge without it was interrupted, and
loading such a directory is refused (:func:`tandem.models.checks.check_model_files`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tandem.models.checks import check_finite_weights
from tandem.models.merged import load_full_weights
from tandem.models.resolve import tokenizer_source

__all__ = ["merge_checkpoints"]


def _copy_tokenizer(sources: list[str], out: Path) -> str | None:
    """Save the first loadable tokenizer among ``sources`` (an adapter dir without one: its base model's) into
    ``out``; returns that source or None."""
    from transformers import AutoTokenizer

    for src in sources:
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer_source(src))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        tok.save_pretrained(out)
        return src
    return None


def merge_checkpoints(
    base: str | Path,
    tuned: str | Path,
    out: str | Path,
    group_spec: str = "block3",
    alpha: float | None = None,
    alphas: list[float] | None = None,
    head_alpha: float | None = None,
    mergekit_config: str | Path | None = None,
) -> dict:
    """Load ``base`` (theta_0) and ``tuned`` (theta_1; either may be a LoRA adapter dir), merge with
    ``theta = (1 - alpha) * theta_0 + alpha * theta_1`` and save a normal HF model (safetensors + tokenizer +
    ``tandem_merge.json``) to ``out``. Give exactly one of ``alpha`` (global) or ``alphas`` (one per group).
    Returns the record written to ``tandem_merge.json``."""
    from tandem.merging.groups import describe_groups, group_of, tensor_alphas
    from tandem.merging.lerp import Merger, merge_names

    if (alpha is None) == (alphas is None):
        raise ValueError("give exactly one of alpha (global) or alphas (one per group)")
    out = Path(out)
    model = load_full_weights(tuned)
    base_model = load_full_weights(base, dtype=model.dtype)
    names = merge_names(model)
    base_params = dict(base_model.named_parameters())
    diff = [n for n in names if n not in base_params or base_params[n].shape != dict(model.named_parameters())[n].shape]
    if diff:
        raise ValueError(f"{base} and {tuned} have different architectures; first mismatching tensors: {diff[:5]}")
    _, n_groups = group_of(names, group_spec)
    group_alphas = [float(alpha)] * n_groups if alpha is not None else [float(a) for a in alphas]  # type: ignore[union-attr]
    per_tensor = tensor_alphas(names, group_spec, group_alphas, head_alpha)
    theta1 = {n: p.detach().clone() for n, p in model.named_parameters()}
    merger = Merger(base_params, theta1, names=names, clone=False)
    del base_model
    merger.merge_into(model, per_tensor)
    check_finite_weights(model, f"the merge of {base} and {tuned} with alphas {group_alphas} (nothing written)")
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out))  # a kill leaves no half model in out
    try:
        model.save_pretrained(stage)
        tok_src = _copy_tokenizer([str(tuned), str(base)], stage)
        weights = sorted(stage.glob("*.safetensors*"))  # the weights first, config.json after them
        for f in weights + sorted(set(stage.iterdir()) - set(weights)):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    record = {
        "convention": "theta = (1 - alpha) * base + alpha * tuned",
        "base": str(base),
        "tuned": str(tuned),
        "group_spec": group_spec,
        "groups": describe_groups(names, group_spec),
        "alphas": group_alphas,
        "head_alpha": sum(group_alphas) / len(group_alphas) if head_alpha is None else float(head_alpha),
        "tokenizer_from": tok_src,
    }
    tmp = out / "tandem_merge.json.tmp"  # written last: a merge without it was interrupted
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out / "tandem_merge.json")
    if mergekit_config is not None:
        from tandem.merging.mergekit import write_mergekit_config

        write_mergekit_config(mergekit_config, str(base), str(tuned), names, group_spec, group_alphas, head_alpha,
                              dtype=str(model.dtype).removeprefix("torch."))
    return record
