"""The GRPO / RLOO stage loop: per step, ``batch_size`` prompts (seeded order per epoch) split over the processes,
a rollout with group advantages (``tandem.objectives.grpo_rollout``), ``num_iterations`` x ``steps_per_generation``
optimizer steps through ``apply_step`` (regularizer, clipping, loss scaling), one scheduler step, one metrics row and
``end_step`` (validation, checkpoints, a callback's stop), as offline. Resume needs only the checkpoint: sampling and
mini-batch orders are seeded by (seed, stage, step, rank).
"""

from __future__ import annotations

import math
import time

from tandem.engine.context import StageContext
from tandem.engine.loop import apply_step, diverged, end_step, reduce_sum, train_row
from tandem.models.sampling import eos_ids, pad_token_id
from tandem.objectives.grpo_rollout import prompt_order, rollout, step_stats, update
from tandem.objectives.ppo.setup import reference_policy


def run_group_stage(ctx: StageContext, algo, optimizer, scheduler, first: int, total: int) -> int:
    """Train ``total - first`` steps of ``ctx.stage`` with ``algo`` (a GRPO or RLOO); returns the new global step."""
    acc, cfg, stage, policy = ctx.accelerator, ctx.config, ctx.stage, ctx.model
    P, rank, feats, B, tok = acc.num_processes, acc.process_index, ctx.features, cfg.batch_size, algo.tokenizer
    if len(feats) < B or B < P:
        raise ValueError(f"{algo.name} stage {stage.name}: batching.batch_size {B} prompts per step needs at least "
                         f"{B} prompts ({len(feats)} here) and at least one per process ({P})")
    reference = (reference_policy(policy, cfg.output_dir / "stages", stage.index, cfg.reference, resumed=first > 0)
                 if algo.beta > 0 else None)
    eos, pad_id = eos_ids(policy, tok), pad_token_id(tok)

    def step_fn(loss):
        acc.backward(ctx.scaling.scale(loss))
        return apply_step(ctx, optimizer)

    task = ctx.progress.add_task(stage.name, total=total, completed=first, loss="-", tps="-")
    order: dict = {}
    for step in range(first, total):
        epoch, idx = prompt_order(len(feats), B, cfg.seed, stage.index, step, order)
        seed, t0 = cfg.seed * 1_000_003 + stage.index * 10_007 + step * 101, time.perf_counter()
        places = range(rank, len(idx), P)  # this process's prompts; a prompt's draws are seeded by its place
        ro, adv, n_tokens = rollout(policy, algo, [feats[idx[j]] for j in places], reference, ctx.batch_fn, pad_id,
                                    eos, [seed * 100_003 + j for j in places], lambda v: reduce_sum(acc, v))
        t1 = time.perf_counter()
        train = update(ctx.runner, policy, algo, ro, adv, ctx.batch_fn, step_fn, seed + rank, n_tokens)
        stats = step_stats(algo, ro, train, lambda v: reduce_sum(acc, v), P, t1 - t0, time.perf_counter() - t1)
        if not math.isfinite(stats["loss"]):
            raise diverged(stage.name, step + 1, f"{algo.name} loss")
        lr, _ = scheduler.get_last_lr()[0], scheduler.step()  # the rate this step used
        ctx.global_step += 1
        ctx.seen[stage.role] = ctx.seen.get(stage.role, 0) + len(idx)
        if acc.is_main_process and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            ctx.log.write(train_row(ctx, step + 1, epoch, lr, role=stage.role, seconds=time.perf_counter() - t0, **stats))
        ctx.progress.update(task, advance=1, loss=f"r={stats['reward']:.3f}", tps=f"{stats['train_tokens_per_s']:,.0f}")
        end_step(ctx, step + 1, total, optimizer, scheduler)  # val_every, checkpoint, a callback's stop
    return ctx.global_step
