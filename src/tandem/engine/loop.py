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

from tandem.engine.context import AuxTerm, LoopConfig, StageContext
from tandem.objectives.base import units
from tandem.optim import adamw
from tandem.schedules.steps import aux_indices, epoch_order, shards


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
    ctx.scaling.unscale_(optimizer)  # fp16: the regularizer term and clipping read true gradients
    if ctx.regularizer is not None:
        ctx.regularizer.grad_term(ctx.model)
        stats["reg/penalty"] = float(ctx.regularizer.last_penalty)
    if ctx.config.max_grad_norm:
        gn = ctx.accelerator.clip_grad_norm_(trainable_params(ctx.model), ctx.config.max_grad_norm)
        stats["grad_norm"] = float(gn)
    ctx.scaling.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return stats


def diverged(stage_name: str, step: int, what: str = "loss") -> TrainingDiverged:
    return TrainingDiverged(
        f"non-finite {what} in stage {stage_name} at stage step {step}; the step was not applied. Lower the "
        "learning rate (a new run: --overwrite) or check the data; --resume retries with the same recipe."
    )


def fault_hook(global_step: int) -> None:
    """Test hook: ``TANDEM_FAULT_KILL_AFTER_STEP=N`` kills the process (SIGKILL, no cleanup) after step N."""
    at = os.environ.get("TANDEM_FAULT_KILL_AFTER_STEP")
    if at is not None and int(at) == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def make_optimizer(model, cfg: LoopConfig, total_steps: int, role: str = ""):
    opt = adamw(trainable_params(model), lr=cfg.lr_by_role.get(role, cfg.lr), betas=tuple(cfg.betas), eps=cfg.eps,
                weight_decay=cfg.weight_decay)  # a stage's learning rate: its role's (optimizer.lr_by_role), else lr
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    return opt, get_scheduler(cfg.scheduler, opt, num_warmup_steps=min(warm, total_steps), num_training_steps=total_steps)


def end_step(ctx: StageContext, step: int, total: int, optimizer, scheduler) -> None:
    """After stage step ``step`` < ``total``: validation, a checkpoint (every N steps or a callback's stop), fault hook."""
    cfg, inside = ctx.config, step < total
    if ctx.on_validate is not None and cfg.val_every and step % cfg.val_every == 0 and inside:
        ctx.on_validate(step)
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 or ctx.log.stopping) and inside:
        ctx.on_checkpoint(step, optimizer, scheduler)
        ctx.log.stop_if_requested()  # the checkpoint above holds the state
    fault_hook(ctx.global_step)


def train_row(ctx: StageContext, step: int, epoch: int, lr: float, **values) -> dict:
    return {"split": "train", "stage": ctx.stage.name, "stage_index": ctx.stage.index, "step": ctx.global_step,
            "stage_step": step, "epoch": epoch, "lr": lr, **values}


# ------------------------------------------------------------------------------------------ offline loop


def run_stage(ctx: StageContext, optimizer, scheduler, start_step: int, total_steps: int) -> int:
    """Train ``total_steps - start_step`` optimizer steps; returns the new global step."""
    acc, cfg, stage = ctx.accelerator, ctx.config, ctx.stage
    P, A, rank = acc.num_processes, cfg.grad_accum, acc.process_index
    task = ctx.progress.add_task(stage.name, total=total_steps, completed=start_step, loss="-", tps="-")
    terms = [AuxTerm(ctx.objective, ctx.features, 1.0, stage.role), *(ctx.aux[:1] if ctx.alternation else [])]
    mixed = [] if ctx.alternation else ctx.aux  # terms added to every step's loss
    orders: list[dict] = [{} for _ in terms]
    probe = _probe_hook(ctx)
    ctx.runner.train()
    for step in range(start_step, total_steps):
        batches = [_global_batch(cfg, stage.index, t.features, step, orders[i]) for i, t in enumerate(terms)]
        pick = 0
        if ctx.alternation is not None:
            losses = _losses(ctx, terms, batches) if ctx.alternation.kind == "maxright" else None
            pick = ctx.alternation.choose(step, losses)
        term, global_batch = terms[pick], batches[pick]
        t0 = time.perf_counter()
        total_units = units(term.objective, [term.features[i] for i in global_batch])
        sums: dict[str, float] = {}
        n_tokens, finite = 0.0, True
        for a, per_proc in enumerate(shards(global_batch, A, P)):
            feats = [term.features[i] for i in per_proc[rank]]
            u = units(term.objective, feats)
            batch = ctx.batch_fn(feats)
            n_tokens += float((batch["seq_ids"] >= 0).sum())
            sync = contextlib.nullcontext() if a == A - 1 or P == 1 else acc.no_sync(ctx.runner)
            with sync:
                loss, metrics = ctx.runner(term.objective, batch)
                scaled = loss * (u * P / total_units)
                for aux in mixed:
                    idx = aux_indices(cfg.seed, stage.index, step, a, rank, len(aux.features), len(feats))
                    aux_loss, aux_m = ctx.runner(aux.objective, ctx.batch_fn([aux.features[i] for i in idx]))
                    scaled = scaled + aux.weight * aux_loss / A
                    for k, v in aux_m.items():
                        sums[f"aux/{k}"] = sums.get(f"aux/{k}", 0.0) + float(v) / (A * P)
                finite = finite and bool(torch.isfinite(loss))
                acc.backward(ctx.scaling.scale(scaled))
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
        lr, _ = scheduler.get_last_lr()[0], scheduler.step()  # the rate this step used (logged)
        ctx.global_step += 1
        for t in [term, *mixed]:
            ctx.seen[t.role] = ctx.seen.get(t.role, 0) + len(global_batch)
        dt = time.perf_counter() - t0
        tps = n_tokens_all / dt if dt > 0 else 0.0
        probed = probe(ctx.model, ctx.global_step) if probe is not None else None  # main process only
        stats.update(probed or {})
        if ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps or probed) and acc.is_main_process:
            epoch = step // max(1, len(ctx.features) // cfg.batch_size)
            ctx.log.write(train_row(ctx, step + 1, epoch, lr, role=term.role,
                                    tokens=n_tokens_all, tokens_per_s=tps, **stats))
        ctx.progress.update(task, advance=1, loss=f"{stats['loss']:.4f}", tps=f"{tps:,.0f}")
        end_step(ctx, step + 1, total_steps, optimizer, scheduler)
    return ctx.global_step


def _global_batch(cfg: LoopConfig, stage_index: int, feats: list[dict], step: int, cache: dict) -> list[int]:
    """The global batch of ``feats`` at ``step`` (epochs follow each other; ``cache`` holds the current epoch)."""
    epoch, pos = divmod(step, max(1, len(feats) // cfg.batch_size))
    if epoch not in cache:
        cache.clear()
        cache[epoch] = epoch_order(feats, cfg.batch_size, cfg.seed, stage_index, epoch, cfg.group_by_length)
    return cache[epoch][pos % len(cache[epoch])]


@torch.no_grad()
def _losses(ctx: StageContext, terms: list[AuxTerm], batches: list[list[int]]) -> tuple[float, float]:
    """Each term's loss on its batch of this step (this process's shard, averaged over processes): MAXRIGHT."""
    rank, P = ctx.accelerator.process_index, ctx.accelerator.num_processes
    out = [float(t.objective(ctx.model, ctx.batch_fn([t.features[i] for i in b[rank::P]]))[0]) for t, b in zip(terms, batches)]
    return tuple(x / P for x in reduce_sum(ctx.accelerator, out))


def _probe_hook(ctx: StageContext):
    """The gradient-entanglement probe on the first ``probe_pairs`` pairs of a preference stage, on the main process
    (None when ``probe_every`` is 0, for other roles and on other processes)."""
    cfg = ctx.config
    if not cfg.probe_every or ctx.stage.role != "preference" or not ctx.accelerator.is_main_process:
        return None
    from tandem.probes import ProbeHook

    return ProbeHook(ctx.features, ctx.batch_fn, every=cfg.probe_every, pairs=cfg.probe_pairs, params=cfg.probe_params)
