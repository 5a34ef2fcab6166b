"""The contract of a training objective (a loss over a batch), shared by the engine and every objective here.

- ``data_kind``: which examples it trains on: ``"sft"`` (prompt + response), ``"preference"`` (chosen and
  rejected responses; also the reward model's Bradley-Terry loss) or ``"unpaired"`` (one completion with a
  desirable/undesirable label: KTO).
- ``unit``: how a shard is weighted in its global batch under gradient accumulation and data parallelism:
  ``"tokens"`` (by its labelled-token count: a token mean stays a token mean) or ``"examples"`` (by its number of
  examples / pairs). Every objective class declares it explicitly.
- ``prepare(model, features, batch_fn) -> features``: a one-off pass at the start of a stage (DPO's reference
  log-probs); the identity for objectives that need none.
- ``__call__(model, batch) -> (loss, metrics)``: the scalar loss (in the graph) and float metrics.

PPO is not an objective in this sense: its loop lives in the engine (``tandem.engine.ppo_loop``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Protocol, runtime_checkable

import torch

from tandem.io.prepared import load_prepared, save_prepared

DataKind = Literal["sft", "preference", "unpaired"]
Unit = Literal["tokens", "examples"]
BatchFn = Callable[[list[dict]], dict]


@runtime_checkable
class Objective(Protocol):
    data_kind: DataKind
    unit: Unit

    def prepare(self, model, features: list[dict], batch_fn: BatchFn) -> list[dict]: ...

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...


def units(objective, feats: list[dict]) -> float:
    """How much a shard counts in its global batch: labelled tokens for token-mean losses, else examples."""
    if objective.unit == "tokens":
        return float(sum(sum(1 for x in f["labels"] if x != -100) for f in feats))
    return float(len(feats))


@torch.no_grad()
def evaluate_objective(model, objective, features: list[dict], batch_fn, batch_size: int,
                       advance: Callable[[int], None] | None = None) -> dict[str, float]:
    """Unit-weighted mean of an objective's loss and metrics over ``features`` (no grad); ``advance(n)`` after each
    batch of ``n`` examples (a progress bar)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    total = 0.0
    for i in range(0, len(features), batch_size):
        feats = features[i : i + batch_size]
        u = units(objective, feats)
        loss, metrics = objective(model, batch_fn(feats))
        for k, v in {**metrics, "loss": loss}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * u
        total += u
        if advance is not None:
            advance(len(feats))
    model.train(was_training)
    return {k: v / total for k, v in sums.items()} if total else {}


def prepare(acc, model, objective, feats: list[dict], batch_fn, cache: Path, reuse: bool,
            advance: Callable[[int], None] | None = None, chunk: int = 64) -> list[dict]:
    """Run the objective's one-off pass (e.g. DPO reference log-probs) and store its results in ``cache``.

    With ``reuse`` and a stored cache, the stored values are used (on resume the model is no longer where they were
    computed). Each process computes its shard, ``chunk`` examples at a time (``advance(n)`` after each: a progress
    bar); the results are gathered in the original order.
    """
    if reuse and cache.exists():
        if advance is not None:
            advance(len(feats))
        return load_prepared(cache, feats)
    from tandem.distributed import is_sharded

    # FSDP: every process runs every forward (the shards gather collectively), so none is split
    r, P = (0, 1) if is_sharded(model) else (acc.process_index, acc.num_processes)
    shard, out = feats[r::P], []
    with acc.autocast():
        for i in range(0, len(shard), chunk):
            out += objective.prepare(model, shard[i : i + chunk], batch_fn)
            if advance is not None:
                advance(len(shard[i : i + chunk]) * P)
    if P > 1:
        gathered = [None] * P
        torch.distributed.all_gather_object(gathered, out)
        out = [None] * len(feats)
        for p in range(P):
            out[p::P] = gathered[p]
    if acc.is_main_process:
        save_prepared(cache, out)
    return out
