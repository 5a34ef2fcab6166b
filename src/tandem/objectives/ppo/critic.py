"""PPO value models (critics): ``V_t``, the expected return from the state before response token ``a_t``.

Two choices (``critic`` in the recipe's PPO block):

- ``value_head``: a linear layer ``V_t = w . h_{t-1} + b`` on the policy's last hidden state ``h_{t-1}`` (the
  state that predicts ``a_t``), zero-initialised (``V = 0`` at the start). The trunk is shared: the value loss
  also trains the policy's weights (scaled by ``vf_coef``), except during the critic warm-up, where the head
  sees detached hidden states. Costs ``H + 1`` parameters.
- ``reward_model``: a separate ``AutoModelForSequenceClassification`` initialised from the reward model (a LoRA
  reward model is merged first); its ``score`` head is applied to the hidden state of every position, not only
  the last. All its weights are trained; it needs the policy's tokenizer (values are per policy token). Costs a
  second model with gradients and AdamW state (about 4x its weights in float32).

The critic has its own AdamW optimizer. Its weights are saved at the end of every PPO stage
(``stages/NN-name/critic.safetensors``) and loaded at the start of the next PPO stage of the run
(:func:`previous_critic`), so HBAT's alternating stages keep one critic. A fresh critic (first PPO stage) is
warmed up: only the critic trains for ``critic_warmup_steps`` steps.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from tandem.objectives.ppo.rollout import TokenIndex, gather_hidden

CRITICS = ("value_head", "reward_model")


class ValueHeadCritic(torch.nn.Module):
    """Linear value head on the policy's last hidden state (float32)."""

    kind = "value_head"
    uses_policy_hidden = True

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def values(self, batch: dict, index: TokenIndex, policy_hidden: torch.Tensor) -> torch.Tensor:
        """``[N]`` values from the policy's hidden states ``[N, H]`` at the response positions."""
        return self.head(policy_hidden.float()).squeeze(-1)


class RewardModelCritic(torch.nn.Module):
    """A sequence-classification model whose ``score`` head is read at every response position."""

    kind = "reward_model"
    uses_policy_hidden = False

    def __init__(self, model):
        super().__init__()
        if not hasattr(model, "score"):
            raise TypeError(f"ppo critic: {type(model).__name__} has no `score` head")
        self.model = model

    def values(self, batch: dict, index: TokenIndex, policy_hidden=None) -> torch.Tensor:
        body = getattr(self.model, self.model.base_model_prefix)
        kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
        if "attention_mask" in batch:
            kwargs["attention_mask"] = batch["attention_mask"]
        h = gather_hidden(body(**kwargs).last_hidden_state, index)
        return self.model.score(h).squeeze(-1).float()


def build_critic(kind: str, policy, reward_model: str | None, device) -> torch.nn.Module:
    """A fresh critic of ``kind`` on ``device`` (eval mode: no dropout)."""
    if kind == "value_head":
        critic = ValueHeadCritic(policy.config.hidden_size)  # a peft model forwards .config to its base
    elif kind == "reward_model":
        if reward_model is None:
            raise ValueError("ppo critic: 'reward_model' needs the reward_model path (or use critic: value_head)")
        from tandem.models import load_reward_model

        model, _ = load_reward_model(reward_model)  # a LoRA reward run comes merged
        critic = RewardModelCritic(model)
    else:
        raise ValueError(f"ppo critic {kind!r}: choose one of {CRITICS}")
    critic.to(device)
    critic.eval()
    for p in critic.parameters():
        p.requires_grad_(True)
    return critic


def critic_state(critic: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The critic's weights on the CPU (contiguous, for safetensors)."""
    return {n: p.detach().contiguous().cpu() for n, p in critic.named_parameters()}


def load_critic_state(critic: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(critic.named_parameters())
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise RuntimeError(f"ppo critic state does not match the critic: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and bytes of the tensors (sorted by name)."""
    h = hashlib.sha256()
    for n in sorted(state):
        t = state[n].detach().contiguous().cpu()
        h.update(n.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


CRITIC_FILE = "critic.safetensors"


def previous_critic(stages_dir: Path, stage_index: int) -> Path | None:
    """``critic.safetensors`` of the latest earlier stage (directories named ``NN-...``, ``NN = index + 1``)."""
    stages_dir = Path(stages_dir)
    if not stages_dir.is_dir():
        return None
    best = None
    for d in stages_dir.iterdir():
        m = re.match(r"^(\d+)-", d.name)
        if m and int(m.group(1)) - 1 < stage_index and (d / CRITIC_FILE).exists():
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), d / CRITIC_FILE)
    return best[1] if best else None
