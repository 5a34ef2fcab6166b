"""Programmatic rewards and recipes for the PPO tests (imported by ``reward_fn: "helpers_ppo:..."``)."""

from __future__ import annotations

from helpers_recipe import base_raw, with_overrides


def count_e(prompt: str, response: str) -> float:
    """+1 per letter 'e' in the response."""
    return float(response.count("e"))


_CALLS = [0]


def decaying(prompt: str, response: str) -> float:
    """A reward that falls with every call (-1, -2, ...): the earliest evaluation always scores best."""
    _CALLS[0] += 1
    return -float(_CALLS[0])


def length_reward(prompt: str, response: str) -> float:
    return float(len(response)) / 10.0


def ppo_block(**over) -> dict:
    block = {"name": "ppo", "reward_fn": "helpers_ppo:count_e", "critic": "value_head", "beta": 0.05,
             "kl_control": "adaptive", "kl_target": 6.0, "gamma": 1.0, "lam": 0.95, "clip": 0.2, "vf_clip": 0.2,
             "vf_coef": 0.1, "ppo_epochs": 2, "mini_batches": 2, "critic_warmup_steps": 0, "max_new_tokens": 6,
             "temperature": 1.0, "top_p": 1.0}
    block.update(over)
    return block


def ppo_recipe(tmp_path, model_dir, files, method="ppo", ppo=None, **over):
    raw = base_raw(tmp_path, model_dir, files, method)
    raw.update(name="ppo-test", batching={"mode": "pack", "batch_size": 4},
               optimizer={"lr": 1e-3, "scheduler": "constant"},
               schedule={"method": method, "parts": 1, "epochs": 1, "max_steps_per_stage": 3},
               objectives={"sft": {"name": "sft"}, "preference": ppo_block(**(ppo or {}))},
               checkpoint={"every": 0, "keep": 1}, logging={"progress": False, "tensorboard": False})
    raw["data"].update(max_length=96, val_size=0)
    return with_overrides(raw, over)
