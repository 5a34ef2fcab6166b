"""Per-token view of gradient entanglement: which chosen tokens pull with which rejected tokens.

For one pair, ``g_w,i = grad log pi(y_w,i | x, y_w,<i)`` for each response token ``i`` of the chosen response
(first ``max_tokens``), and ``g_l,j`` likewise for the rejected response. The result is the cosine matrix
``C[i, j] = <g_w,i, g_l,j> / (||g_w,i|| ||g_l,j||)`` of shape ``[n_chosen_tokens, n_rejected_tokens]``. Tokens
of a shared prefix have identical gradients (cosine 1); the interesting entries are the shared tokens *after*
the responses differ, whose gradients nearly coincide but do not cancel in the margin.

Cost: each response is run once (graph retained); the selected parameters are cut into chunks so that the
per-token gradients of one chunk, ``(n_w + n_l) x chunk`` values, fit in ``max_bytes`` (float32); per chunk
there is one ``torch.autograd.grad`` per token, so ``n_chunks * (n_w + n_l)`` backwards in all. Keep
``max_tokens`` small (32 per side by default) or pick a parameter subset (``params``) for big models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tandem.objectives.logprobs import token_logps
from tandem.probes.entanglement import chunks, probing, select_params, single_sequence

IGNORE = -100


def _labelled_ids(feature: dict, side: str) -> list[int]:
    return [t for t in feature[f"{side}_labels"][1:] if t != IGNORE]


def token_cosines(model, feature: dict, batch_fn, params: str = "all", max_tokens: int = 32,
                  max_bytes: int = 1 << 30) -> dict:
    """``{"cosine": [n_w, n_l], "dot": [n_w, n_l], "norm_w": [n_w], "norm_l": [n_l], "chosen_ids",
    "rejected_ids", "logp_w": [n_w], "logp_l": [n_l]}`` for the first ``max_tokens`` response tokens of each
    side (tensors on CPU, float64). See the module docstring for the cost."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    tensors = [p for _, p in select_params(model, params)]
    with probing(model, tensors), torch.enable_grad():
        tok_lp = {}
        for side in ("chosen", "rejected"):
            lp, _ = token_logps(model, batch_fn([single_sequence(feature, side)]))
            tok_lp[side] = lp[:max_tokens]
        lw, ll = tok_lp["chosen"], tok_lp["rejected"]
        nw, nl = lw.numel(), ll.numel()
        per_chunk = max(1, max_bytes // (4 * max(nw + nl, 1)))
        dot = torch.zeros(nw, nl, dtype=torch.float64)
        sq_w = torch.zeros(nw, dtype=torch.float64)
        sq_l = torch.zeros(nl, dtype=torch.float64)
        for group in chunks(tensors, per_chunk):
            gw = _token_grads(lw, group)  # [nw, m]
            gl = _token_grads(ll, group)  # [nl, m]
            dot += (gw @ gl.T).double().cpu()
            sq_w += gw.double().pow(2).sum(1).cpu()
            sq_l += gl.double().pow(2).sum(1).cpu()
            del gw, gl
    norm_w, norm_l = sq_w.sqrt(), sq_l.sqrt()
    denom = norm_w[:, None] * norm_l[None, :]
    cos = torch.where(denom > 0, dot / denom.clamp(min=1e-300), torch.zeros_like(dot))
    return {
        "cosine": cos, "dot": dot, "norm_w": norm_w, "norm_l": norm_l,
        "chosen_ids": _labelled_ids(feature, "chosen")[:nw], "rejected_ids": _labelled_ids(feature, "rejected")[:nl],
        "logp_w": lw.detach().double().cpu(), "logp_l": ll.detach().double().cpu(),
    }


def _token_grads(token_lp: torch.Tensor, group: list[torch.Tensor]) -> torch.Tensor:
    """``[n_tokens, numel(group)]``: the flattened gradient of each token's log-prob over one chunk."""
    rows = []
    for t in range(token_lp.numel()):
        g = torch.autograd.grad(token_lp[t], group, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                               for x, p in zip(g, group)]))
    return torch.stack(rows)


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Readable axis labels: each id decoded alone (whitespace shown as ``·``/``⏎``), with its position."""
    out = []
    for i, t in enumerate(ids):
        s = tokenizer.decode([t]) if tokenizer is not None else str(t)
        s = s.replace("\n", "⏎").replace(" ", "·") or repr(s)
        out.append(f"{i}:{s[:12]}")
    return out


def plot_token_heatmap(result: dict, tokenizer, out_png: str | Path, title: str = "Per-token gradient cosine") -> Path:
    """Heatmap PNG of ``result["cosine"]`` (from :func:`token_cosines`): chosen tokens down, rejected tokens
    across, cell = cos(grad log p(chosen token i), grad log p(rejected token j)), a diverging colour scale fixed
    to [-1, 1] and a colorbar."""
    from tandem.io.figures import plt, save_figure

    cos = result["cosine"].numpy()
    yl, xl = token_labels(tokenizer, result["chosen_ids"]), token_labels(tokenizer, result["rejected_ids"])
    nw, nl = cos.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 0.28 * nl), max(4.0, 1.5 + 0.28 * nw)))
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(nl), xl, rotation=90, fontsize=7)
    ax.set_yticks(range(nw), yl, fontsize=7)
    ax.set_xlabel("rejected response token")
    ax.set_ylabel("chosen response token")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="gradient cosine")
    fig.tight_layout()
    return save_figure(fig, out_png)
