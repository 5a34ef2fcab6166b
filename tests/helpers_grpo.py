"""Reward functions written as TRL's documentation writes them (``reward_funcs: ["helpers_grpo:..."]``) and recipes
for the GRPO / RLOO tests."""

from __future__ import annotations

from helpers_recipe import base_raw, with_overrides


# copied from the pattern of TRL's GRPOTrainer documentation ("Using a custom reward function"): standard format
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def count_e(completions, **kwargs):
    """+1 per letter 'e' in the completion (standard rows: completions are strings)."""
    return [float(c.count("e")) for c in completions]


def answer_in_completion(prompts, completions, completion_ids, answer, **kwargs):
    """Reads the dataset's ``answer`` column, as TRL passes it; None for rows without one."""
    return [None if a is None else float(str(a) in c) for c, a in zip(completions, answer)]


def raises(completions, **kwargs):
    raise KeyError("no such column")


def wrong_length(completions, **kwargs):
    return [0.0]


def grpo_block(**over) -> dict:
    block = {"name": "grpo", "reward_funcs": ["helpers_grpo:count_e"], "num_generations": 4,
             "max_completion_length": 6, "temperature": 1.0, "beta": 0.0, "loss_type": "dapo",
             "scale_rewards": "group"}
    block.update(over)
    return block


def grpo_recipe(tmp_path, model_dir, files, method="grpo", grpo=None, **over):
    raw = base_raw(tmp_path, model_dir, files, method)
    raw.update(name="grpo-test", batching={"mode": "pack", "batch_size": 2},
               optimizer={"lr": 1e-3, "scheduler": "constant"},
               schedule={"method": method, "parts": 1, "epochs": 1, "max_steps_per_stage": 3},
               objectives={"sft": {"name": "sft"}, "preference": grpo_block(**(grpo or {}))},
               checkpoint={"every": 0, "keep": 1}, logging={"progress": False, "tensorboard": False})
    raw["data"].update(max_length=96, val_size=0)
    return with_overrides(raw, over)
