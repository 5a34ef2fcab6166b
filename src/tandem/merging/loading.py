"""Load the full weights of a run's output: a full model dir / Hub id, or a peft (LoRA) adapter dir.

For an adapter dir (one with ``adapter_config.json``) the base model named in the config (or ``base=``) is
loaded and the adapter merged into it with ``merge_and_unload()``, so the result is a plain model whose
weights can be interpolated. Only safetensors files are read (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _resolve_base(adapter_dir: Path, base: str | None) -> str:
    if base is not None:
        return str(base)
    cfg_path = adapter_dir / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    name = cfg.get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{cfg_path}: field 'base_model_name_or_path' is empty; pass base= explicitly")
    if not Path(name).exists() and (adapter_dir / name).exists():  # relative to the adapter dir
        return str(adapter_dir / name)
    return name


def load_full_weights(
    path: str | Path,
    base: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
):
    """A ``PreTrainedModel`` with full weights, in eval mode.

    Args:
        path: model dir, Hub id, or peft adapter dir.
        base: base model for an adapter dir (default: ``base_model_name_or_path`` from its config).
        dtype: load dtype (default: the checkpoint's own, ``"auto"``).
    """
    from transformers import AutoModelForCausalLM

    p = Path(path)
    kw = {"dtype": dtype if dtype is not None else "auto", "use_safetensors": True}
    if is_adapter_dir(p):
        from peft import PeftModel

        if not (p / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"{p}: adapter dir without adapter_model.safetensors (only safetensors are read)")
        base_name = _resolve_base(p, base)
        model = AutoModelForCausalLM.from_pretrained(base_name, **kw)
        model = PeftModel.from_pretrained(model, str(p), use_safetensors=True).merge_and_unload()
    else:
        if p.exists() and p.is_dir() and not any(p.glob("*.safetensors")):
            raise FileNotFoundError(f"{p}: no *.safetensors weights (only safetensors are read)")
        model = AutoModelForCausalLM.from_pretrained(str(path), **kw)
    return model.to(device).eval()


def _copy_tokenizer(sources: list[str], out: Path) -> str | None:
    """Save the first loadable tokenizer among ``sources`` into ``out``; returns its source or None."""
    from transformers import AutoTokenizer

    for src in sources:
        try:
            tok = AutoTokenizer.from_pretrained(src)
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
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok_src = _copy_tokenizer([str(tuned), str(base)], out)
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
    (out / "tandem_merge.json").write_text(json.dumps(record, indent=2) + "\n")
    if mergekit_config is not None:
        from tandem.merging.mergekit import write_mergekit_config

        write_mergekit_config(mergekit_config, str(base), str(tuned), names, group_spec, group_alphas, head_alpha,
                              dtype=str(model.dtype).removeprefix("torch."))
    return record
