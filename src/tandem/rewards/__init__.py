"""Reward functions with TRL's signature for the online methods (GRPO, RLOO, PPO): loading from the recipe's
``reward_funcs`` list, the batched call with the dataset's other columns, validation and per-function statistics
(:mod:`tandem.rewards.functions`)."""

from tandem.rewards.functions import RewardFunctionError, RewardFunctions, resolve_reward

__all__ = ["RewardFunctionError", "RewardFunctions", "resolve_reward"]
