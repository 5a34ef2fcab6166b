"""Normalized preference optimisation: step along ``g_w/||g_w|| - g_l/||g_l||`` for every pair.

With ``g_w = grad log pi(y_w|x)`` and ``g_l = grad log pi(y_l|x)`` (summed response log-probs, gradients over
the trainable parameters), DPO moves the parameters along ``d (g_w - g_l)``, which lowers ``log pi(y_w)``
whenever ``<g_w, g_l> > ||g_w||^2`` (gradient entanglement, see ``tandem.probes.entanglement``). Moving along
``u_w - u_l`` with ``u = g / ||g||`` instead gives, to first order in the step eta,

    delta log pi(y_w) = eta ||g_w|| (1 - cos(g_w, g_l)) >= 0
    delta log pi(y_l) = eta ||g_l|| (cos(g_w, g_l) - 1) <= 0

so the chosen log-prob never falls and the rejected never rises (for that pair's own contribution; across
pairs of a batch the directions add up and the guarantee holds only on average).

Surrogate loss, per pair ``i``, with norms detached (``eps`` guards a zero norm):

    loss_i = -c_i * (logp_w / ||g_w|| - logp_l / ||g_l||)
    c_i    = sigmoid(-beta h_i) * s_i        (weight; ``beta=None`` drops the sigmoid factor, c_i = s_i)
    h_i    = (logp_w - ref_w) - (logp_l - ref_l)     (DPO's log-ratio margin; needs reference log-probs)

so ``-grad loss_i = c_i (u_w - u_l)``. ``sigmoid(-beta h)`` is DPO's per-pair weight without its factor beta: it
fades out pairs that are already well separated, which keeps the loss bounded. The scale ``s_i`` (a positive
per-pair scalar: the direction is unchanged) is set by ``rescale``. Compare with DPO, whose step on a pair is
``beta sigmoid(-beta h) (g_w - g_l)``; on a pair with ``||g_w|| = ||g_l|| = G``, ``G (u_w - u_l) = g_w - g_l``:

    rescale          s_i                            gradient norm / DPO's, on a pair with ||g_w|| = ||g_l||
    "none" (false)   1                              1 / (beta G)   (unit-vector steps: ||grad|| <= 2 c_i)
    "norm" (true)    (||g_w|| + ||g_l||) / 2        1 / beta       (10 at beta 0.1; the default)
    "dpo"            beta (||g_w|| + ||g_l||) / 2   1              (DPO-sized steps: DPO learning rates carry over)

``"norm"`` is the default for continuity with earlier runs (its learning rate is beta times DPO's for the same
step); ``"dpo"`` needs ``beta``. With ``beta: null`` and ``"norm"`` the step on an equal-norm pair is that of
``-(logp_w - logp_l)``. The loss is the mean over pairs.

Cost: the norms are per pair. Each response is run as its own one-sequence forward (cut out of the packed
batch), and ``torch.autograd.grad`` of each response's log-prob over the trainable parameters (graph retained)
gives ``||g_w||``, ``||g_l||`` and ``<g_w, g_l>``; the engine's backward then reuses the same graphs. Per
pair: the same forward FLOPs as DPO (unpacked), plus two extra backwards, so about twice DPO's backward
compute; extra memory: two transient gradient-sized buffers (tiny with LoRA, 2x the trainable weights in
full fine-tuning) and the activations of the whole batch kept until the final backward (as in DPO).

Caveats: ``torch.autograd.grad`` needs graphs that can be traversed twice, so no reentrant gradient
checkpointing. Under DDP (several processes) the extra ``autograd.grad`` calls happen inside the wrapped
forward on the unwrapped parameters; they do not touch ``.grad`` nor fire DDP's gradient hooks, and each
pair's norms are local to the process that holds it, so the all-reduce still happens once, in the engine's
backward. Checked once with ``accelerate launch --num_processes 2 --cpu`` (gloo): the same losses as one
process for the same global batch; not checked on GPUs (NCCL) nor with FSDP/DeepSpeed, where parameters are
sharded and ``autograd.grad`` on them would not give full per-pair norms.

Metrics: ``loss`` (the surrogate: only its gradient means something), ``dpo_loss`` (DPO's sigmoid loss at the
same margin, when references are used), ``chosen_logp``, ``rejected_logp``, ``rewards/margin`` (``h``, when references are used),
``rewards/accuracy``, ``grad/norm_chosen``, ``grad/norm_rejected``, ``grad/cosine`` (means over pairs) and
``grad/frac_chosen_falls`` (fraction of pairs where plain DPO would lower the chosen log-prob).
"""

from __future__ import annotations

import torch

from tandem.objectives.dpo import DPO, REF_KEYS, dpo_loss
from tandem.objectives.logprobs import sequence_logps

RESCALE = ("none", "norm", "dpo")

def split_sequences(batch: dict, num_seqs: int) -> list[dict]:
    """One unpadded single-sequence batch per sequence id ``0..num_seqs-1`` of a packed or padded batch."""
    out = []
    seq_ids = batch["seq_ids"]
    for k in range(num_seqs):
        where = (seq_ids == k).nonzero()
        if where.numel() == 0:
            raise ValueError(f"split_sequences: batch has no token for seq id {k}")
        row = int(where[0, 0])
        cols = where[:, 1][where[:, 0] == row]
        out.append({
            "input_ids": batch["input_ids"][row, cols][None],
            "labels": batch["labels"][row, cols][None],
            "position_ids": batch["position_ids"][row, cols][None],
            "seq_ids": torch.zeros_like(cols)[None],
        })
    return out


def normalized_surrogate(logp_w, logp_l, norm_w, norm_l, weight, eps: float = 1e-8) -> torch.Tensor:
    """Per-pair ``-weight * (logp_w / ||g_w|| - logp_l / ||g_l||)`` with norms and weights detached."""
    nw, nl = norm_w.detach().clamp(min=eps), norm_l.detach().clamp(min=eps)
    return -weight.detach() * (logp_w / nw - logp_l / nl)


class Normalized:
    """Normalized preference optimisation on preference batches (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, beta: float | None = 0.1, rescale: bool | str = True, eps: float = 1e-8):
        if beta is not None and not beta > 0:
            raise ValueError(f"normalized beta must be > 0 or null, got {beta}")
        if not eps > 0:
            raise ValueError(f"normalized eps must be > 0, got {eps}")
        mode = ("norm" if rescale else "none") if isinstance(rescale, bool) else rescale
        if mode not in RESCALE:
            raise ValueError(f"normalized rescale must be one of {list(RESCALE)} (or true = norm, false = none), "
                             f"got {rescale!r}")
        if mode == "dpo" and beta is None:
            raise ValueError("normalized rescale 'dpo' scales by beta: set beta, or use rescale: norm")
        self.beta, self.rescale, self.eps = beta, mode, eps

    def prepare(self, model, features, batch_fn):
        """Reference log-probs (DPO's pass) when ``beta`` is set; nothing otherwise."""
        if self.beta is None:
            return features
        return DPO(beta=self.beta).prepare(model, features, batch_fn)

    def _pair_stats(self, model, batch, b: int):
        """``(logp[2B], sq_norm[2B], dot[B])``: per-sequence log-probs (in the graph) and gradient stats.

        Under ``torch.no_grad`` (validation) the gradients are still taken, inside ``torch.enable_grad``, and
        the returned log-probs are detached."""
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("normalized: the model has no trainable parameter")
        if not torch.is_grad_enabled():
            with torch.enable_grad():
                logp, sq, dot = self._pair_stats(model, batch, b)
            return logp.detach(), sq, dot
        logps, sq, dots = [], [], []
        singles = split_sequences(batch, 2 * b)
        for i in range(b):
            pair_lp, pair_g = [], []
            for one in (singles[i], singles[b + i]):
                s, _ = sequence_logps(model, one, num_seqs=1)
                g = torch.autograd.grad(s[0], params, retain_graph=True, allow_unused=True)
                pair_lp.append(s[0])
                pair_g.append(g)
            gw, gl = pair_g
            sq_w = sum(x.double().pow(2).sum() for x in gw if x is not None)
            sq_l = sum(x.double().pow(2).sum() for x in gl if x is not None)
            dot = sum((x.double() * y.double()).sum() for x, y in zip(gw, gl) if x is not None and y is not None)
            del gw, gl, pair_g
            logps += pair_lp
            sq += [torch.as_tensor(sq_w, dtype=torch.float64), torch.as_tensor(sq_l, dtype=torch.float64)]
            dots.append(torch.as_tensor(dot, dtype=torch.float64))
        logp = torch.stack(logps)  # chosen/rejected interleaved per pair
        order = torch.cat([torch.arange(0, 2 * b, 2), torch.arange(1, 2 * b, 2)]).to(logp.device)
        sq_t = torch.stack([x.to(logp.device) for x in sq])
        return logp[order], sq_t[order], torch.stack([d.to(logp.device) for d in dots])

    def __call__(self, model, batch):
        n = int(batch["seq_ids"].max()) + 1
        if n % 2:
            raise ValueError(f"normalized batch has {n} sequences; a preference batch has 2B (chosen then rejected)")
        b = n // 2
        if self.beta is not None and not all(k in batch for k in REF_KEYS):
            raise KeyError("normalized (beta set) batch has no ref_chosen_logp / ref_rejected_logp: run prepare on "
                           "the features first (the engine does this at the start of each stage), or set beta: null")
        logp, sq, dot = self._pair_stats(model, batch, b)
        pc, pr = logp[:b], logp[b:]
        norms = sq.sqrt().to(pc.dtype)
        nw, nl = norms[:b], norms[b:]
        weight = torch.ones_like(pc)
        metrics = {}
        if self.beta is not None:
            h = (pc - batch["ref_chosen_logp"].to(pc)) - (pr - batch["ref_rejected_logp"].to(pr))
            weight = torch.sigmoid(-self.beta * h.detach())
            metrics["rewards/margin"] = self.beta * float(h.detach().mean())
            metrics["dpo_loss"] = float(dpo_loss(h.detach(), self.beta).mean())
            metrics["rewards/accuracy"] = float((h > 0).float().mean())
        else:
            metrics["rewards/accuracy"] = float((pc > pr).float().mean())
        if self.rescale != "none":
            weight = weight * (nw + nl) / 2
        if self.rescale == "dpo":
            weight = weight * self.beta
        loss = normalized_surrogate(pc, pr, nw, nl, weight, self.eps).mean()
        cos = (dot / (sq[:b].sqrt() * sq[b:].sqrt()).clamp(min=self.eps)).float()
        metrics.update({
            "loss": float(loss.detach()),
            "chosen_logp": float(pc.detach().mean()),
            "rejected_logp": float(pr.detach().mean()),
            "grad/norm_chosen": float(nw.mean()),
            "grad/norm_rejected": float(nl.mean()),
            "grad/cosine": float(cos.mean()),
            "grad/frac_chosen_falls": float((dot > sq[:b]).float().mean()),
        })
        return loss, metrics
