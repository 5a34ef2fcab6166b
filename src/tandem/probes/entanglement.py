"""Gradient entanglement of preference pairs: how the chosen and rejected log-prob gradients interact.

For a pair with responses ``y_w`` (chosen) and ``y_l`` (rejected), let ``g_w = grad log pi(y_w|x)`` and
``g_l = grad log pi(y_l|x)`` (gradients of the *summed* response log-probs with respect to a selection of
parameters). A margin loss such as DPO moves the parameters along ``d_w g_w - d_l g_l`` (per-pair weights
``d_w, d_l > 0``; DPO has ``d_w = d_l = beta sigmoid(-beta h)``). To first order in the step size eta:

    delta log pi(y_w) = eta (d_w ||g_w||^2 - d_l <g_w, g_l>)
    delta log pi(y_l) = eta (d_w <g_w, g_l> - d_l ||g_l||^2)

so, with ``ratio = d_w / d_l``,

    chosen_falls:    <g_w, g_l> > ratio * ||g_w||^2        (the chosen log-prob goes down)
    rejected_rises:  <g_w, g_l> > ||g_l||^2 / ratio        (the rejected log-prob goes up)

(the rejected condition uses ``||g_l||^2``, not ``||g_w||^2``). Both cannot hold at once for ``ratio = 1``
(``<g_w,g_l> <= ||g_w|| ||g_l|| <= max(||g_w||^2, ||g_l||^2)``); the usual failure is that the chosen
log-prob falls while the rejected one falls faster.

Memory: the two gradients are never concatenated into one vector. Each sequence is run alone (a batch of one
sequence through ``batch_fn``, log-prob from :func:`tandem.objectives.sequence_logps`) and the selected
parameters are processed in chunks of at most ``chunk_numel`` elements: per chunk, ``torch.autograd.grad`` of
``log pi(y_w)`` and of ``log pi(y_l)`` (graphs retained), then ``<g_w, g_l>``, ``||g_w||^2``, ``||g_l||^2``
are accumulated tensor by tensor in float64. Peak extra memory: two chunks of gradients plus the two
sequences' activations; cost per pair: two forwards and ``2 * n_chunks`` backwards. ``.grad`` is never touched
and the model's train/eval mode and ``requires_grad`` flags are restored.
"""

from __future__ import annotations

import math
import re
import statistics
from contextlib import contextmanager

import torch

from tandem.objectives.logprobs import sequence_logps

DEFAULT_CHUNK_NUMEL = 1 << 27  # 128M elements: 512 MiB of float32 gradient per side


def select_params(model, params: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters picked by ``params``: ``"all"`` (every floating-point parameter), ``"lora"`` (names
    containing ``lora_``) or a regular expression searched in each name (``re.search``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if params == "all":
        out = named
    elif params == "lora":
        out = [(n, p) for n, p in named if "lora_" in n]
    else:
        try:
            pat = re.compile(params)
        except re.error as e:
            raise ValueError(f"params {params!r}: not 'all', 'lora' or a valid regular expression ({e})") from None
        out = [(n, p) for n, p in named if pat.search(n)]
    if not out:
        raise ValueError(f"params {params!r} selects no parameter of {type(model).__name__}"
                         + (" (the model has no LoRA adapter)" if params == "lora" else ""))
    return out


def chunks(tensors: list[torch.Tensor], chunk_numel: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of tensors with at most ``chunk_numel`` elements each (a bigger tensor is alone)."""
    out, cur, n = [], [], 0
    for t in tensors:
        if cur and n + t.numel() > chunk_numel:
            out.append(cur)
            cur, n = [], 0
        cur.append(t)
        n += t.numel()
    if cur:
        out.append(cur)
    return out


@contextmanager
def probing(model, tensors: list[torch.Tensor]):
    """Eval mode and ``requires_grad=True`` on ``tensors`` inside the block; both restored afterwards."""
    was_training = model.training
    flags = [t.requires_grad for t in tensors]
    model.eval()
    try:
        for t in tensors:
            t.requires_grad_(True)
        yield
    finally:
        for t, f in zip(tensors, flags):
            t.requires_grad_(f)
        model.train(was_training)


def single_sequence(feature: dict, side: str) -> dict:
    """The chosen (``side="chosen"``) or rejected response of a preference feature as a one-sequence feature."""
    return {"input_ids": feature[f"{side}_input_ids"], "labels": feature[f"{side}_labels"]}


def conditions(dot: float, norm_w: float, norm_l: float, ratio: float = 1.0) -> tuple[bool, bool]:
    """``(chosen_falls, rejected_rises)``: ``dot > ratio * norm_w^2`` and ``dot > norm_l^2 / ratio``, with
    ``ratio = d_w / d_l`` the ratio of the loss's per-pair weights on the chosen and rejected log-probs."""
    if not ratio > 0:
        raise ValueError(f"ratio = d_w / d_l must be > 0, got {ratio}")
    return bool(dot > ratio * norm_w**2), bool(dot > norm_l**2 / ratio)


def pair_inner_products(model, feature: dict, batch_fn, tensors: list[torch.Tensor],
                        chunk_numel: int = DEFAULT_CHUNK_NUMEL) -> dict:
    """``{"dot", "sq_w", "sq_l", "logp_w", "logp_l", "n_w", "n_l"}`` for one pair, chunk by chunk (see the
    module docstring). ``tensors`` must require grad (use :func:`probing`)."""
    lp = {}
    for side in ("chosen", "rejected"):
        s, count = sequence_logps(model, batch_fn([single_sequence(feature, side)]), num_seqs=1)
        lp[side] = (s[0], float(count[0]))
    (lw, n_w), (ll, n_l) = lp["chosen"], lp["rejected"]
    dot = sq_w = sq_l = 0.0
    groups = chunks(tensors, chunk_numel)
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        gw = torch.autograd.grad(lw, group, retain_graph=True, allow_unused=True)
        gl = torch.autograd.grad(ll, group, retain_graph=not last, allow_unused=True)
        for a, b in zip(gw, gl):
            if a is not None:
                sq_w += float(a.double().pow(2).sum())
            if b is not None:
                sq_l += float(b.double().pow(2).sum())
            if a is not None and b is not None:
                dot += float((a.double() * b.double()).sum())
        del gw, gl
    return {"dot": dot, "sq_w": sq_w, "sq_l": sq_l, "logp_w": float(lw.detach()), "logp_l": float(ll.detach()),
            "n_w": n_w, "n_l": n_l}


def pair_row(ip: dict, ratio: float = 1.0) -> dict:
    """A report row from :func:`pair_inner_products`: dot, norms, cosine, the two conditions, log-probs."""
    norm_w, norm_l = math.sqrt(ip["sq_w"]), math.sqrt(ip["sq_l"])
    denom = norm_w * norm_l
    falls, rises = conditions(ip["dot"], norm_w, norm_l, ratio)
    return {
        "dot": ip["dot"],
        "norm_w": norm_w,
        "norm_l": norm_l,
        "cosine": ip["dot"] / denom if denom > 0 else 0.0,
        "chosen_falls": falls,
        "rejected_rises": rises,
        "logp_w": ip["logp_w"],
        "logp_l": ip["logp_l"],
        "n_tokens_w": ip["n_w"],
        "n_tokens_l": ip["n_l"],
    }


def entanglement_stats(model, features: list[dict], batch_fn, params: str = "all", pairs: int | None = None,
                       ratio: float = 1.0, chunk_numel: int = DEFAULT_CHUNK_NUMEL, on_pair=None) -> list[dict]:
    """One row per pair (the first ``pairs`` features; all when ``None``): ``index``, ``dot``, ``norm_w``,
    ``norm_l``, ``cosine``, ``chosen_falls``, ``rejected_rises``, ``logp_w``, ``logp_l``, token counts.

    ``batch_fn`` turns a list of one-sequence features ``{"input_ids", "labels"}`` into a batch on the model's
    device (e.g. :func:`tandem.data.collate`). ``on_pair(i, row)`` is called after each pair (progress bars, writing
    rows as they come).
    """
    if chunk_numel < 1:
        raise ValueError(f"chunk_numel must be >= 1, got {chunk_numel}")
    feats = features if pairs is None else features[:pairs]
    if not feats:
        raise ValueError("entanglement_stats: no preference features")
    if "chosen_input_ids" not in feats[0]:
        raise ValueError("entanglement_stats needs preference features (chosen_input_ids / rejected_input_ids)")
    tensors = [p for _, p in select_params(model, params)]
    rows = []
    with probing(model, tensors), torch.enable_grad():
        for i, f in enumerate(feats):
            rows.append({"index": i, **pair_row(pair_inner_products(model, f, batch_fn, tensors, chunk_numel), ratio)})
            if on_pair is not None:
                on_pair(i, rows[-1])
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means of dot / norms / cosine / log-probs, median cosine, and the fraction of pairs meeting each
    condition (``frac_chosen_falls``, ``frac_rejected_rises``, ``frac_either``)."""
    if not rows:
        raise ValueError("summarize: no rows")
    mean = lambda k: statistics.fmean(float(r[k]) for r in rows)  # noqa: E731
    frac = lambda k: sum(bool(r[k]) for r in rows) / len(rows)  # noqa: E731
    return {
        "pairs": len(rows),
        "mean_dot": mean("dot"),
        "mean_norm_w": mean("norm_w"),
        "mean_norm_l": mean("norm_l"),
        "mean_cosine": mean("cosine"),
        "median_cosine": statistics.median(float(r["cosine"]) for r in rows),
        "frac_chosen_falls": frac("chosen_falls"),
        "frac_rejected_rises": frac("rejected_rises"),
        "frac_either": sum(bool(r["chosen_falls"] or r["rejected_rises"]) for r in rows) / len(rows),
        "mean_logp_w": mean("logp_w"),
        "mean_logp_l": mean("logp_l"),
    }
