"""Supervised fine-tuning: token-level negative log-likelihood of the response tokens.

    loss = -(1 / N) * sum_{labelled tokens t of the batch} log p(y_t | x, y_<t)

N is the number of labelled (response) tokens in the whole batch. The mean is over tokens, not over
sequences: a long response weighs more than a short one, as in the usual causal-LM loss (and the engine
weighs shards by their labelled-token counts, ``unit = "tokens"``, so gradient accumulation keeps this mean).
Metrics: ``loss`` (= ``nll``), ``ppl = exp(nll)``, ``n_tokens`` (N).
"""

from __future__ import annotations

import math

import torch

from tandem.objectives.logprobs import token_logps


def sft_loss(token_logp: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood ``-sum(token_logp) / N`` over the ``N`` given token log-probs.

    A batch with no labelled token gives 0 (still attached to the graph), not NaN.
    """
    return -token_logp.sum() / max(token_logp.numel(), 1)


class SFT:
    """Token-level NLL on response tokens (see the module docstring)."""

    data_kind = "sft"
    unit = "tokens"

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        logps, _ = token_logps(model, batch)
        loss = sft_loss(logps)
        nll = float(loss.detach())
        return loss, {"loss": nll, "nll": nll, "ppl": math.exp(min(nll, 50.0)), "n_tokens": float(logps.numel())}
