"""PPO with a KL-shaped reward (Ziegler et al. 2019; Ouyang et al. 2022): settings and prompt encoding.

Data: the prompts of the preference role's examples (``encode`` keeps each distinct prompt once; chosen and
rejected responses are not used). A prompt keeps its tail of at most ``data.max_length - max_new_tokens``
tokens (``overlong: drop`` drops longer ones instead).

The maths (shaped rewards, GAE, clipped losses, KL controllers) is in ``ppo_math``, rollouts in ``rollout``,
critics in ``critic``, the reward scorer, reference and critic set-up of a stage in ``setup``; the loop that
drives a PPO stage is ``tandem.engine.ppo_loop`` (its docstring describes one iteration).
"""

from __future__ import annotations

import random

from tandem.objectives.prompts import encode_prompts
from tandem.objectives.ppo import ppo_math as pm
from tandem.objectives.ppo.critic import CRITICS
from tandem.io.callables import resolve_function
from tandem.rewards import RewardFunctions


class PPO:
    """PPO settings and prompt encoding; the stage loop is ``tandem.engine.ppo_loop.run_ppo_stage``."""

    data_kind = "preference"  # consumes the preference role's data (its prompts)
    unit = "examples"

    def __init__(
        self,
        reward_model: str | None = None,
        reward_fn: str | None = None,
        critic: str = "value_head",
        beta: float = 0.05,
        kl_control: str = "adaptive",
        kl_target: float = 6.0,
        kl_horizon: int = 10000,
        gamma: float = 1.0,
        lam: float = 0.95,
        clip: float = 0.2,
        vf_clip: float = 0.2,
        vf_coef: float = 0.1,
        ppo_epochs: int = 4,
        mini_batches: int = 1,
        whiten_advantages: bool = True,
        critic_lr: float | None = None,
        critic_warmup_steps: int = 50,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        missing_eos_penalty: float | None = None,
        eval_every: int = 0,
        eval_prompts: int = 16,
        keep_best: bool = True,
        reward_batch_size: int = 16,
        reward_funcs: list | str | None = None,
        reward_weights: list[float] | None = None,
    ):
        if sum(x is not None for x in (reward_model, reward_fn, reward_funcs)) != 1:
            raise ValueError("ppo: give exactly one of reward_model (a trained reward model), reward_fn "
                             "('module:function', fn(prompt, response)) or reward_funcs (TRL's signature, a list)")
        if critic not in CRITICS:
            raise ValueError(f"ppo critic {critic!r}: choose one of {CRITICS}")
        if critic == "reward_model" and reward_model is None:
            raise ValueError("ppo critic 'reward_model' is initialised from reward_model, which is not set; use critic: value_head")
        if kl_control not in ("adaptive", "fixed"):
            raise ValueError(f"ppo kl_control {kl_control!r}: choose 'adaptive' or 'fixed'")
        values = dict(beta=beta, kl_target=kl_target, kl_horizon=kl_horizon, gamma=gamma, lam=lam, clip=clip,
                      vf_clip=vf_clip, vf_coef=vf_coef, ppo_epochs=ppo_epochs, mini_batches=mini_batches,
                      critic_warmup_steps=critic_warmup_steps, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, eval_every=eval_every, eval_prompts=eval_prompts, reward_batch_size=reward_batch_size)
        rules = {
            "beta": beta >= 0, "kl_target": kl_target > 0, "kl_horizon": kl_horizon > 0, "gamma": 0 <= gamma <= 1,
            "lam": 0 <= lam <= 1, "clip": clip > 0, "vf_clip": vf_clip > 0, "vf_coef": vf_coef >= 0,
            "ppo_epochs": ppo_epochs >= 1, "mini_batches": mini_batches >= 1, "critic_warmup_steps": critic_warmup_steps >= 0,
            "max_new_tokens": max_new_tokens >= 1, "temperature": temperature > 0, "top_p": 0 < top_p <= 1,
            "eval_every": eval_every >= 0, "eval_prompts": eval_prompts >= 1, "reward_batch_size": reward_batch_size >= 1,
        }
        bad = [k for k, ok in rules.items() if not ok]
        if bad:
            raise ValueError("ppo: invalid " + ", ".join(f"{k}={values[k]!r}" for k in bad)
                             + " (beta, vf_coef, critic_warmup_steps, eval_every >= 0; gamma, lam in [0, 1]; top_p in (0, 1]; "
                             "kl_target, kl_horizon, clip, vf_clip, temperature > 0; ppo_epochs, mini_batches, max_new_tokens, "
                             "eval_prompts, reward_batch_size >= 1)")
        if critic_lr is not None and not critic_lr > 0:
            raise ValueError(f"ppo critic_lr must be > 0, got {critic_lr}")
        if reward_fn is not None:
            resolve_function(reward_fn)  # fail at build time on a typo
        self.rewards = None if reward_funcs is None else RewardFunctions(
            [reward_funcs] if isinstance(reward_funcs, str) else list(reward_funcs), reward_weights, reward_batch_size)
        self.reward_model, self.reward_fn, self.critic_kind = reward_model, reward_fn, critic
        self.beta, self.kl_control, self.kl_target, self.kl_horizon = beta, kl_control, kl_target, kl_horizon
        self.gamma, self.lam, self.clip, self.vf_clip, self.vf_coef = gamma, lam, clip, vf_clip, vf_coef
        self.ppo_epochs, self.mini_batches, self.whiten_advantages = ppo_epochs, mini_batches, whiten_advantages
        self.critic_lr, self.critic_warmup_steps = critic_lr, critic_warmup_steps
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.missing_eos_penalty = missing_eos_penalty
        self.eval_every, self.eval_prompts, self.keep_best = eval_every, eval_prompts, keep_best
        self.reward_batch_size = reward_batch_size
        self.tokenizer = None  # set by encode(): the rollouts decode with it
        self.last_stage: dict = {}  # what the latest PPO stage did (ppo.json contents; tests, summaries)

    # ------------------------------------------------------------------------------------------ data

    def encode(self, tokenizer, examples, max_length: int, overlong: str = "truncate"):
        """``({"prompt_ids", "prompt"} per distinct prompt, stats)``; remembers ``tokenizer`` for the rollouts."""
        self.tokenizer = tokenizer
        room = max_length - self.max_new_tokens
        if room < 1:
            raise ValueError(f"ppo: data.max_length ({max_length}) must exceed max_new_tokens ({self.max_new_tokens}) "
                             "to leave room for the prompt")
        # reward_funcs read the row's other columns, as in TRL
        return encode_prompts(tokenizer, examples, room, overlong, columns=self.rewards is not None)

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        raise TypeError("ppo is an online objective: its stages run tandem.engine.ppo_loop, not a per-batch loss")

    # ------------------------------------------------------------------------------------------ stage helpers

    def kl_controller(self, beta: float):
        if self.kl_control == "fixed":
            return pm.FixedKLController(beta)
        return pm.AdaptiveKLController(beta, self.kl_target, self.kl_horizon)

    def eval_split(self, prompts: list[dict], seed: int, stage_index: int) -> tuple[list[dict], list[dict]]:
        """(held-out evaluation prompts, training prompts); no hold-out when ``eval_every == 0``."""
        if not self.eval_every:
            return [], list(prompts)
        n = min(self.eval_prompts, len(prompts) - 1)
        if n < 1:
            return [], list(prompts)
        idx = list(range(len(prompts)))
        random.Random(seed * 31 + stage_index).shuffle(idx)
        held = set(idx[:n])
        return [prompts[i] for i in sorted(held)], [p for i, p in enumerate(prompts) if i not in held]
