"""Per-sequence log-probabilities from a (packed or padded) batch.

See docs/architecture.md for the batch contract. Labels are unshifted: ``labels[r, t]`` is the id of the
token at position ``t``, predicted from the hidden state at ``t - 1``. Logits are computed only where a label
exists, so the ``[rows, length, vocab]`` tensor is never built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tandem.models.scoring import additive_mask, body_inputs, compute_dtype  # noqa: F401 (re-exported)

IGNORE = -100


def forward_hidden(model, batch: dict) -> torch.Tensor:
    """Last hidden states ``[R, T, H]`` of the decoder body (``model.get_decoder()``, no LM head) of a causal LM,
    plain or peft-wrapped, called with :func:`body_inputs`."""
    return model.get_decoder()(**body_inputs(model, batch)).last_hidden_state


_forward_hidden = forward_hidden  # older private name, still imported by the PPO rollout code


def token_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every labelled token and the sequence each belongs to.

    Returns ``(logps[N], seq_index[N])`` over the N labelled positions of the batch, in row-major order.
    """
    hidden = forward_hidden(model, batch)
    labels = batch["labels"]
    target = labels[:, 1:]
    mask = target != IGNORE
    h = hidden[:, :-1][mask]  # [N, H]: hidden state that predicts each labelled token
    logps = head_logps(model.get_output_embeddings(), h, target[mask])
    seq = batch["seq_ids"][:, 1:][mask]
    return logps, seq


def head_logps(head: torch.nn.Module, h: torch.Tensor, target: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``log softmax(head(h))[i, target[i]]`` in fp32 for every row of ``h`` ``[N, H]``, in chunks of rows.

    A plain bias-free ``nn.Linear`` head (every causal LM's, tied or not) goes through :class:`ChunkedLinearLogp`
    (no logits kept for the backward); any other head (e.g. a LoRA-wrapped one) through activation checkpointing
    per chunk. Both give the values and gradients of ``-cross_entropy(head(h).float(), target)``.
    """
    linear = type(head) is torch.nn.Linear and head.bias is None  # exactly nn.Linear: subclasses may pack weights
    chunk = chunk or (chunk_rows(head.weight.shape[0]) if linear else 1024)
    if linear:
        return chunked_logps(h, head.weight, target, chunk)
    if h.shape[0] <= chunk or not torch.is_grad_enabled():
        return torch.cat([_plain_logps(head, h[s : s + chunk], target[s : s + chunk])
                          for s in range(0, max(h.shape[0], 1), chunk)])
    return torch.cat([checkpoint(_plain_logps, head, h[s : s + chunk], target[s : s + chunk], use_reentrant=False)
                      for s in range(0, h.shape[0], chunk)])


def _plain_logps(head, h, target):
    return -F.cross_entropy(head(h).float(), target, reduction="none")


CHUNK_ELEMENTS = 2**26  # fp32 logits of one chunk: 256 MiB (1365 rows of a 49k vocabulary)


def chunk_rows(vocab: int) -> int:
    """Rows per chunk: ``CHUNK_ELEMENTS / vocab``, at least 64."""
    return max(64, CHUNK_ELEMENTS // max(vocab, 1))


def chunked_logps(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
    """:class:`ChunkedLinearLogp` (log-probs of ``target`` under ``softmax(h @ weight.T)``, fp32), chunk rows at a time."""
    want_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return ChunkedLinearLogp.apply(h, weight, target, chunk, want_grad)


class ChunkedLinearLogp(torch.autograd.Function):
    """``logp[i] = (h_i . W_t) - logsumexp_v(h_i . W_v)`` with ``t = target[i]``, chunk rows at a time.

    Forward keeps only ``h``, ``W``, the targets and the per-row log-sum-exp. The gradient of ``logp[i]`` with respect
    to row i's logits is ``onehot(t) - softmax_i``, so the backward recomputes each chunk's logits and multiplies:
    ``dh = D @ W``, ``dW = D^T @ h`` with ``D = g[:, None] * (onehot - softmax)``. When ``W`` is frozen (LoRA), ``dh``
    is computed in the forward instead (per row, unscaled; the backward only multiplies it by ``g``), so there is no
    second pass over the vocabulary. Logits and softmax are fp32; the matmuls run in the weights' dtype (or the
    autocast dtype).
    """

    @staticmethod
    def forward(ctx, h, weight, target, chunk, want_grad):
        dev = h.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
        hc, wc = h.to(dtype), weight.to(dtype)
        n = h.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=h.device)
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        early = want_grad and ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]
        dh = torch.empty_like(hc) if early else None
        with torch.autocast(dev, enabled=False):
            for s in range(0, n, chunk):
                logits = F.linear(hc[s : s + chunk], wc).float()
                lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
                out[s : s + chunk] = logits.gather(1, target[s : s + chunk, None]).squeeze(1) - lse[s : s + chunk]
                if early:
                    d = _softmax_grad(logits, lse[s : s + chunk], target[s : s + chunk], None)
                    dh[s : s + chunk] = d.to(dtype) @ wc
        if want_grad:
            ctx.save_for_backward(hc, wc, target, lse, dh)
            ctx.chunk, ctx.early, ctx.dtypes = chunk, early, (h.dtype, weight.dtype)
        return out

    @staticmethod
    def backward(ctx, g):
        hc, wc, target, lse, dh_early = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        if ctx.early:
            return (dh_early * g[:, None].to(dh_early.dtype)).to(h_dtype), None, None, None, None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = torch.empty_like(hc) if need_h else None
        dw = torch.zeros(wc.shape, dtype=torch.float32, device=wc.device) if need_w else None
        with torch.autocast(hc.device.type, enabled=False):
            for s in range(0, hc.shape[0], ctx.chunk):
                logits = F.linear(hc[s : s + ctx.chunk], wc).float()
                d = _softmax_grad(logits, lse[s : s + ctx.chunk], target[s : s + ctx.chunk], g[s : s + ctx.chunk])
                d = d.to(wc.dtype)
                if need_h:
                    dh[s : s + ctx.chunk] = d @ wc
                if need_w:
                    dw += (d.T @ hc[s : s + ctx.chunk]).float()
        return (dh.to(h_dtype) if need_h else None), (dw.to(w_dtype) if need_w else None), None, None, None


def _softmax_grad(logits: torch.Tensor, lse: torch.Tensor, target: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """``g[:, None] * (onehot(target) - softmax(logits))`` in place of ``logits`` (``g`` None: 1)."""
    d = logits.sub_(lse[:, None]).exp_().neg_()
    d.scatter_add_(1, target[:, None], torch.ones_like(lse)[:, None])
    if g is not None:
        d.mul_(g.float()[:, None])
    return d


def sequence_logps(model, batch: dict, num_seqs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of labelled tokens per sequence, and the number of labelled tokens per sequence.

    Returns ``(logp_sum[S], n_tokens[S])``.
    """
    logps, seq = token_logps(model, batch)
    if num_seqs is None:
        num_seqs = int(batch["seq_ids"].max().item()) + 1
    out = torch.zeros(num_seqs, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)
    count = torch.zeros(num_seqs, dtype=logps.dtype, device=logps.device).index_add(0, seq, torch.ones_like(logps))
    return out, count


def pair_logps(model, batch: dict, num_pairs: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(logp_sum[2B], n_tokens[2B], B)`` of a preference batch: chosen sequences ``0..B-1``, rejected
    ``B..2B-1``. ``B`` is read from the batch's sequence ids unless given."""
    if num_pairs is None:
        n = int(batch["seq_ids"].max()) + 1
        if n % 2:
            raise ValueError(f"preference batch has {n} sequences; it must have 2B (chosen then rejected)")
        num_pairs = n // 2
    s, count = sequence_logps(model, batch, num_seqs=2 * num_pairs)
    return s, count, num_pairs
