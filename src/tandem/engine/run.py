"""A run of stages: built objects in (``RunPlan``), trained model and run directory out (layout in
docs/architecture.md: metrics.jsonl, tb/, checkpoints/, stages/NN-name/, final/, summary.json).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import set_seed

from tandem.engine import checkpoint as ckpt
from tandem.engine.context import AuxTerm, BatchFn, LoopConfig, Runner, StageContext
from tandem.engine.loop import make_optimizer, reduce_sum, run_stage
from tandem.engine.group_loop import run_group_stage
from tandem.engine.ppo_loop import run_ppo_stage
from tandem.io.metrics import MetricsLog, progress_bar, tracked
from tandem.distributed import checkpoint as sharded, is_sharded, save_final
from tandem.io.weights import load_trainable_file, save_trainable
from tandem.models.card import card_info
from tandem.objectives.base import evaluate_objective, prepare
from tandem.objectives.ppo.setup import validate_prompts
from tandem.optim import GradScaling, trained_values
from tandem.regularizers.base import StageData
from tandem.schedules.steps import Alternation, allocate, plan_steps, select_stage

log = logging.getLogger("tandem")


@dataclass
class RunPlan:
    """The built objects of a run (``tandem.pipelines.train.build_plan`` makes one from a recipe)."""

    accelerator: object
    model: torch.nn.Module
    tokenizer: object
    name: str
    method: str
    stages: list  # [tandem.schedules.Stage]
    loops: dict[int, Literal["offline", "ppo", "group"]]  # stage index -> which loop runs it (from the method table)
    objectives: dict[str, object]  # role -> objective (PPO for PPO roles)
    parts: dict[str, list[list[dict]]]  # role -> data parts
    train: dict[str, list[dict]]  # role -> all training features (auxiliary terms draw from these)
    val: dict[str, list[dict]]  # role -> validation features
    aux_role: str | None
    aux_weight: float
    aux_in: set[str] | None  # stage roles the auxiliary term joins (None: every stage)
    ppo_role: str | None  # the role trained online (a PPO, GRPO or RLOO objective), None for offline methods
    regularizer: object | None
    batch_fn: BatchFn
    save_merged: bool
    meta: dict  # the resolved recipe as plain data: tracker hyperparameters and the model card
    hooks: object | None = None  # tandem.io.hooks.RunHooks: the callbacks (the metrics log calls them)

class Checkpointer:
    """Atomic checkpoints of the run (``checkpoints/``); every process calls ``save``, the main one writes."""

    def __init__(self, plan: RunPlan, cfg: LoopConfig, metrics: MetricsLog):
        self.plan, self.cfg, self.metrics = plan, cfg, metrics
        self.root = Path(cfg.output_dir) / "checkpoints"

    def save(self, stage, stage_step: int, global_step: int, done: bool, optimizer=None, scheduler=None,
             ctx: StageContext | None = None) -> None:
        acc = self.plan.accelerator
        acc.wait_for_everyone()
        if not is_sharded(self.plan.model):  # sharded: save_sharded runs a check all processes agree on
            ckpt.assert_finite(self.plan.model, f"checkpoint stage{stage.index:02d}-step{global_step:06d}", self.root)
        state = {"stage_index": stage.index, "stage_name": stage.name, "stage_step": stage_step, "global_step": global_step,
                 "stage_done": done, "metrics_offset": self.metrics.offset(), "seen": dict(ctx.seen) if ctx else {},
                 "alternation": ctx.alternation.state_dict() if ctx and ctx.alternation else None}
        if is_sharded(self.plan.model) or acc.is_main_process:  # a sharded model: every process writes its shards
            (sharded.save_sharded if is_sharded(self.plan.model) else ckpt.save_checkpoint)(
                self.root, self.plan.model, optimizer, scheduler, self.plan.regularizer, state, keep=self.cfg.checkpoint_keep)
        acc.wait_for_everyone()


def stage_steps(plan: RunPlan, cfg: LoopConfig) -> list[int]:
    """Optimizer steps of every stage: epochs over its data, capped per stage, the run's budget split over stages."""
    def n(stage) -> int:
        extra = len(plan.train[plan.aux_role]) if cfg.alternate and has_aux(plan, stage) else 0
        return len(plan.parts[stage.role][stage.part]) + extra

    return allocate([plan_steps(n(s), cfg.batch_size, cfg.epochs, cfg.max_steps_per_stage)[1] for s in plan.stages],
                    cfg.max_steps)


def has_aux(plan: RunPlan, stage) -> bool:
    return plan.aux_role is not None and (plan.aux_in is None or stage.role in plan.aux_in)


def run(plan: RunPlan, cfg: LoopConfig, resume: bool = False) -> dict:
    """Train every stage of ``plan`` into ``cfg.output_dir``; returns the summary (also ``summary.json``)."""
    acc, model, run_dir, main = plan.accelerator, plan.model, Path(cfg.output_dir), plan.accelerator.is_main_process
    (prog := progress_bar(cfg.progress and main)).start()  # stopped when the stages are done (the ``with`` below)
    if cfg.reference == "initial":  # DPO reference = the initial model for every stage
        plan.parts = {role: [prepare(acc, model, plan.objectives[role], p, plan.batch_fn, run_dir / f"ref-initial-{role}-{i}.pt",
                                     True, tracked(prog, f"reference {role}-{i + 1}", len(p))) for i, p in enumerate(ps)]
                      for role, ps in plan.parts.items()}
    # Validation references come from the initial model, so margins are comparable across stages.
    val = {role: prepare(acc, model, plan.objectives[role], f, plan.batch_fn, run_dir / f"val-{role}.pt", True,
                         tracked(prog, f"reference val {role}", len(f))) if f and role != plan.ppo_role else f
           for role, f in plan.val.items()}
    runner = Runner(model) if is_sharded(model) else acc.prepare(Runner(model))  # FSDP2 reduces the gradients
    metrics = MetricsLog(run_dir, enabled=main, report_to=cfg.report_to, project=cfg.project, run_name=run_dir.name,
                         config=plan.meta, hooks=plan.hooks)
    saver = Checkpointer(plan, cfg, metrics)
    scaling = GradScaling(cfg.loss_scaling, acc.device.type)  # one loss scale for the whole run (fp16)
    start_stage, start_step, global_step, resume_from = 0, 0, 0, None
    if resume:
        start_stage, start_step, global_step, resume_from = _resume(acc, saver.root, model, plan.regularizer, metrics)
    elif cfg.stage_weights:  # every process (a sharded model is gathered), the main one writes
        save_trainable(model, run_dir / "stages" / "start.safetensors")
    steps = stage_steps(plan, cfg)
    t_start = time.perf_counter()
    summaries = [json.loads((run_dir / "stages" / s.name / "stage.json").read_text())
                 for s in plan.stages if s.index < start_stage]
    with prog:
        for stage in plan.stages[start_stage:]:
            stage_dir = run_dir / "stages" / stage.name
            mid = stage.index == start_stage and start_step > 0
            if main:
                stage_dir.mkdir(parents=True, exist_ok=True)
            if plan.regularizer is not None and not mid:
                plan.regularizer.before_stage(model, stage)
            objective = plan.objectives[stage.role]
            part = plan.parts[stage.role][stage.part]
            feats = prepare(acc, model, objective, part, plan.batch_fn, stage_dir / "prepared.pt", mid,
                            tracked(prog, f"{stage.name} reference", len(part)))
            aux = []
            if has_aux(plan, stage):
                aux_obj = plan.objectives[plan.aux_role]
                aux_feats = prepare(acc, model, aux_obj, plan.train[plan.aux_role], plan.batch_fn,
                                    stage_dir / "prepared-aux.pt", reuse=mid)
                aux = [AuxTerm(aux_obj, aux_feats, plan.aux_weight, plan.aux_role)]
            total = steps[stage.index]
            optimizer, scheduler = make_optimizer(model, cfg, total, stage.role)
            state = ckpt.read_state(resume_from) if mid else {}
            if mid:
                (sharded.load_optimizer(resume_from, model, optimizer, scheduler) if is_sharded(model) else
                 ckpt.load_optim(resume_from, optimizer, scheduler, None))
                ckpt.load_rng(resume_from)
            else:
                set_seed(cfg.seed + 1000 * stage.index)
            alternation = Alternation(cfg.alternate, cfg.alternate_weight, cfg.seed + stage.index) if cfg.alternate and aux else None
            if alternation is not None and state.get("alternation"):
                alternation.load_state_dict(state["alternation"])

            def on_checkpoint(stage_step, opt, sch, _stage=stage):
                saver.save(_stage, stage_step, ctx.global_step, False, opt, sch, ctx)

            def on_validate(stage_step: int | None = None, _stage=stage) -> dict:  # inside the stage, and at its end
                v = validate(plan, val, cfg, prog)
                if v and main:
                    metrics.write({"split": "val", "stage": _stage.name, "stage_index": _stage.index, "step": ctx.global_step,
                                   **({"stage_step": stage_step} if stage_step else {}), **v})
                return v

            ctx = StageContext(accelerator=acc, runner=runner, model=model, objective=objective, features=feats,
                               batch_fn=plan.batch_fn, config=cfg, stage=stage, regularizer=plan.regularizer,
                               log=metrics, progress=prog, on_checkpoint=on_checkpoint, on_validate=on_validate,
                               global_step=global_step, aux=aux, alternation=alternation,
                               seen=dict(state.get("seen", {})), scaling=scaling)
            t0 = time.perf_counter()
            first = start_step if mid else 0
            if plan.loops[stage.index] == "ppo":
                global_step = run_ppo_stage(ctx, plan.objectives[plan.ppo_role], optimizer, scheduler, first, total)
            elif plan.loops[stage.index] == "group":
                global_step = run_group_stage(ctx, plan.objectives[plan.ppo_role], optimizer, scheduler, first, total)
            else:
                global_step = run_stage(ctx, optimizer, scheduler, first, total)
            ckpt.assert_finite(model, f"stage {stage.name}", saver.root)
            if plan.regularizer is not None:
                plan.regularizer.after_stage(model, stage, StageData.of(feats, plan.batch_fn, trained_values(optimizer, model)))
            v = on_validate()
            info = {**stage.to_dict(), "examples": len(feats), "steps": total, "seen": ctx.seen,
                    "seconds": time.perf_counter() - t0, "val": v}
            summaries.append(info)
            if cfg.stage_weights:
                save_trainable(model, stage_dir / "end.safetensors")
            if main:
                (stage_dir / "stage.json").write_text(json.dumps(info, indent=2))
                report = plan.regularizer.report() if plan.regularizer is not None else None
                if report is not None:
                    (stage_dir / "importance.json").write_text(json.dumps(report, indent=2))
            saver.save(stage, total, global_step, True)
            metrics.stop_if_requested(info, last=stage is plan.stages[-1])  # on_stage_end callbacks, "stop"
        acc.wait_for_everyone()
        summary = _finish(plan, cfg, summaries, global_step, time.perf_counter() - t_start, tracked(prog, "save final/", 1))
    metrics.close()
    acc.wait_for_everyone()
    return summary


def _finish(plan: RunPlan, cfg: LoopConfig, summaries: list[dict], global_step: int, seconds: float, advance) -> dict:
    run_dir = Path(cfg.output_dir)
    budget = dict(sum((Counter(info.get("seen", {})) for info in summaries), Counter()))
    summary = {"name": plan.name, "method": plan.method, "processes": plan.accelerator.num_processes,
               "global_steps": global_step, "seconds": seconds, "budget": budget, "stages": summaries}
    chosen = select_stage(summaries, cfg.final, cfg.select_metric, cfg.select_mode)
    summary["selected_stage"] = chosen["name"] if chosen else (summaries[-1]["name"] if summaries else None)
    if chosen is not None and chosen is not summaries[-1]:
        load_trainable_file(plan.model, run_dir / "stages" / chosen["name"] / "end.safetensors")
        log.info("final model = stage %s (best %s)", chosen["name"], cfg.select_metric)
    save_final(plan.model, plan.tokenizer, run_dir / "final", merged=plan.save_merged,
               card=card_info(plan.meta, summary))  # every process (a sharded model is gathered), process 0 writes
    if plan.accelerator.is_main_process:
        advance(1)
        summary["final"] = str(run_dir / "final")
        summary["final_val"] = (chosen or next((s for s in reversed(summaries) if s["val"]), {"val": {}}))["val"]
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _resume(acc, ckpt_root, model, regularizer, metrics):
    path, skipped = ckpt.newest_usable(ckpt_root)  # incomplete or corrupt ones are named and skipped
    if skipped:
        log.warning("%s", ckpt.skipped_line(skipped, path))
    if path is None:
        log.info("no checkpoint in %s: starting from the beginning", ckpt_root)
        if acc.is_main_process:
            metrics.truncate(0)  # rows of the attempt that left no checkpoint would repeat steps 1, 2, ...
        return 0, 0, 0, None
    st = ckpt.read_state(path)
    (sharded.load_model(path, model, regularizer) if sharded.is_sharded_checkpoint(path) else
     ckpt.load_trainable(model, path))
    if regularizer is not None and (path / "regularizer.pt").exists():
        regularizer.load_state_dict(torch.load(path / "regularizer.pt", weights_only=True))
    if acc.is_main_process:
        metrics.truncate(st["metrics_offset"])
    stage, step = (st["stage_index"] + 1, 0) if st["stage_done"] else (st["stage_index"], st["stage_step"])
    log.info("resuming from %s (stage %d, step %d)", path.name, stage, step)
    return stage, step, st["global_step"], path


def validate(plan: RunPlan, val: dict[str, list[dict]], cfg: LoopConfig, prog) -> dict[str, float]:
    """Validation metrics per role: each objective's loss and metrics; PPO: reward and KL of sampled replies."""
    out, acc = {}, plan.accelerator
    for role, feats in ((r, f) for r, f in val.items() if f):
        if role == plan.ppo_role:
            v = validate_prompts(plan.objectives[role], plan.model, feats[acc.process_index :: acc.num_processes],
                                 plan.batch_fn, cfg.seed, Path(cfg.output_dir) / "stages", lambda x: reduce_sum(acc, x))
        else:
            v = evaluate_objective(plan.model, plan.objectives[role], feats, plan.batch_fn, cfg.batch_size,
                                   tracked(prog, f"validate {role}", len(feats)))
        out.update({f"{role}/{k}": x for k, x in v.items()})
    return out
