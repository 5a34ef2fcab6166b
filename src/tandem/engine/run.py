"""A training run: recipe -> model, data, stages -> run directory.

Run directory (the public record):
  recipe.yaml         the resolved recipe
  metrics.jsonl       one JSON object per logged step (split train/val)
  tb/                 TensorBoard events
  checkpoints/        atomic checkpoints (latest ``checkpoint.keep``)
  stages/NN-name/     stage.json (data part, steps, start/end), ref_logps.pt for preference stages
  final/              the trained model (LoRA: adapter, plus merged/ when save_merged)
  summary.json        final metrics
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from tandem.config.recipe import Recipe, dump_recipe
from tandem.data import collate, encode_all, load_examples, split_parts, train_val_split
from tandem.engine import checkpoint as ckpt
from tandem.engine.metrics import MetricsLog, progress_bar
from tandem.engine.stage import (
    Runner,
    StageContext,
    TrainingDiverged,
    evaluate_objective,
    make_optimizer,
    plan_steps,
    run_stage,
)
from tandem.schedules import build_stages

log = logging.getLogger("tandem")


class RunDirError(RuntimeError):
    pass


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume:
            return
        if not overwrite:
            raise RunDirError(
                f"{run_dir} already exists and is not empty: pass --resume to continue that run or --overwrite to replace it"
            )
        shutil.rmtree(run_dir)
    elif resume:
        raise RunDirError(f"{run_dir}: nothing to resume (no such run)")
    run_dir.mkdir(parents=True, exist_ok=True)


def mixed_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def load_model(recipe: Recipe, reward: bool):
    from tandem.models import apply_lora, load_policy, load_reward_model

    m = recipe.model
    kw = dict(gguf_file=m.gguf_file, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
    model, tok = (load_reward_model if reward else load_policy)(m.name_or_path, **kw)
    if m.lora is not None:
        model = apply_lora(
            model,
            r=m.lora.r,
            alpha=m.lora.alpha,
            dropout=m.lora.dropout,
            target_modules=m.lora.target_modules,
            task_type="SEQ_CLS" if reward else "CAUSAL_LM",
        )
    return model, tok


def build_objective(recipe: Recipe, role: str):
    from tandem.objectives import build

    if role not in recipe.objectives:
        raise ValueError(f"the schedule needs objectives.{role}, which the recipe does not define")
    cfg = recipe.objectives[role].model_dump()
    name = cfg.pop("name")
    try:
        return build(name, **cfg)
    except TypeError as e:
        raise ValueError(f"objectives.{role} ({name}): {e}") from None


def build_regularizer(recipe: Recipe):
    if recipe.regularizer is None:
        return None
    from tandem.regularizers import build

    cfg = recipe.regularizer.model_dump()
    name = cfg.pop("name")
    try:
        return build(name, **cfg)
    except TypeError as e:
        raise ValueError(f"regularizer ({name}): {e}") from None


def load_role_features(recipe: Recipe, role: str, tokenizer) -> tuple[list[dict], list[dict], dict]:
    """(train features, validation features, load/encode stats) for a data role."""
    src = recipe.data.sft if role == "sft" else recipe.data.preference
    if src is None:
        key = "data.sft" if role == "sft" else "data.preference"
        raise ValueError(f"the schedule trains a '{role}' stage but the recipe has no {key}")
    examples, report = load_examples(src.source, format=src.format, split=src.split, limit=src.limit)
    feats, stats = encode_all(tokenizer, examples, recipe.data.max_length, recipe.data.overlong)
    if not feats:
        raise ValueError(f"{src.source}: no usable examples after encoding (max_length={recipe.data.max_length})")
    if recipe.data.val_size:
        train, val = train_val_split(feats, val_size=recipe.data.val_size, seed=recipe.seed)
    else:
        train, val = feats, []
    info = {"source": src.source, "load": _as_dict(report), "encode": _as_dict(stats), "train": len(train), "val": len(val)}
    return train, val, info


def _as_dict(x) -> dict:
    if isinstance(x, dict):
        return x
    if hasattr(x, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(x)
    return {"value": str(x)}


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, progress: bool | None = None) -> dict:
    run_dir = Path(recipe.output_dir)
    acc = Accelerator(mixed_precision=mixed_precision(recipe.precision), cpu=not torch.cuda.is_available())
    if acc.is_main_process:
        prepare_run_dir(run_dir, resume, overwrite)
    acc.wait_for_everyone()
    set_seed(recipe.seed)
    torch.use_deterministic_algorithms(False)
    if acc.is_main_process and not resume:
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))

    stages = build_stages(recipe.schedule.method, recipe.schedule.parts)
    reward = any(s.role == "reward" for s in stages)
    model, tok = load_model(recipe, reward=reward)
    model.to(acc.device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def batch_fn(feats):
        b = collate(feats, mode=recipe.batching.mode, pad_id=pad_id, max_tokens_per_row=recipe.batching.max_tokens_per_row)
        return {k: (v.to(acc.device) if torch.is_tensor(v) else v) for k, v in b.items()}

    roles = sorted({s.role for s in stages})
    data: dict[str, tuple] = {}
    for role in roles:
        train_f, val_f, info = load_role_features(recipe, role, tok)
        data[role] = (train_f, val_f)
        dropped = info["encode"].get("dropped", 0) if isinstance(info["encode"], dict) else 0
        truncated = info["encode"].get("truncated", 0) if isinstance(info["encode"], dict) else 0
        if acc.is_main_process:
            log.info(
                "data %s: %s -> %d train / %d val examples (%d truncated, %d dropped as over-long; load report %s)",
                role, info["source"], info["train"], info["val"], truncated, dropped, info["load"],
            )
            (run_dir / f"data-{role}.json").write_text(json.dumps(info, indent=2))
    parts = {
        role: split_parts(data[role][0], recipe.schedule.parts, seed=recipe.seed) if recipe.schedule.parts > 1 else [data[role][0]]
        for role in data
    }

    objectives = {role: build_objective(recipe, role) for role in roles}
    # Validation features get their reference values once, from the initial model, so validation
    # reward margins and accuracies are comparable across stages (stored for --resume).
    val_data = {role: _val_reference(acc, model, objectives[role], data[role][1], batch_fn, run_dir / f"val-{role}.pt")
                for role in roles}
    regularizer = build_regularizer(recipe)
    runner = acc.prepare(Runner(model))

    metrics = MetricsLog(run_dir, tensorboard=recipe.logging.tensorboard, enabled=acc.is_main_process)
    ckpt_root = run_dir / "checkpoints"

    # Resume: find where we were.
    start_stage, start_step, global_step, resume_from = 0, 0, 0, None
    if resume:
        found = ckpt.list_checkpoints(ckpt_root)
        if found:
            resume_from = found[-1]
            st = ckpt.read_state(resume_from)
            ckpt.load_trainable(model, resume_from)
            if regularizer is not None and (resume_from / "regularizer.pt").exists():
                regularizer.load_state_dict(torch.load(resume_from / "regularizer.pt", weights_only=True))
            global_step = st["global_step"]
            if st["stage_done"]:
                start_stage, start_step = st["stage_index"] + 1, 0
            else:
                start_stage, start_step = st["stage_index"], st["stage_step"]
            if acc.is_main_process:
                metrics.truncate(st["metrics_offset"])
                log.info("resuming from %s (stage %d, step %d)", resume_from.name, start_stage, start_step)

    show = recipe.logging.progress if progress is None else progress
    prog = progress_bar(show and acc.is_main_process)
    t_start = time.perf_counter()
    stage_summaries = []
    with prog:
        for stage in stages:
            if stage.index < start_stage:
                continue
            objective = objectives[stage.role]
            feats = parts[stage.role][stage.part]
            stage_dir = run_dir / "stages" / stage.name
            mid_stage = stage.index == start_stage and start_step > 0
            if acc.is_main_process:
                stage_dir.mkdir(parents=True, exist_ok=True)
            if regularizer is not None and not mid_stage:
                regularizer.before_stage(model, stage)
            feats = _prepare_stage(acc, model, objective, feats, batch_fn, stage_dir / "prepared.pt", reuse=mid_stage)
            spe, total = plan_steps(len(feats), recipe, stage.index)
            optimizer, scheduler = make_optimizer(model, recipe, total)
            if mid_stage:
                ckpt.load_optim(resume_from, optimizer, scheduler, None)
                ckpt.load_rng(resume_from)
            else:
                set_seed(recipe.seed + 1000 * stage.index)

            def on_checkpoint(stage_step, opt, sch, _stage=stage):
                _save(acc, ckpt_root, model, opt, sch, regularizer, metrics, recipe, _stage, stage_step, ctx.global_step, False)

            ctx = StageContext(
                accelerator=acc, runner=runner, model=model, objective=objective, features=feats, batch_fn=batch_fn,
                recipe=recipe, stage=stage, regularizer=regularizer, log=metrics, progress=prog,
                on_checkpoint=on_checkpoint, global_step=global_step,
            )
            t0 = time.perf_counter()
            global_step = run_stage(ctx, optimizer, scheduler, start_step if mid_stage else 0, total, spe)
            if regularizer is not None:
                regularizer.after_stage(model, stage)
            val = {}
            for role, val_f in val_data.items():
                if val_f:
                    v = evaluate_objective(model, objectives[role], val_f, batch_fn, recipe.batching.batch_size)
                    val.update({f"{role}/{k}": x for k, x in v.items()})
            if val and acc.is_main_process:
                metrics.write({"split": "val", "stage": stage.name, "stage_index": stage.index, "step": global_step, **val})
            info = {**stage.to_dict(), "examples": len(feats), "steps": total, "seconds": time.perf_counter() - t0, "val": val}
            stage_summaries.append(info)
            if acc.is_main_process:
                (stage_dir / "stage.json").write_text(json.dumps(info, indent=2))
            _save(acc, ckpt_root, model, None, None, regularizer, metrics, recipe, stage, total, global_step, True)
            if acc.is_main_process and regularizer is not None and hasattr(regularizer, "importance_report"):
                (stage_dir / "importance.json").write_text(json.dumps(regularizer.importance_report(), indent=2))

    acc.wait_for_everyone()
    summary = {"name": recipe.name, "global_steps": global_step, "seconds": time.perf_counter() - t_start, "stages": stage_summaries}
    if acc.is_main_process:
        from tandem.models import save_model

        save_model(model, tok, run_dir / "final", merged=recipe.save_merged and recipe.model.lora is not None)
        summary["final"] = str(run_dir / "final")
        last_val = next((s["val"] for s in reversed(stage_summaries) if s["val"]), {})
        summary["final_val"] = last_val
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics.close()
    acc.wait_for_everyone()
    return summary


def _val_reference(acc, model, objective, feats, batch_fn, cache: Path) -> list[dict]:
    if not feats:
        return feats
    return _prepare_stage(acc, model, objective, feats, batch_fn, cache, reuse=cache.exists())


def _prepare_stage(acc, model, objective, feats, batch_fn, cache: Path, reuse: bool) -> list[dict]:
    """Run the objective's one-off pass (e.g. DPO reference log-probs) and store its results in ``cache``.

    On resume the stored values are reused: the model is no longer where the values were computed.
    """
    if reuse and cache.exists():
        extra = torch.load(cache, weights_only=True)
        return [{**f, **{k: v[i].item() for k, v in extra.items()}} for i, f in enumerate(feats)]
    P = acc.num_processes
    shard = feats[acc.process_index :: P]
    with acc.autocast():
        out = objective.prepare(model, shard, batch_fn)
    if P > 1:
        gathered = [None] * P
        torch.distributed.all_gather_object(gathered, out)
        merged = [None] * len(feats)
        for p in range(P):
            merged[p::P] = gathered[p]
        out = merged
    keys = sorted({k for k in out[0] if k.startswith("ref_")}) if out else []
    if keys and acc.is_main_process:
        tmp = cache.with_suffix(".tmp")
        torch.save({k: torch.tensor([f[k] for f in out], dtype=torch.float64) for k in keys}, tmp)
        os.replace(tmp, cache)
    return out


def _save(acc, root, model, opt, sch, reg, metrics, recipe, stage, stage_step, global_step, done):
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {
            "stage_index": stage.index,
            "stage_name": stage.name,
            "stage_step": stage_step,
            "global_step": global_step,
            "stage_done": done,
            "metrics_offset": metrics.offset(),
        }
        ckpt.save_checkpoint(root, model, opt, sch, reg, state, keep=recipe.checkpoint.keep)
    acc.wait_for_everyone()


__all__ = ["train", "RunDirError", "TrainingDiverged"]
