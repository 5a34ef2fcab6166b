"""GRPO (Shao et al. 2024, DeepSeekMath) with TRL's option names: settings, prompt encoding and the maths.

Per prompt ``num_generations`` (G) completions are sampled; each gets the weighted sum ``r_i`` of the reward
functions that scored it (``tandem.rewards``). With ``mu_g`` the mean of the rewards of its group:

- ``scale_rewards: group`` (default): ``A_i = (r_i - mu_g) / (sigma_g + 1e-4)``, ``sigma_g`` the group's std;
- ``scale_rewards: batch``: ``A_i = (r_i - mu_g) / (sigma_B + 1e-4)``, ``sigma_B`` the std over the whole batch;
- ``scale_rewards: none`` (Dr. GRPO): ``A_i = r_i - mu_g``.

Standard deviations are unbiased (``/(n - 1)``) and, like the means, over the scored rows only; a row no function
scored (or a group with one scored row under ``group``) gets ``A_i = 0``. Per completion token ``t``::

    rho_t = exp(logp_t - logp_old_t)
    l_t   = -min(rho_t * A_i, clip(rho_t, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * k3_t
    k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1          (Schulman's k3 estimator of KL(pi || ref))

``logp_old`` are the log-probs when the completions were sampled (``= logp`` detached with ``num_iterations: 1``
and one mini-batch, so ``rho = 1``); the ``num_iterations`` passes over a rollout reuse them. ``ref`` is the policy at
the stage start; ``beta: 0`` (the default, as TRL's) skips the reference pass. ``loss_type`` averages ``l_t`` over a
mini-batch of ``S`` completions with mask ``m`` (``|o_i| = sum_t m_it``):

- ``grpo``: ``mean_i (sum_t l_it m_it / |o_i|)``;
- ``dr_grpo``: ``sum_it l_it m_it / (S * max_completion_length)``;
- ``dapo`` (TRL's default): ``sum_it l_it m_it / N``, ``N`` the completion tokens of the mini-batch over all processes.

``mask_truncated_completions``: completions that hit ``max_completion_length`` without EOS get ``m = 0`` (they
still count in their group's reward statistics, as in TRL). The stage loop is ``tandem.engine.group_loop``; rollouts
and the update pass are in :mod:`tandem.objectives.grpo_rollout`.
"""

from __future__ import annotations

import math

import torch

from tandem.objectives.prompts import encode_prompts
from tandem.rewards import RewardFunctions

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std over the non-NaN entries (NaN with fewer than two)."""
    n = (~x.isnan()).sum() if dim is None else (~x.isnan()).sum(dim)
    mean = x.nanmean() if dim is None else x.nanmean(dim, keepdim=True)
    ss = ((x - mean) ** 2).nansum() if dim is None else ((x - mean) ** 2).nansum(dim)
    return torch.sqrt(ss / (n - 1))


def group_advantages(rewards: torch.Tensor, G: int, scale: str = "group", batch_std: float | None = None,
                     eps: float = 1e-4) -> torch.Tensor:
    """``[N]`` advantages of ``N = P * G`` rewards (prompt-major groups; NaN = unscorable) under ``scale``;
    ``batch_std`` is the std over the whole batch (all processes) for ``scale='batch'`` (default: over ``rewards``)."""
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards {scale!r}: choose one of {SCALE_REWARDS}")
    grouped = rewards.view(-1, G)
    adv = (grouped - grouped.nanmean(1, keepdim=True)).view(-1)
    if scale == "group":
        adv = adv / (nanstd(grouped, 1).repeat_interleave(G) + eps)
    elif scale == "batch":
        adv = adv / ((nanstd(rewards) if batch_std is None else torch.tensor(batch_std, dtype=adv.dtype)) + eps)
    return torch.nan_to_num(adv, nan=0.0, posinf=0.0, neginf=0.0)


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(ref - logp) - (ref - logp) - 1`` (>= 0; 0 where the two agree)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps_low: float,
                      eps_high: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token ``-min(rho A, clip(rho) A)`` (``adv`` broadcast: ``[S, 1]`` or ``[S, L]``) and the boolean clip masks
    ``{"low", "high"}`` (clipped below with ``A < 0``, above with ``A > 0``)."""
    ratio = torch.exp(logp - old_logp)
    loss = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    with torch.no_grad():
        clips = {"low": (ratio < 1 - eps_low) & (adv < 0), "high": (ratio > 1 + eps_high) & (adv > 0)}
    return loss, clips


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_len: int, n_tokens: float) -> torch.Tensor:
    """The mini-batch loss of ``[S, L]`` per-token losses (module docstring); ``n_tokens`` is ``N`` for ``dapo``."""
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (per_token.shape[0] * max_len)
    if loss_type == "dapo":
        return (per_token * m).sum() / max(n_tokens, 1.0)
    raise ValueError(f"loss_type {loss_type!r}: choose one of {LOSS_TYPES}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.to(x.dtype)
    return float((x * m).sum() / m.sum().clamp(min=1))


class GRPO:
    """GRPO settings (TRL's names), prompt encoding and loss; the stage loop is ``tandem.engine.group_loop``."""

    data_kind = "prompt"  # the preference role's rows: prompt-only (TRL), pairs or SFT rows; their other columns kept
    unit = "examples"
    name = "grpo"

    def __init__(self, reward_funcs: list | str | None = None, reward_weights: list[float] | None = None,
                 num_generations: int = 8, max_completion_length: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, beta: float = 0.0, num_iterations: int = 1, epsilon: float = 0.2,
                 epsilon_high: float | None = None, scale_rewards: str | bool = "group", loss_type: str = "dapo",
                 mask_truncated_completions: bool = False, steps_per_generation: int = 1, reward_batch_size: int = 16):
        if isinstance(scale_rewards, bool):  # TRL's older boolean form
            scale_rewards = "group" if scale_rewards else "none"
        values = dict(num_generations=num_generations, max_completion_length=max_completion_length,
                      temperature=temperature, top_p=top_p, beta=beta, num_iterations=num_iterations, epsilon=epsilon,
                      epsilon_high=epsilon_high, steps_per_generation=steps_per_generation,
                      reward_batch_size=reward_batch_size)
        rules = {"num_generations": num_generations >= 2, "max_completion_length": max_completion_length >= 1,
                 "temperature": temperature > 0, "top_p": 0 < top_p <= 1, "beta": beta >= 0 and math.isfinite(beta),
                 "num_iterations": num_iterations >= 1, "epsilon": 0 < epsilon < 1,
                 "epsilon_high": epsilon_high is None or epsilon_high > 0, "steps_per_generation": steps_per_generation >= 1,
                 "reward_batch_size": reward_batch_size >= 1}
        bad = [k for k, ok in rules.items() if not ok]
        if bad:
            raise ValueError(f"{self.name}: invalid " + ", ".join(f"{k}={values[k]!r}" for k in bad)
                             + " (num_generations >= 2; temperature, epsilon_high > 0; epsilon in (0, 1); top_p in "
                             "(0, 1]; beta >= 0; max_completion_length, num_iterations, steps_per_generation, "
                             "reward_batch_size >= 1)")
        if scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"{self.name} scale_rewards {scale_rewards!r}: choose one of {', '.join(SCALE_REWARDS)}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"{self.name} loss_type {loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
        if reward_funcs is None:
            raise ValueError(f"{self.name}: reward_funcs is required (a list of 'module:function', 'file.py:function' "
                             "or reward model paths)")
        specs = [reward_funcs] if isinstance(reward_funcs, str) else list(reward_funcs)
        self.rewards = RewardFunctions(specs, reward_weights, batch_size=reward_batch_size)
        self.reward_funcs, self.reward_weights = specs, self.rewards.weights
        self.reward_fn = self.reward_model = None  # PPO's single-reward settings (validation reads them)
        self.num_generations, self.max_completion_length = num_generations, max_completion_length
        self.max_new_tokens = max_completion_length  # the name the shared rollout helpers read
        self.temperature, self.top_p, self.beta, self.num_iterations = temperature, top_p, beta, num_iterations
        self.epsilon, self.epsilon_high = epsilon, epsilon if epsilon_high is None else epsilon_high
        self.scale_rewards, self.loss_type = scale_rewards, loss_type
        self.mask_truncated_completions, self.steps_per_generation = mask_truncated_completions, steps_per_generation
        self.reward_batch_size = reward_batch_size
        self.tokenizer = None  # set by encode(): rollouts decode with it

    # ------------------------------------------------------------------------------------------ data

    def encode(self, tokenizer, examples, max_length: int, overlong: str = "truncate"):
        """``({"prompt_ids", "prompt", "columns", "conversational"} per row, stats)``; a prompt keeps its tail of at
        most ``max_length - max_completion_length`` tokens (``overlong: drop`` drops longer ones). Rows with the same
        prompt and columns are kept once."""
        self.tokenizer = tokenizer
        room = max_length - self.max_completion_length
        if room < 1:
            raise ValueError(f"{self.name}: data.max_length ({max_length}) must exceed max_completion_length "
                             f"({self.max_completion_length}) to leave room for the prompt")
        return encode_prompts(tokenizer, examples, room, overlong, columns=True)

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        raise TypeError(f"{self.name} is an online objective: its stages run tandem.engine.group_loop, not a per-batch loss")

    # ------------------------------------------------------------------------------------------ maths

    def needs_old_logp(self) -> bool:
        """Whether the rollout needs its own log-prob pass (else ``logp_old = logp`` detached: ratio 1)."""
        return self.num_iterations > 1 or self.steps_per_generation > 1

    def advantages(self, rewards: torch.Tensor, seq_kl: torch.Tensor | None, batch_std: float | None) -> torch.Tensor:
        """``[N]`` advantages of the combined rewards (``seq_kl`` is unused: GRPO keeps its KL in the loss)."""
        return group_advantages(rewards, self.num_generations, self.scale_rewards, batch_std)

    def kl_in_loss(self) -> bool:
        return self.beta > 0

    def loss(self, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
             mask: torch.Tensor, n_tokens: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The mini-batch loss on ``[S, L]`` tensors (``adv[S]``) and its metrics: ``policy_loss``, ``kl`` (token mean
        of k3, 0 without ``beta``), ``clip_ratio/low``, ``clip_ratio/high``, ``clip_ratio/region``."""
        per_token, clips = clipped_objective(logp, old_logp, adv[:, None], self.epsilon, self.epsilon_high)
        stats = {"policy_loss": float(aggregate(per_token.detach(), mask, self.loss_type, self.max_completion_length,
                                                n_tokens))}
        if self.kl_in_loss():
            kl = k3(logp, ref_logp)
            per_token = per_token + self.beta * kl
            stats["kl"] = masked_mean(kl.detach(), mask)
        stats.update({"clip_ratio/low": masked_mean(clips["low"].float(), mask),
                      "clip_ratio/high": masked_mean(clips["high"].float(), mask),
                      "clip_ratio/region": masked_mean((clips["low"] | clips["high"]).float(), mask)})
        return aggregate(per_token, mask, self.loss_type, self.max_completion_length, n_tokens), stats
