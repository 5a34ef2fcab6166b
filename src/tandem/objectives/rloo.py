"""RLOO (Ahmadian et al. 2024, "Back to basics"): REINFORCE with a leave-one-out baseline, TRL's option names.

Per prompt ``num_generations`` (G) completions with rewards ``r_i``. The baseline of completion ``i`` is the mean
reward of the other scored completions of its group::

    b_i = (sum_{j scored} r_j - r_i) / (n_g - 1)            A_i = r_i - b_i

(``n_g`` scored completions in the group; ``A_i = 0`` for an unscored row or a group with one scored row). With
``normalize_advantages`` the advantages are then standardised over the rollout, ``(A - mean) / (std + 1e-4)``.

The KL to the stage-start reference (``beta > 0``):

- ``kl_in_reward: true`` (default, as TRL and the paper): ``r_i <- r_i - beta * sum_t (logp_old_t - ref_t)``, the
  sequence's summed k1 estimate, before the baseline;
- ``kl_in_reward: false``: ``beta * mean_i (sum_t k3_t m_t / |o_i|)`` is added to the loss (GRPO's k3 estimator).

The loss is sequence-level, as TRL's: with ``s_i = sum_t logp_t m_t`` and ``rho_i = exp(s_i - s_old_i)``,
``L = mean_i -min(rho_i A_i, clip(rho_i, 1 - epsilon, 1 + epsilon_high) A_i)``.
"""

from __future__ import annotations

import torch

from tandem.objectives.grpo import GRPO, clipped_objective, k3, masked_mean, nanstd


def rloo_advantages(rewards: torch.Tensor, G: int, normalize: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """``[N]`` leave-one-out advantages of ``N = P * G`` rewards (prompt-major groups; NaN = unscored)."""
    grouped = rewards.view(-1, G)
    n = (~grouped.isnan()).sum(1, keepdim=True)
    baseline = (grouped.nansum(1, keepdim=True) - grouped) / (n - 1)
    adv = (grouped - baseline).view(-1)
    if normalize:
        adv = (adv - adv.nanmean()) / (nanstd(adv) + eps)
    return torch.nan_to_num(adv, nan=0.0, posinf=0.0, neginf=0.0)


class RLOO(GRPO):
    """RLOO settings and loss (the rollouts and the stage loop are GRPO's)."""

    name = "rloo"

    def __init__(self, reward_funcs: list | str | None = None, reward_weights: list[float] | None = None,
                 num_generations: int = 8, max_completion_length: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, beta: float = 0.05, num_iterations: int = 1, epsilon: float = 0.2,
                 epsilon_high: float | None = None, normalize_advantages: bool = False, kl_in_reward: bool = True,
                 mask_truncated_completions: bool = False, steps_per_generation: int = 1, reward_batch_size: int = 16):
        super().__init__(reward_funcs, reward_weights, num_generations, max_completion_length, temperature, top_p, beta,
                         num_iterations, epsilon, epsilon_high, "none", "grpo", mask_truncated_completions,
                         steps_per_generation, reward_batch_size)
        self.normalize_advantages, self.kl_in_reward = normalize_advantages, kl_in_reward

    def needs_old_logp(self) -> bool:
        return super().needs_old_logp() or (self.beta > 0 and self.kl_in_reward)

    def kl_in_loss(self) -> bool:
        return self.beta > 0 and not self.kl_in_reward

    def advantages(self, rewards: torch.Tensor, seq_kl: torch.Tensor | None, batch_std: float | None) -> torch.Tensor:
        if self.beta > 0 and self.kl_in_reward:
            rewards = rewards - self.beta * seq_kl
        return rloo_advantages(rewards, self.num_generations, self.normalize_advantages)

    def loss(self, logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
             mask: torch.Tensor, n_tokens: float) -> tuple[torch.Tensor, dict[str, float]]:
        m = mask.to(logp.dtype)
        seq, old = (logp * m).sum(1), (old_logp * m).sum(1)
        per_seq, clips = clipped_objective(seq, old, adv, self.epsilon, self.epsilon_high)
        loss = per_seq.mean()
        stats = {"policy_loss": float(loss.detach())}
        if self.kl_in_loss():
            kl = k3(logp, ref_logp)
            loss = loss + self.beta * ((kl * m).sum(1) / m.sum(1).clamp(min=1)).mean()
            stats["kl"] = masked_mean(kl.detach(), mask)
        ones = torch.ones_like(adv)
        stats.update({"clip_ratio/low": masked_mean(clips["low"].float(), ones),
                      "clip_ratio/high": masked_mean(clips["high"].float(), ones),
                      "clip_ratio/region": masked_mean((clips["low"] | clips["high"]).float(), ones)})
        return loss, stats
