"""Write a mergekit YAML config that reproduces a tandem merge.

tandem's ``alpha`` is the weight of the *tuned* model (``theta = (1 - alpha) * theta_0 + alpha * theta_1``).
The config uses ``merge_method: linear`` with ``normalize: false`` and per-tensor conditional weights:
mergekit checks the ``filter`` entries of a weight list in order and uses the first whose ``filter`` is a
substring of the tensor name, so

- each block gets ``{filter: "<prefix>.<i>.", value: alpha_of_its_group}`` (the trailing dot keeps
  ``layers.1.`` from matching ``layers.12.``),
- each embedding tensor ``{filter: <name>, value: alpha_of_first_group}``,
- a final entry without a filter (norm, LM head, anything else) ``value: head_alpha``.

The base model gets ``1 - value`` for every entry. Run it with ``mergekit-yaml merge.yaml out_dir``.

Model references (:func:`mergekit_reference`): mergekit loads full model dirs and Hub ids, and a LoRA adapter
only in its ``base+adapter`` form (it merges the adapter into the base itself). So a tandem run dir becomes its
``final/``; a LoRA ``final/`` that holds ``merged/`` (``save_merged``, the default) becomes that merged full
model; any other adapter dir becomes ``BASE+ADAPTER`` with ``BASE`` from its ``adapter_config.json``. Anything
else (a full model dir, a Hub id, a path that does not exist here) is written as given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import yaml

from tandem.merging.groups import find_blocks, group_of, is_embedding, layer_of, parse_group_spec
from tandem.models.resolve import adapter_base, is_adapter_dir, is_model_dir


def _r(x: float) -> float:
    return float(round(x, 10))


def mergekit_reference(model: str | Path) -> str:
    """What mergekit can load for ``model`` (see the module docstring)."""
    p = Path(model).expanduser()
    if not p.is_dir():
        return str(model)
    if not is_model_dir(p) and is_model_dir(p / "final"):
        p = p / "final"
    if not is_adapter_dir(p):
        return str(p)
    if (p / "merged" / "config.json").is_file():
        return str(p / "merged")
    base = mergekit_reference(adapter_base(p))
    if "+" in base or "+" in str(p):
        raise ValueError(f"{p}: mergekit cannot load a LoRA adapter on top of {base!r} (it reads 'base+adapter' "
                         "with one adapter and no '+' in the paths); merge the adapter first (tandem merge or "
                         "save_merged: true) and export the merged model")
    return f"{base}+{p}"


def mergekit_config(
    base: str,
    tuned: str,
    param_names: Iterable[str],
    group_spec: str,
    alphas: Sequence[float],
    head_alpha: float | None = None,
    dtype: str = "float32",
) -> dict:
    """The mergekit config as a dict (see the module docstring); ``base`` and ``tuned`` go through
    :func:`mergekit_reference`."""
    names = list(param_names)
    alphas = [float(a) for a in alphas]
    gmap, n_groups = group_of(names, group_spec)
    if len(alphas) != n_groups:
        raise ValueError(f"group spec {group_spec!r} makes {n_groups} groups but {len(alphas)} alphas were given")
    h = sum(alphas) / len(alphas) if head_alpha is None else float(head_alpha)
    prefix, n_layers = find_blocks(names)
    groups = parse_group_spec(group_spec, n_layers)
    tuned_w: list[dict] = []
    if len(set(alphas) | {h}) > 1:
        for g, layers in enumerate(groups):
            for i in layers:
                tuned_w.append({"filter": f"{prefix}.{i}.", "value": _r(alphas[g])})
        for n in names:
            if layer_of(n, prefix) is None and is_embedding(n) and gmap[n] == 0:
                tuned_w.append({"filter": n, "value": _r(alphas[0])})
    tuned_w.append({"value": _r(h)})
    base_w = [{**e, "value": _r(1.0 - e["value"])} for e in tuned_w]

    def simplify(ws: list[dict]):
        return ws[0]["value"] if len(ws) == 1 else ws

    return {
        "merge_method": "linear",
        "models": [
            {"model": mergekit_reference(base), "parameters": {"weight": simplify(base_w)}},
            {"model": mergekit_reference(tuned), "parameters": {"weight": simplify(tuned_w)}},
        ],
        "parameters": {"normalize": False},
        "dtype": dtype,
    }


def write_mergekit_config(path: str | Path, *args, **kwargs) -> Path:
    """Write :func:`mergekit_config` as YAML (with a comment stating the alpha convention)."""
    cfg = mergekit_config(*args, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Written by tandem: theta = (1 - alpha) * base + alpha * tuned per tensor (alpha = tuned weight).\n"
        "# Reproduce with: mergekit-yaml " + path.name + " OUTPUT_DIR\n"
    )
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path
