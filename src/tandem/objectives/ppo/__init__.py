"""PPO (KL-shaped reward, GAE, clipped policy and value losses): math, rollouts, critics and the stage driver."""

from tandem.objectives.ppo.objective import PPO

__all__ = ["PPO"]
