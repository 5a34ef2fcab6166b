"""Supervised fine-tuning: token-level negative log-likelihood of the response tokens.

loss = - (1 / N) * sum over all N labelled (response) tokens of the batch of log p(y_t | x, y_<t)

The mean is over tokens, not sequences: long responses weigh more, as in the usual causal-LM loss.
"""

from __future__ import annotations

import math

import torch

from tandem.objectives.logprobs import token_logps


def sft_loss(token_logp: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the given token log-probs."""
    return -token_logp.mean()


class SFT:
    data_kind = "sft"
    unit = "tokens"

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        logps, _ = token_logps(model, batch)
        loss = sft_loss(logps)
        nll = float(loss.detach())
        return loss, {"loss": nll, "nll": nll, "ppl": math.exp(min(nll, 50.0)), "n_tokens": float(logps.numel())}
