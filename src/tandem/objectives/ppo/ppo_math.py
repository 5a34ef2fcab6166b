"""PPO formulas on padded response tensors ``[B, L]`` with a 0/1 ``mask`` (1 on response tokens).

Response ``b`` occupies columns ``0..n_b-1`` (left aligned); ``a_t`` is the token at column ``t`` and
``logp`` / ``ref_logp`` are its log-probabilities under the policy and the reference.

- KL-shaped per-token reward (Ziegler et al. 2019, Stiennon et al. 2020)::

      kl_t = logp_t - ref_logp_t
      r_t  = -beta * kl_t + [t == n_b - 1] * score_b

  ``score_b`` is the sequence-level reward of response ``b``, added on its last token.

- GAE (Schulman et al. 2016), with ``V_{n_b} = 0`` (the episode ends after the last response token)::

      delta_t = r_t + gamma * V_{t+1} - V_t
      A_t     = delta_t + gamma * lambda * A_{t+1}          (A_{n_b} = 0)
      R_t     = A_t + V_t                                   (the value target)

- whitening: ``(A - mean(A)) / sqrt(var(A) + 1e-8)`` over the masked tokens (unbiased variance); the mean
  is added back when ``shift_mean=False``.

- PPO-clip policy loss (Schulman et al. 2017), token mean over the masked tokens::

      rho_t = exp(logp_t - logp_old_t)
      L_pg  = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))

  ``clip_frac`` = fraction of tokens where the clipped term is strictly larger (so it is the one in use and
  its gradient is 0); ``approx_kl`` = ``mean_t 0.5 * (logp_t - logp_old_t)^2``.

- clipped value loss::

      V_clip = clip(V, V_old - eps_v, V_old + eps_v)
      L_v    = 0.5 * mean_t max((V - R)^2, (V_clip - R)^2)

- entropy of the token distribution ``p = softmax(z)``: ``H = logsumexp(z) - sum_k p_k z_k``.
- explained variance: ``1 - Var(R - V) / Var(R)`` over the masked tokens (``nan`` when ``Var(R) = 0``).
- KL coefficient: fixed, or adaptive (Ziegler et al. 2019)::

      e    = clip(KL / KL_target - 1, -0.2, 0.2)
      beta = beta * (1 + e * n_steps / horizon)

  with ``KL`` the mean summed KL per response of the latest rollout and ``n_steps`` its number of responses.
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(x * mask) / sum(mask)`` (0 when the mask is empty)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries; unbiased (``/(n-1)``) by default, ``0`` for fewer than two entries."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1)
    ss = (((x - mean) * m) ** 2).sum()
    denom = (n - 1) if unbiased else n
    return torch.where(denom > 0, ss / denom.clamp(min=1), torch.zeros_like(ss))


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` on the masked entries (mean added back if not ``shift_mean``); 0 elsewhere."""
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` column of the last response token (``n_b - 1``); every row needs at least one token."""
    n = mask.sum(dim=1).long()
    if bool((n < 1).any()):
        raise ValueError("ppo: a response has no token (mask row of zeros)")
    return n - 1


def shaped_rewards(logp: torch.Tensor, ref_logp: torch.Tensor, score: torch.Tensor, mask: torch.Tensor,
                   beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r[B, L], kl[B, L])``: ``r_t = -beta * (logp_t - ref_logp_t)``, plus ``score_b`` on the last token."""
    m = mask.to(logp.dtype)
    kl = (logp - ref_logp) * m
    r = -beta * kl
    r = r.scatter_add(1, last_index(mask)[:, None], score.to(r.dtype)[:, None])
    return r * m, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages[B, L], returns[B, L])`` by generalised advantage estimation (module docstring); 0 off the mask."""
    m = mask.to(values.dtype)
    v = values * m
    r = rewards * m
    B, L = v.shape
    adv = torch.zeros_like(v)
    nxt_adv = torch.zeros(B, dtype=v.dtype, device=v.device)
    for t in reversed(range(L)):
        nxt_v = v[:, t + 1] if t + 1 < L else torch.zeros_like(nxt_adv)
        delta = r[:, t] + gamma * nxt_v - v[:, t]
        nxt_adv = (delta + gamma * lam * nxt_adv) * m[:, t]
        adv[:, t] = nxt_adv
    return adv, (adv + v) * m


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss (token mean) and ``{"clip_frac", "approx_kl", "ratio"}`` (detached)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * mean max((V - R)^2, (V_clip - R)^2)`` and ``{"vf_clip_frac"}``."""
    v_clip = torch.clamp(values, old_values - clip, old_values + clip)
    l1 = (values - returns) ** 2
    l2 = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    with torch.no_grad():
        stats = {"vf_clip_frac": masked_mean((l2 > l1).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along the last dim: ``logsumexp(z) - sum softmax(z) * z``."""
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked tokens; ``nan`` when ``Var(R) == 0``."""
    var_r = float(masked_var(returns, mask))
    if var_r == 0.0:
        return math.nan
    return 1.0 - float(masked_var(returns - values, mask)) / var_r


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """``beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon`` (Ziegler et al. 2019)."""

    def __init__(self, beta: float, target: float, horizon: int):
        if not target > 0:
            raise ValueError(f"ppo kl_target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"ppo kl_horizon must be > 0, got {horizon}")
        self.value, self.target, self.horizon = float(beta), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
