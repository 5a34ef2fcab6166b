"""The contract of a training objective (a loss over a batch), shared by the engine and every objective here.

- ``data_kind``: which examples it trains on: ``"sft"`` (prompt + response) or ``"preference"`` (chosen and
  rejected responses; also the reward model's Bradley-Terry loss).
- ``unit``: how a shard is weighted in its global batch under gradient accumulation and data parallelism:
  ``"tokens"`` (by its labelled-token count: a token mean stays a token mean) or ``"examples"`` (by its number of
  examples / pairs). Every objective class declares it explicitly.
- ``prepare(model, features, batch_fn) -> features``: a one-off pass at the start of a stage (DPO's reference
  log-probs); the identity for objectives that need none.
- ``__call__(model, batch) -> (loss, metrics)``: the scalar loss (in the graph) and float metrics.

PPO is not an objective in this sense: its loop lives in the engine (``tandem.engine.ppo_loop``).
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol, runtime_checkable

import torch

DataKind = Literal["sft", "preference"]
Unit = Literal["tokens", "examples"]
BatchFn = Callable[[list[dict]], dict]


@runtime_checkable
class Objective(Protocol):
    data_kind: DataKind
    unit: Unit

    def prepare(self, model, features: list[dict], batch_fn: BatchFn) -> list[dict]: ...

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...

