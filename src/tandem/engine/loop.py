"""The offline stage loop and the helpers every loop shares (the PPO loop in ``ppo_loop`` uses them too).

Batch-size convention: ``batch_size`` examples (pairs for preference stages) make one optimizer step, whatever
the number of processes and accumulation steps. Each global batch is cut into ``grad_accum`` micro-steps, and each
micro-step into one shard per process. Losses are weighted by each shard's share of the global batch (tokens for
token-mean losses, examples otherwise), so one process and N processes compute the same gradient.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time

import torch
from transformers import get_scheduler

from tandem.data import batches as make_batches
from tandem.engine.context import LoopConfig, StageContext
from tandem.objectives.base import units


class TrainingDiverged(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ shared helpers


def reduce_sum(accelerator, values: list[float]) -> list[float]:
    """Sum ``values`` over processes (float64), as a list."""
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return t.tolist()


def trainable_params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def apply_step(ctx: StageContext, optimizer) -> dict[str, float]:
    """Regularizer gradient term, clipping and the optimizer step after ``backward``; returns their metrics."""
    stats: dict[str, float] = {}
    if ctx.regularizer is not None:
        ctx.regularizer.grad_term(ctx.model)
        stats["reg/penalty"] = float(ctx.regularizer.last_penalty)
    if ctx.config.max_grad_norm:
        gn = ctx.accelerator.clip_grad_norm_(trainable_params(ctx.model), ctx.config.max_grad_norm)
        stats["grad_norm"] = float(gn)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return stats


def diverged(stage_name: str, step: int, what: str = "loss") -> TrainingDiverged:
    return TrainingDiverged(
        f"non-finite {what} in stage {stage_name} at stage step {step}; the step was not applied. Lower the "
        "learning rate or check the data, then continue with --resume."
    )


def fault_hook(global_step: int) -> None:
    """Test hook: ``TANDEM_FAULT_KILL_AFTER_STEP=N`` kills the process (SIGKILL, no cleanup) after step N."""
    at = os.environ.get("TANDEM_FAULT_KILL_AFTER_STEP")
    if at is not None and int(at) == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def plan_steps(n_features: int, cfg: LoopConfig) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) of a stage."""
    spe = max(1, n_features // cfg.batch_size)
    total = math.ceil(cfg.epochs * spe)
    return spe, min(total, cfg.max_steps) if cfg.max_steps else total


def epoch_order(cfg: LoopConfig, stage_index: int, epoch: int, feats: list[dict]) -> list[list[int]]:
    order = make_batches(feats, cfg.batch_size, shuffle_seed=cfg.seed * 1_000_003 + stage_index * 1009 + epoch,
                         group_by_length=cfg.group_by_length)
    if len(order) > 1 and len(order[-1]) < cfg.batch_size:
        order = order[:-1]  # drop the incomplete last batch so every step has the same global batch size
    return order


def make_optimizer(model, cfg: LoopConfig, total_steps: int):
    opt = torch.optim.AdamW(trainable_params(model), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                          num_training_steps=total_steps)
    return opt, sched


def shards(global_batch: list[int], accum: int, procs: int) -> list[list[list[int]]]:
    """global batch -> [micro step][process] -> indices (round-robin so shards stay balanced)."""
    micro = [global_batch[a::accum] for a in range(accum)]
    return [[m[p::procs] for p in range(procs)] for m in micro]


def aux_indices(cfg: LoopConfig, stage_index: int, step: int, micro: int, rank: int, n_aux: int, n: int) -> list[int]:
    """Deterministic auxiliary-data indices for multi-objective stages (``n`` of them)."""
    g = torch.Generator().manual_seed(cfg.seed * 7919 + stage_index * 104729 + step * 131 + micro * 17 + rank)
    return torch.randint(0, n_aux, (max(1, n),), generator=g).tolist()


def train_row(ctx: StageContext, step: int, epoch: int, lr: float, **values) -> dict:
    return {"split": "train", "stage": ctx.stage.name, "stage_index": ctx.stage.index, "step": ctx.global_step,
            "stage_step": step, "epoch": epoch, "lr": lr, **values}


# ------------------------------------------------------------------------------------------ offline loop


def run_stage(ctx: StageContext, optimizer, scheduler, start_step: int, total_steps: int, spe: int) -> int:
    """Train ``total_steps - start_step`` optimizer steps; returns the new global step."""
    acc, cfg, stage = ctx.accelerator, ctx.config, ctx.stage
    P, A, rank = acc.num_processes, cfg.grad_accum, acc.process_index
    task = ctx.progress.add_task(stage.name, total=total_steps, completed=start_step, loss="-", tps="-")
    order_cache: dict[int, list[list[int]]] = {}
    probe = _probe_hook(ctx)
    ctx.runner.train()
    for step in range(start_step, total_steps):
        epoch, pos = divmod(step, spe)
        if epoch not in order_cache:
            order_cache = {epoch: epoch_order(cfg, stage.index, epoch, ctx.features)}
        global_batch = order_cache[epoch][pos % len(order_cache[epoch])]
        t0 = time.perf_counter()
        total_units = units(ctx.objective, [ctx.features[i] for i in global_batch])
        sums: dict[str, float] = {}
        n_tokens, finite = 0.0, True
        for a, per_proc in enumerate(shards(global_batch, A, P)):
            feats = [ctx.features[i] for i in per_proc[rank]]
            u = units(ctx.objective, feats)
            batch = ctx.batch_fn(feats)
            n_tokens += float((batch["seq_ids"] >= 0).sum())
            sync = contextlib.nullcontext() if a == A - 1 or P == 1 else acc.no_sync(ctx.runner)
            with sync:
                loss, metrics = ctx.runner(ctx.objective, batch)
                scaled = loss * (u * P / total_units)
                for term in ctx.aux:
                    idx = aux_indices(cfg, stage.index, step, a, rank, len(term.features), len(feats))
                    aux_loss, aux_m = ctx.runner(term.objective, ctx.batch_fn([term.features[i] for i in idx]))
                    scaled = scaled + term.weight * aux_loss / A
                    for k, v in aux_m.items():
                        sums[f"aux/{k}"] = sums.get(f"aux/{k}", 0.0) + float(v) / (A * P)
                finite = finite and bool(torch.isfinite(loss))
                acc.backward(scaled)
            w = u / total_units
            for k, v in {**metrics, "loss": loss.detach()}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * w
        keys = sorted(sums)
        reduced = reduce_sum(acc, [sums[k] for k in keys] + [n_tokens, 0.0 if finite else 1.0])
        stats = dict(zip(keys, reduced[: len(keys)]))
        n_tokens_all, bad = reduced[len(keys)], reduced[len(keys) + 1]
        if bad > 0 or not math.isfinite(stats["loss"]):
            optimizer.zero_grad(set_to_none=True)
            raise diverged(stage.name, step + 1)
        stats.update(apply_step(ctx, optimizer))
        scheduler.step()
        ctx.global_step += 1
        dt = time.perf_counter() - t0
        tps = n_tokens_all / dt if dt > 0 else 0.0
        probed = probe(ctx.model, ctx.global_step) if probe is not None else None  # main process only
        stats.update(probed or {})
        if ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps or probed) and acc.is_main_process:
            ctx.log.write(train_row(ctx, step + 1, epoch, scheduler.get_last_lr()[0], tokens=n_tokens_all,
                                    tokens_per_s=tps, **stats))
        ctx.progress.update(task, advance=1, loss=f"{stats['loss']:.4f}", tps=f"{tps:,.0f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
            ctx.on_checkpoint(step + 1, optimizer, scheduler)
        fault_hook(ctx.global_step)
    ctx.progress.remove_task(task)
    return ctx.global_step


def _probe_hook(ctx: StageContext):
    """The gradient-entanglement probe on the first ``probe_pairs`` pairs of a preference stage, on the main process
    (None when ``probe_every`` is 0, for other roles and on other processes)."""
    cfg = ctx.config
    if not cfg.probe_every or ctx.stage.role != "preference" or not ctx.accelerator.is_main_process:
        return None
    from tandem.probes import ProbeHook

    return ProbeHook(ctx.features, ctx.batch_fn, every=cfg.probe_every, pairs=cfg.probe_pairs, params=cfg.probe_params)
