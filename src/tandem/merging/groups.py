"""Which merge ratio each tensor gets: transformer-block discovery and group specs.

Convention used everywhere in :mod:`tandem.merging`::

    theta = (1 - alpha) * theta_0 + alpha * theta_1        (per tensor)

with ``theta_0`` the model *before* preference training and ``theta_1`` the model *after* it. So
``alpha = 1`` is the tuned model and ``alpha = 0`` the starting model. (Some papers and tools use the opposite
convention, with alpha the weight of the *starting* model; check before copying numbers across.)

Blocks
------
The transformer blocks are found from parameter names with the regex ``\\.(layers|h|blocks|block)\\.(\\d+)\\.``
(llama-style ``model.layers.N.``, gpt2-style ``transformer.h.N.``, ...). If nothing matches, the prefix
``<something>.<N>.`` with the most distinct indices N is used (the module list with the most repeated blocks).

Group specs
-----------
- ``"blockK"``: K contiguous groups of layers (``"block3"`` by default). When the number of layers L is not
  divisible by K, the remainder ``L % K`` is spread one extra layer each over the *first* groups
  (``numpy.array_split`` rule): 7 layers with block3 -> ``0-2, 3-4, 5-6``.
- ``"blockK-tail"``: the same K groups of ``L // K`` layers, the remainder all in the *last* group (the authors'
  release of heterogeneous model averaging: 26 layers with block3-tail -> ``0-7, 8-15, 16-25``, where block3 gives
  ``0-8, 9-17, 18-25``).
- ``"layerwise"``: one group per layer.
- explicit ranges: ``"0-9,10-19,20-29"`` (inclusive; single layers like ``"5"`` allowed). Every layer must be
  covered exactly once.

Tensors outside the blocks
--------------------------
- embeddings (names containing ``embed``, ``wte``, ``wpe``, ``word_embeddings``, ``position_embeddings``)
  follow the **first** group's alpha;
- everything else outside the blocks (final norm, LM head, ...) follows ``head_alpha``, which defaults to
  the **mean of the group alphas** when not set;
- tied weights (LM head tied to the input embedding) are one tensor: pass parameter names from
  ``model.named_parameters()`` (which lists a tied tensor once, under the embedding name), so a tied head
  follows the embedding rule. :func:`tied_names` lists the aliases if you start from a state dict.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

BLOCK_RE = re.compile(r"^(.*?)\.(layers|h|blocks|block)\.(\d+)\.")
_GENERIC_RE = re.compile(r"^(.*?)\.(\d+)\.")
EMBED_MARKERS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings")


class GroupSpecError(ValueError):
    """A group spec or alpha list that does not fit the model."""


def find_blocks(param_names: Iterable[str]) -> tuple[str, int]:
    """The prefix of the transformer block list and the number of blocks.

    Returns ``(prefix, n_layers)`` where a block parameter name starts with ``f"{prefix}.{i}."``; for example
    ``("model.layers", 30)`` for llama or ``("transformer.h", 12)`` for gpt2.
    """
    names = list(param_names)
    for regex, key in ((BLOCK_RE, lambda m: f"{m.group(1)}.{m.group(2)}"), (_GENERIC_RE, lambda m: m.group(1))):
        found: dict[str, set[int]] = defaultdict(set)
        for n in names:
            m = regex.match(n)
            if m:
                found[key(m)].add(int(m.group(m.lastindex)))
        if found:
            prefix, idx = max(found.items(), key=lambda kv: len(kv[1]))
            n = max(idx) + 1
            if sorted(idx) != list(range(n)):
                missing = sorted(set(range(n)) - idx)
                raise GroupSpecError(f"blocks under {prefix!r}: indices {missing} missing from the parameter names")
            return prefix, n
    raise GroupSpecError(
        "no transformer block list found in the parameter names (expected names like 'model.layers.0.…' or "
        f"'transformer.h.0.…'); first names: {names[:5]}"
    )


def layer_of(name: str, prefix: str) -> int | None:
    """Block index of a parameter name, or None when it is outside the block list."""
    head = prefix + "."
    if not name.startswith(head):
        return None
    rest = name[len(head):]
    idx = rest.split(".", 1)[0]
    return int(idx) if idx.isdigit() else None


def parse_group_spec(spec: str, n_layers: int) -> list[list[int]]:
    """Layer indices of each group (see the module docstring for the spec syntax and remainder rule)."""
    s = spec.strip().lower()
    if n_layers < 1:
        raise GroupSpecError(f"group spec {spec!r}: model has no layers")
    if s == "layerwise":
        return [[i] for i in range(n_layers)]
    m = re.fullmatch(r"block(\d+)(-tail)?", s)
    if m:
        k, tail = int(m.group(1)), m.group(2) is not None
        if not 1 <= k <= n_layers:
            raise GroupSpecError(f"group spec {spec!r}: need 1 <= K <= {n_layers} (number of layers), got K={k}")
        base, extra = divmod(n_layers, k)
        groups, start = [], 0
        for g in range(k):
            size = base + (extra if g == k - 1 else 0) if tail else base + (1 if g < extra else 0)
            groups.append(list(range(start, start + size)))
            start += size
        return groups
    groups = []
    for part in s.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
        if not m:
            raise GroupSpecError(
                f"group spec {spec!r}: cannot read {part!r}; use 'blockK', 'blockK-tail', 'layerwise' or ranges like '0-9,10-19'"
            )
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b or b >= n_layers:
            raise GroupSpecError(f"group spec {spec!r}: range {part!r} is not inside 0-{n_layers - 1}")
        groups.append(list(range(a, b + 1)))
    seen = [i for g in groups for i in g]
    dup = sorted({i for i in seen if seen.count(i) > 1})
    missing = sorted(set(range(n_layers)) - set(seen))
    if dup or missing:
        raise GroupSpecError(
            f"group spec {spec!r}: every layer 0-{n_layers - 1} must be in exactly one group"
            + (f"; in several: {dup}" if dup else "")
            + (f"; in none: {missing}" if missing else "")
        )
    return groups


def is_embedding(name: str) -> bool:
    return any(mk in name for mk in EMBED_MARKERS)


def group_of(param_names: Iterable[str], group_spec: str) -> tuple[dict[str, int | None], int]:
    """Group index per tensor (``None`` = follows ``head_alpha``) and the number of groups."""
    names = list(param_names)
    prefix, n_layers = find_blocks(names)
    groups = parse_group_spec(group_spec, n_layers)
    layer_group = {layer: g for g, layers in enumerate(groups) for layer in layers}
    out: dict[str, int | None] = {}
    for n in names:
        layer = layer_of(n, prefix)
        if layer is not None:
            out[n] = layer_group[layer]
        elif is_embedding(n):
            out[n] = 0
        else:
            out[n] = None
    return out, len(groups)


def check_alphas(alphas: Sequence[float], what: str = "alpha") -> list[float]:
    """``alphas`` as floats; ``ValueError`` naming the value when one is NaN, infinite or not a number
    (a NaN alpha would write a model whose merged tensors are all NaN)."""
    out = []
    for i, a in enumerate(alphas):
        try:
            x = float(a)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {a!r} is not a number") from None
        if not math.isfinite(x):
            where = f" (group {i})" if len(alphas) > 1 else ""
            raise ValueError(f"{what}: must be a finite number, got {a!r}{where}")
        out.append(x)
    return out


def tensor_alphas(
    param_names: Iterable[str],
    group_spec: str,
    alphas: Sequence[float],
    head_alpha: float | None = None,
) -> dict[str, float]:
    """Alpha of every tensor: block tensors take their group's alpha, embeddings the first group's,
    the rest (final norm, LM head) ``head_alpha`` (default: mean of ``alphas``).

    ``theta = (1 - alpha) * theta_0 + alpha * theta_1``. Every alpha must be finite (``ValueError``).
    """
    alphas = check_alphas(alphas, "alphas")
    if head_alpha is not None:
        head_alpha = check_alphas([head_alpha], "head_alpha")[0]
    gmap, n_groups = group_of(param_names, group_spec)
    if len(alphas) != n_groups:
        raise GroupSpecError(f"group spec {group_spec!r} makes {n_groups} groups but {len(alphas)} alphas were given")
    h = sum(alphas) / len(alphas) if head_alpha is None else float(head_alpha)
    return {n: (h if g is None else alphas[g]) for n, g in gmap.items()}


def describe_groups(param_names: Iterable[str], group_spec: str) -> list[str]:
    """Human-readable layer ranges of each group, e.g. ``['0-1', '2-3', '4-5']``."""
    _, n = find_blocks(param_names)
    return [f"{g[0]}-{g[-1]}" if len(g) > 1 else f"{g[0]}" for g in parse_group_spec(group_spec, n)]


def tied_names(model) -> dict[str, str]:
    """``{alias: canonical}`` for state-dict keys that share storage with an earlier parameter
    (e.g. ``{"lm_head.weight": "model.embed_tokens.weight"}`` in a tied model)."""
    canonical: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(p), n)
    return {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if canonical[id(p)] != n}

