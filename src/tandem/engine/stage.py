"""One training loop that runs any stage: micro-batches, gradient accumulation across processes,
regularizer gradient terms, clipping, optimizer and LR schedule, logging and checkpoints.

Batch-size convention: ``batching.batch_size`` examples (pairs for preference stages) make one optimizer
step, whatever the number of processes and accumulation steps. Each global batch is cut into
``grad_accum`` micro-steps, and each micro-step into one shard per process. Losses are weighted by each
shard's share of the global batch (tokens for token-mean losses, examples otherwise), so one process and N
processes compute the same gradient for the same global batch.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field

import torch
from transformers import get_scheduler

from tandem.data import batches as make_batches


class TrainingDiverged(RuntimeError):
    pass


class Runner(torch.nn.Module):
    """Calls ``fn(model, batch)`` inside ``forward`` so DDP's hooks see the whole computation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, batch):
        return fn(self.model, batch)


@dataclass
class StageContext:
    """What a stage needs from the run; built by ``tandem.engine.run``."""

    accelerator: object
    runner: object  # the prepared Runner
    model: object  # the unwrapped HF model
    objective: object
    features: list[dict]
    batch_fn: object  # list[features] -> batch dict on device
    recipe: object
    stage: object
    regularizer: object | None
    log: object
    progress: object
    on_checkpoint: object  # callable(stage_step, global_step, optimizer, scheduler)
    global_step: int = 0
    aux: list = field(default_factory=list)  # [(objective, features, weight)] for multi-objective stages


def units(objective, feats: list[dict]) -> float:
    """How much a shard counts in its global batch: labelled tokens for token-mean losses, else examples."""
    unit = getattr(objective, "unit", "tokens" if objective.data_kind == "sft" else "examples")
    if unit == "tokens":
        return float(sum(sum(1 for x in f["labels"] if x != -100) for f in feats))
    return float(len(feats))


def plan_steps(n_features: int, recipe, stage_index: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) of a stage."""
    bs = recipe.batching.batch_size
    spe = max(1, n_features // bs) if n_features >= bs else 1
    total = math.ceil(recipe.schedule.epochs * spe)
    if recipe.schedule.max_steps:
        total = min(total, recipe.schedule.max_steps)
    return spe, total


def epoch_order(n: int, recipe, stage_index: int, epoch: int, feats: list[dict]) -> list[list[int]]:
    order = make_batches(
        feats,
        recipe.batching.batch_size,
        shuffle_seed=recipe.seed * 1_000_003 + stage_index * 1009 + epoch,
        group_by_length=recipe.batching.group_by_length,
    )
    if len(order) > 1 and len(order[-1]) < recipe.batching.batch_size:
        order = order[:-1]  # drop the incomplete last batch so every step has the same global batch size
    return order


def make_optimizer(model, recipe, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    oc = recipe.optimizer
    opt = torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay)
    sched = get_scheduler(
        oc.scheduler, opt, num_warmup_steps=int(oc.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    return opt, sched


def _shards(global_batch: list[int], accum: int, procs: int) -> list[list[list[int]]]:
    """global batch -> [micro step][process] -> indices (round-robin so shards stay balanced)."""
    micro = [global_batch[a::accum] for a in range(accum)]
    return [[m[p::procs] for p in range(procs)] for m in micro]


def _reduce_sum(accelerator, values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return t.tolist()


def run_stage(ctx: StageContext, optimizer, scheduler, start_step: int, total_steps: int, spe: int) -> int:
    """Train ``total_steps - start_step`` optimizer steps; returns the new global step."""
    acc, recipe, stage = ctx.accelerator, ctx.recipe, ctx.stage
    P, A = acc.num_processes, recipe.batching.grad_accum
    rank = acc.process_index
    task = ctx.progress.add_task(f"{stage.name}", total=total_steps, completed=start_step, loss="-", tps="-")
    every = recipe.checkpoint.every
    order_cache: dict[int, list[list[int]]] = {}
    probe = _probe_hook(ctx)
    ctx.runner.train()
    for step in range(start_step, total_steps):
        epoch, pos = divmod(step, spe)
        if epoch not in order_cache:
            order_cache = {epoch: epoch_order(len(ctx.features), recipe, stage.index, epoch, ctx.features)}
        order = order_cache[epoch]
        global_batch = order[pos % len(order)]
        t0 = time.perf_counter()
        total_units = units(ctx.objective, [ctx.features[i] for i in global_batch])
        sums: dict[str, float] = {}
        n_tokens = 0.0
        finite = True
        for a, shard_per_proc in enumerate(_shards(global_batch, A, P)):
            idx = shard_per_proc[rank]
            feats = [ctx.features[i] for i in idx]
            u = units(ctx.objective, feats)
            batch = ctx.batch_fn(feats)
            n_tokens += float((batch["seq_ids"] >= 0).sum())
            sync = a == A - 1
            with (acc.no_sync(ctx.runner) if not sync and P > 1 else _null()):
                loss, metrics = ctx.runner(ctx.objective, batch)
                scaled = loss * (u * P / total_units)
                for obj, aux_feats, weight in ctx.aux:
                    aux_idx = _aux_indices(step, a, rank, len(aux_feats), len(idx), recipe, stage.index, A, P)
                    aux_loss, aux_m = ctx.runner(obj, ctx.batch_fn([aux_feats[i] for i in aux_idx]))
                    scaled = scaled + weight * aux_loss / (A)
                    for k, v in aux_m.items():
                        sums[f"aux/{k}"] = sums.get(f"aux/{k}", 0.0) + float(v) / (A * P)
                if not torch.isfinite(loss):
                    finite = False
                acc.backward(scaled)
            w = u / total_units
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * w
            for k, v in metrics.items():
                if k != "loss":
                    sums[k] = sums.get(k, 0.0) + float(v) * w
        keys = sorted(sums)
        reduced = _reduce_sum(acc, [sums[k] for k in keys] + [n_tokens, 0.0 if finite else 1.0])
        stats = dict(zip(keys, reduced[: len(keys)]))
        n_tokens_all, bad = reduced[len(keys)], reduced[len(keys) + 1]
        if bad > 0 or not math.isfinite(stats["loss"]):
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"non-finite loss in stage {stage.name} at stage step {step + 1} (global step {ctx.global_step + 1}); "
                "the step was not applied. The last good checkpoint is intact: lower the learning rate or check the "
                "data, then continue with --resume."
            )
        if ctx.regularizer is not None:
            ctx.regularizer.grad_term(ctx.model)
            stats["reg/penalty"] = float(getattr(ctx.regularizer, "last_penalty", 0.0) or 0.0)
        if recipe.optimizer.max_grad_norm:
            gn = acc.clip_grad_norm_([p for p in ctx.model.parameters() if p.requires_grad], recipe.optimizer.max_grad_norm)
            stats["grad_norm"] = float(gn)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ctx.global_step += 1
        dt = time.perf_counter() - t0
        tps = n_tokens_all / dt if dt > 0 else 0.0
        probed = probe(ctx.model, ctx.global_step) if probe is not None else None  # main process only
        stats.update(probed or {})
        if (step + 1) % recipe.logging.every == 0 or step + 1 == total_steps or probed:
            row = {
                "split": "train",
                "stage": stage.name,
                "stage_index": stage.index,
                "step": ctx.global_step,
                "stage_step": step + 1,
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                "tokens": n_tokens_all,
                "tokens_per_s": tps,
                **stats,
            }
            if acc.is_main_process:
                ctx.log.write(row)
        ctx.progress.update(task, advance=1, loss=f"{stats['loss']:.4f}", tps=f"{tps:,.0f}")
        if every and (step + 1) % every == 0 and step + 1 < total_steps:
            ctx.on_checkpoint(step + 1, optimizer, scheduler)
        _fault_injection(ctx.global_step)
    ctx.progress.remove_task(task)
    return ctx.global_step


def _probe_hook(ctx):
    """The recipe's gradient-entanglement probe on the first ``probe.pairs`` pairs of a preference stage, on the
    main process (None when ``probe.every`` is 0, for other roles and on other processes)."""
    cfg = getattr(ctx.recipe, "probe", None)
    if cfg is None or not cfg.every or ctx.stage.role != "preference" or not ctx.accelerator.is_main_process:
        return None
    from tandem.probes import ProbeHook

    return ProbeHook(ctx.features, ctx.batch_fn, every=cfg.every, pairs=cfg.pairs, params=cfg.params)


def _fault_injection(global_step: int) -> None:
    """Test hook: ``TANDEM_FAULT_KILL_AFTER_STEP=N`` kills the process (SIGKILL, no cleanup) after step N."""
    at = os.environ.get("TANDEM_FAULT_KILL_AFTER_STEP")
    if at is not None and int(at) == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def _aux_indices(step, micro, rank, n_aux, n_main, recipe, stage_index, A, P) -> list[int]:
    """Deterministic auxiliary-data indices for multi-objective stages (same count as the main shard)."""
    g = torch.Generator().manual_seed(recipe.seed * 7919 + stage_index * 104729 + step * 131 + micro * 17 + rank)
    return torch.randint(0, n_aux, (max(1, n_main),), generator=g).tolist()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@torch.no_grad()
def evaluate_objective(model, objective, features: list[dict], batch_fn, batch_size: int) -> dict[str, float]:
    """Unit-weighted mean of an objective's loss and metrics over ``features`` (no grad)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    total = 0.0
    for i in range(0, len(features), batch_size):
        feats = features[i : i + batch_size]
        u = units(objective, feats)
        loss, metrics = objective(model, batch_fn(feats))
        sums["loss"] = sums.get("loss", 0.0) + float(loss) * u
        for k, v in metrics.items():
            if k != "loss":
                sums[k] = sums.get(k, 0.0) + float(v) * u
        total += u
    model.train(was_training)
    return {k: v / total for k, v in sums.items()} if total else {}
