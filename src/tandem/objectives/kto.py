"""KTO, Kahneman-Tversky optimisation (Ethayarajh et al. 2024, arXiv 2402.01306), on unpaired rows: a prompt, one
completion and a label (desirable or undesirable), TRL's unpaired preference format.

For each example, with ``logp`` the summed log-prob of its completion under the policy and ``ref`` the same under the
reference (the model at the start of the stage), ``r = logp - ref``, and ``z`` the KL reference point:

    z = max(0, mean over the batch of (logp_KL - ref_KL))          detached: no gradient flows through it
    desirable:    L = desirable_weight   * (1 - sigmoid(beta (r - z)))
    undesirable:  L = undesirable_weight * (1 - sigmoid(beta (z - r)))

and the loss is the mean of ``L`` over the batch's examples. ``logp_KL`` / ``ref_KL`` are the summed log-probs of a
mismatched completion: each prompt paired with the completion of the example before it in its source (the first with
the last's), skipping back over examples with the same prompt (:func:`tandem.data.encode.kl_partners`). That is TRL 1.16's ``KTOTrainer`` (``loss_type="kto"``) formula,
``kl = (KL_logps - ref_KL_logps).mean().detach().clamp(min=0)``; ``tests/test_trl_parity.py`` runs TRL's code on the same
numbers. Differences from TRL, all about which numbers enter, not the formula:

* TRL rotates the completions within each chunk of ``per_device_train_batch_size`` rows and then samples batches in
  order, so a batch's mismatched completions are its own; tandem rotates over the whole source and shuffles, so a batch's
  mismatched completions are other examples' (the same estimator of the same expectation: a prompt with an unrelated
  completion).
* TRL rotates by one even when the row before has the same prompt (a pair file unpaired row by row: the "mismatched"
  pair is then the prompt with its own other completion); tandem skips back to the nearest row with another prompt.
* TRL averages the KL estimate over the data-parallel processes (``gather_for_metrics``); tandem takes it per process
  and micro-batch.

The KL sequences run in a no-grad forward of their own (the collated batch keeps them in rows of their own), as TRL's
``_compute_kl_logps`` does. Reference log-probs (``ref_logp``, ``ref_kl_logp``, summed) are computed once per stage by
``prepare`` (one no-grad pass in eval mode); no reference model is held while training.

Defaults: ``beta = 0.1``, ``desirable_weight = undesirable_weight = 1.0`` (TRL's). The paper advises weights with
``desirable_weight * n_desirable / (undesirable_weight * n_undesirable)`` in ``[1, 4/3]``.

Metrics: ``loss``, ``kl`` (the reference point ``z``), ``logps`` (mean summed log-prob of the completions),
``rewards/signed`` (mean of ``beta r`` for desirable and ``-beta r`` for undesirable examples: it rises as the policy
learns), ``rewards/accuracy`` (fraction with ``r > z`` when desirable, ``r < z`` when not), ``desirable`` (fraction of
desirable examples in the batch).
"""

from __future__ import annotations

import torch

from tandem.objectives.logprobs import sequence_logps

REF_KEYS = ("ref_logp", "ref_kl_logp")


def kto_losses(logratio: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float,
               desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """``[B]`` per-example KTO losses from the log-ratios ``r``, the boolean labels and the (detached) reference point
    ``kl`` (formulas in the module docstring); take ``.mean()``."""
    pos = desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl)))
    neg = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio)))
    return torch.where(desirable, pos, neg)


def kl_estimate(kl_logp: torch.Tensor, ref_kl_logp: torch.Tensor) -> torch.Tensor:
    """TRL's KL reference point: ``mean(kl_logp - ref_kl_logp)``, detached, clamped at 0."""
    return (kl_logp - ref_kl_logp).mean().detach().clamp(min=0)


def split_rows(batch: dict, b: int) -> tuple[dict, dict]:
    """The completion rows (seq ids ``0..b-1``) and the KL rows (``b..2b-1``, renumbered from 0) of a KTO batch, each
    a batch of its own (the collated KTO batch never mixes them in one row)."""
    first = batch["seq_ids"][:, 0]
    kl_rows = first >= b
    out = []
    for rows, shift in ((~kl_rows, 0), (kl_rows, b)):
        part = {k: batch[k][rows] for k in ("input_ids", "labels", "position_ids", "seq_ids")}
        if "attention_mask" in batch:
            part["attention_mask"] = batch["attention_mask"][rows]
        part["seq_ids"] = torch.where(part["seq_ids"] >= 0, part["seq_ids"] - shift, part["seq_ids"])
        out.append(part)
    return out[0], out[1]


class KTO:
    """KTO on unpaired batches (see the module docstring)."""

    data_kind = "unpaired"
    unit = "examples"

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        if not beta > 0:
            raise ValueError(f"kto beta must be > 0, got {beta}")
        for name, w in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
            if not w > 0:
                raise ValueError(f"kto {name} must be > 0, got {w}")
        self.beta, self.desirable_weight, self.undesirable_weight = float(beta), float(desirable_weight), float(undesirable_weight)

    @torch.no_grad()
    def prepare(self, model, features, batch_fn, batch_size: int = 16):
        """Features with ``ref_logp`` / ``ref_kl_logp`` (summed log-probs of the model as it is now, eval mode);
        features that carry both keep them; the model's mode is restored."""
        todo = [i for i, f in enumerate(features) if not all(k in f for k in REF_KEYS)]
        out = list(features)
        was = model.training
        model.eval()
        try:
            for start in range(0, len(todo), batch_size):
                idx = todo[start : start + batch_size]
                b = len(idx)
                s, _ = sequence_logps(model, batch_fn([features[i] for i in idx]), num_seqs=2 * b)
                s = s.float().cpu()
                for j, i in enumerate(idx):
                    out[i] = {**features[i], "ref_logp": float(s[j]), "ref_kl_logp": float(s[b + j])}
        finally:
            model.train(was)
        return out

    def __call__(self, model, batch):
        if not all(k in batch for k in REF_KEYS):
            raise KeyError("kto batch has no ref_logp / ref_kl_logp: run KTO.prepare on the features first (the engine "
                           "does this at the start of each stage)")
        b = int(batch["label"].shape[0])
        main, kl_part = split_rows(batch, b)
        logp, _ = sequence_logps(model, main, num_seqs=b)
        with torch.no_grad():
            kl_logp, _ = sequence_logps(model, kl_part, num_seqs=b)
        kl = kl_estimate(kl_logp.float(), batch["ref_kl_logp"].to(kl_logp.device))
        r = logp - batch["ref_logp"].to(logp)
        desirable = batch["label"].to(logp.device) > 0.5
        loss = kto_losses(r, desirable, kl.to(r), self.beta, self.desirable_weight, self.undesirable_weight).mean()
        sign = torch.where(desirable, 1.0, -1.0).to(r)
        rd = r.detach()
        return loss, {
            "loss": float(loss.detach()),
            "kl": float(kl),
            "logps": float(logp.detach().float().mean()),
            "rewards/signed": float((self.beta * sign * rd).mean()),
            "rewards/accuracy": float(torch.where(desirable, rd > kl, rd < kl).float().mean()),
            "desirable": float(desirable.float().mean()),
        }
