"""Which examples a step trains on: step budgets per stage, epoch orders, micro-batch shards, auxiliary draws, and
the per-step choice of objective of the alternating methods (ALRIGHT / MAXRIGHT). Pure functions of seeds and
counts, so a resumed run replays the same batches."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

import torch

from tandem.data import batches as make_batches


def plan_steps(n_features: int, batch_size: int, epochs: float, cap: int | None) -> tuple[int, int]:
    """(steps per epoch, optimizer steps) of a stage over ``n_features`` examples, at most ``cap``."""
    spe = max(1, n_features // batch_size)
    total = math.ceil(epochs * spe)
    return spe, min(total, cap) if cap else total


def allocate(totals: list[int], max_total: int | None) -> list[int]:
    """Split a run's step budget ``max_total`` over stages in proportion to their planned steps ``totals`` (each
    stage keeps at least one step; the remainder goes to the earliest stages). No budget or enough: unchanged."""
    if not max_total or sum(totals) <= max_total:
        return list(totals)
    share = [max(1, math.floor(t * max_total / sum(totals))) for t in totals]
    for i in range(len(share)):
        if sum(share) >= max_total:
            break
        if share[i] < totals[i]:
            share[i] += 1
    return share


def epoch_order(feats: list[dict], batch_size: int, seed: int, stage_index: int, epoch: int,
                group_by_length: bool = True) -> list[list[int]]:
    """The global batches of one epoch (the incomplete last one dropped, so every step has the same batch size)."""
    order = make_batches(feats, batch_size, shuffle_seed=seed * 1_000_003 + stage_index * 1009 + epoch,
                         group_by_length=group_by_length)
    if len(order) > 1 and len(order[-1]) < batch_size:
        order = order[:-1]
    return order


def shards(global_batch: list[int], accum: int, procs: int) -> list[list[list[int]]]:
    """global batch -> [micro step][process] -> indices (round-robin so shards stay balanced)."""
    micro = [global_batch[a::accum] for a in range(accum)]
    return [[m[p::procs] for p in range(procs)] for m in micro]


def aux_indices(seed: int, stage_index: int, step: int, micro: int, rank: int, n_aux: int, n: int) -> list[int]:
    """Deterministic auxiliary-data indices for multi-objective stages (``n`` of them, with replacement)."""
    g = torch.Generator().manual_seed(seed * 7919 + stage_index * 104729 + step * 131 + micro * 17 + rank)
    return torch.randint(0, n_aux, (max(1, n),), generator=g).tolist()


@dataclass
class Alternation:
    """Which objective a step of an alternating stage trains: 0 = the stage's objective, 1 = the other one.

    ``alright`` (Fernando et al. 2024, arXiv 2410.15483): the other objective with probability ``weight``, drawn from
    a seeded generator per step. ``maxright``: the objective with the larger weighted gap to its best value so far,
    ``(1 - weight) * (f_0 - f_0*)`` vs ``weight * (f_1 - f_1*)``, where ``f_i`` is the objective's loss on the step's
    batch (both evaluated without gradient) and ``f_i*`` the lowest value seen so far (the paper uses estimates of
    each objective's optimum; docs/methods.md).
    """

    kind: Literal["alright", "maxright"]
    weight: float  # the other objective's weight lambda
    seed: int = 0
    best: list[float] = field(default_factory=lambda: [math.inf, math.inf])

    def choose(self, step: int, losses: tuple[float, float] | None = None) -> int:
        if self.kind == "alright":
            return int(random.Random(self.seed * 1_000_033 + step).random() < self.weight)
        assert losses is not None, "maxright needs both objectives' losses"
        self.best = [min(b, f) for b, f in zip(self.best, losses)]
        gaps = ((1 - self.weight) * (losses[0] - self.best[0]), self.weight * (losses[1] - self.best[1]))
        return int(gaps[1] > gaps[0])

    def state_dict(self) -> dict:
        return {"best": list(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.best = [float(x) for x in state["best"]]


def select_stage(summaries: list[dict], final: str, metric: str | None, mode: str) -> dict | None:
    """The stage whose end weights become final/: the best by validation ``metric`` when ``final == 'best'``."""
    if final != "best" or not metric:
        return None
    scored = [s for s in summaries if metric in s["val"]]
    if not scored:
        raise ValueError(f"hbat.select_metric {metric!r} is not among the validation metrics (is data.val_size > 0?)")
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda s: sign * s["val"][metric])
