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


def build_objective(recipe: Recipe, role: str, forced: str | None = None):
    """The objective of ``role``. ``forced`` (a method's ``preference_objective``, e.g. ``ppo``) takes its settings
    from ``objectives.<forced>`` when present, else from ``objectives.<role>``, which must then name it."""
    from tandem.objectives import build

    if forced is not None and forced in recipe.objectives:
        role = forced
    if role not in recipe.objectives:
        raise ValueError(f"the schedule needs objectives.{role}, which the recipe does not define")
    if forced is not None and recipe.objectives[role].name != forced:
        raise ValueError(f"schedule.method {recipe.schedule.method!r} trains the preference stages with {forced!r}: add an "
                         f"objectives.{forced} block (or set objectives.{role}.name: {forced})")
    cfg = recipe.objectives[role].model_dump()
    name = cfg.pop("name")
    try:
        return build(name, **cfg)
    except TypeError as e:
        raise ValueError(f"objectives.{role} ({name}): {e}") from None


REGULARIZER_NAMES = {"ewc": "modified_ewc", "freeze": "freeze", "fisher": "fisher_ewc", "l2": "l2_anchor", "l1": "l1_anchor"}


def build_regularizer(recipe: Recipe):
    """The recipe's explicit ``regularizer`` block, else the method's default with settings from ``hbat``."""
    from tandem.regularizers import build
    from tandem.schedules import get_method

    if recipe.regularizer is not None:
        cfg, where = recipe.regularizer.model_dump(), "regularizer"
        name = cfg.pop("name")
    else:
        key = get_method(recipe.schedule.method).regularizer
        if key is None:
            return None
        cfg, where, name = dict(getattr(recipe.hbat, key)), f"hbat.{key}", REGULARIZER_NAMES[key]
    try:
        return build(name, **cfg)
    except TypeError as e:
        raise ValueError(f"{where} ({name}): {e}") from None


def load_role_features(recipe: Recipe, role: str, tokenizer, encoder=None) -> tuple[list[dict], list[dict], dict]:
    """(train features, validation features, load/encode stats) for a data role."""
    src = recipe.data.sft if role == "sft" else recipe.data.preference
    if src is None:
        key = "data.sft" if role == "sft" else "data.preference"
        raise ValueError(f"the schedule trains a '{role}' stage but the recipe has no {key}")
    examples, report = load_examples(src.source, format=src.format, split=src.split, limit=src.limit)
    feats, stats = (encoder or encode_all)(tokenizer, examples, recipe.data.max_length, recipe.data.overlong)
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
    from tandem.schedules import get_method

    run_dir = Path(recipe.output_dir)
    acc = Accelerator(mixed_precision=mixed_precision(recipe.precision), cpu=not torch.cuda.is_available())
    if acc.is_main_process:
        prepare_run_dir(run_dir, resume, overwrite)
    acc.wait_for_everyone()
    set_seed(recipe.seed)
    if acc.is_main_process and not resume:
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))

    method = get_method(recipe.schedule.method)
    stages = build_stages(recipe.schedule.method, recipe.schedule.parts)
    model, tok = load_model(recipe, reward=any(s.role == "reward" for s in stages))
    model.to(acc.device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def batch_fn(feats):
        b = collate(feats, mode=recipe.batching.mode, pad_id=pad_id, max_tokens_per_row=recipe.batching.max_tokens_per_row)
        return {k: (v.to(acc.device) if torch.is_tensor(v) else v) for k, v in b.items()}

    roles = sorted({s.role for s in stages} | ({method.aux_role} if method.aux_role else set()))
    objectives = {role: build_objective(recipe, role, method.preference_objective if role == "preference" else None)
                  for role in roles}
    data = {role: _load_data(acc, recipe, role, tok, objectives[role], run_dir) for role in roles}
    n_parts = {role: max([s.n_parts for s in stages if s.role == role] or [1]) for role in roles}
    parts = {role: split_parts(data[role][0], n, seed=recipe.seed) if n > 1 else [data[role][0]] for role, n in n_parts.items()}
    if recipe.hbat.reference == "initial":  # DPO reference = the initial model for every stage
        parts = {role: [_prepare_stage(acc, model, objectives[role], p, batch_fn, run_dir / f"ref-initial-{role}-{i}.pt",
                                       reuse=(run_dir / f"ref-initial-{role}-{i}.pt").exists()) for i, p in enumerate(ps)]
                 for role, ps in parts.items()}
    # Validation features get their reference values once, from the initial model, so validation reward
    # margins and accuracies are comparable across stages (stored for --resume).
    val_data = {role: _val_reference(acc, model, objectives[role], data[role][1], batch_fn, run_dir / f"val-{role}.pt")
                for role in roles}
    regularizer = build_regularizer(recipe)
    runner = acc.prepare(Runner(model))
    metrics = MetricsLog(run_dir, tensorboard=recipe.logging.tensorboard, enabled=acc.is_main_process)
    ckpt_root = run_dir / "checkpoints"

    start_stage, start_step, global_step, resume_from = 0, 0, 0, None
    if resume:
        start_stage, start_step, global_step, resume_from = _resume(acc, ckpt_root, model, regularizer, metrics)
    elif recipe.checkpoint.stage_weights and acc.is_main_process:
        _save_weights(model, run_dir / "stages" / "start.safetensors")

    show = recipe.logging.progress if progress is None else progress
    prog = progress_bar(show and acc.is_main_process)
    t_start = time.perf_counter()
    stage_summaries = [json.loads((run_dir / "stages" / s.name / "stage.json").read_text()) for s in stages if s.index < start_stage]
    with prog:
        for stage in stages[start_stage:]:
            objective = objectives[stage.role]
            stage_dir = run_dir / "stages" / stage.name
            mid_stage = stage.index == start_stage and start_step > 0
            if acc.is_main_process:
                stage_dir.mkdir(parents=True, exist_ok=True)
            if regularizer is not None and not mid_stage:
                regularizer.before_stage(model, stage)
            feats = _prepare_stage(acc, model, objective, parts[stage.role][stage.part], batch_fn, stage_dir / "prepared.pt", reuse=mid_stage)
            aux = []
            if method.aux_role:
                aux_obj = objectives[method.aux_role]
                aux_feats = _prepare_stage(acc, model, aux_obj, data[method.aux_role][0], batch_fn, stage_dir / "prepared-aux.pt", reuse=mid_stage)
                aux = [(aux_obj, aux_feats, recipe.hbat.mix_gamma)]
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
                on_checkpoint=on_checkpoint, global_step=global_step, aux=aux,
            )
            t0 = time.perf_counter()
            first = start_step if mid_stage else 0
            # online objectives (PPO) drive their own stage, also when they are the auxiliary one (sft+ppo)
            driver = next((o.run_stage for o in [objective, *(a[0] for a in aux)] if hasattr(o, "run_stage")), None)
            global_step = driver(ctx, optimizer, scheduler, first, total) if driver else run_stage(ctx, optimizer, scheduler, first, total, spe)
            if regularizer is not None:
                _after_stage(regularizer, model, stage, feats, batch_fn)
            val = _validate(model, objectives, val_data, batch_fn, recipe)
            if val and acc.is_main_process:
                metrics.write({"split": "val", "stage": stage.name, "stage_index": stage.index, "step": global_step, **val})
            info = {**stage.to_dict(), "examples": len(feats), "steps": total, "seconds": time.perf_counter() - t0, "val": val}
            stage_summaries.append(info)
            if acc.is_main_process:
                if recipe.checkpoint.stage_weights:
                    _save_weights(model, stage_dir / "end.safetensors")
                (stage_dir / "stage.json").write_text(json.dumps(info, indent=2))
                if regularizer is not None and hasattr(regularizer, "importance_report"):
                    (stage_dir / "importance.json").write_text(json.dumps(regularizer.importance_report(), indent=2))
            _save(acc, ckpt_root, model, None, None, regularizer, metrics, recipe, stage, total, global_step, True)

    acc.wait_for_everyone()
    summary = {"name": recipe.name, "method": recipe.schedule.method, "global_steps": global_step,
               "seconds": time.perf_counter() - t_start, "stages": stage_summaries}
    chosen = _select_stage(recipe, stage_summaries)
    summary["selected_stage"] = chosen["name"] if chosen else (stage_summaries[-1]["name"] if stage_summaries else None)
    if chosen is not None and chosen is not stage_summaries[-1]:
        ckpt.load_trainable_file(model, run_dir / "stages" / chosen["name"] / "end.safetensors")
        log.info("final model = stage %s (best %s)", chosen["name"], recipe.hbat.select_metric)
    if acc.is_main_process:
        from tandem.models import save_model

        save_model(model, tok, run_dir / "final", merged=recipe.save_merged and recipe.model.lora is not None)
        summary["final"] = str(run_dir / "final")
        summary["final_val"] = (chosen or next((s for s in reversed(stage_summaries) if s["val"]), {"val": {}}))["val"]
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics.close()
    acc.wait_for_everyone()
    return summary


def _load_data(acc, recipe, role, tok, objective, run_dir) -> tuple[list[dict], list[dict]]:
    train_f, val_f, info = load_role_features(recipe, role, tok, encoder=getattr(objective, "encode", None))
    enc = info["encode"]
    if acc.is_main_process:
        log.info(
            "data %s: %s -> %d train / %d val examples (%s truncated, %s dropped as over-long; skipped rows: %s)",
            role, info["source"], info["train"], info["val"], enc.get("truncated", 0), enc.get("dropped", 0),
            info["load"].get("skipped", {}),
        )
        (run_dir / f"data-{role}.json").write_text(json.dumps(info, indent=2, default=str))
    return train_f, val_f


def _resume(acc, ckpt_root, model, regularizer, metrics):
    found = ckpt.list_checkpoints(ckpt_root)
    if not found:
        log.info("no checkpoint in %s: starting from the beginning", ckpt_root)
        return 0, 0, 0, None
    path = found[-1]
    st = ckpt.read_state(path)
    ckpt.load_trainable(model, path)
    if regularizer is not None and (path / "regularizer.pt").exists():
        regularizer.load_state_dict(torch.load(path / "regularizer.pt", weights_only=True))
    if acc.is_main_process:
        metrics.truncate(st["metrics_offset"])
    if st["stage_done"]:
        stage, step = st["stage_index"] + 1, 0
    else:
        stage, step = st["stage_index"], st["stage_step"]
    log.info("resuming from %s (stage %d, step %d)", path.name, stage, step)
    return stage, step, st["global_step"], path


def _after_stage(regularizer, model, stage, feats, batch_fn) -> None:
    """Fisher EWC needs single-example batches of log p(y|x) (the chosen response for preference data)."""
    if hasattr(regularizer, "fisher_batches") or type(regularizer).__name__ == "FisherEWC":
        n = getattr(regularizer, "samples", 64)
        single = [f if "input_ids" in f else {"input_ids": f["chosen_input_ids"], "labels": f["chosen_labels"]} for f in feats[:n]]
        regularizer.after_stage(model, stage, batches=[batch_fn([f]) for f in single])
    else:
        regularizer.after_stage(model, stage)


def _validate(model, objectives, val_data, batch_fn, recipe) -> dict[str, float]:
    val = {}
    for role, val_f in val_data.items():
        if val_f and not hasattr(objectives[role], "run_stage"):
            v = evaluate_objective(model, objectives[role], val_f, batch_fn, recipe.batching.batch_size)
            val.update({f"{role}/{k}": x for k, x in v.items()})
    return val


def _select_stage(recipe, summaries: list[dict]) -> dict | None:
    """The stage whose end weights become final/: best by hbat.select_metric when hbat.final == 'best'."""
    metric = recipe.hbat.select_metric
    if recipe.hbat.final != "best" or not metric:
        return None
    scored = [s for s in summaries if metric in s["val"]]
    if not scored:
        raise ValueError(f"hbat.select_metric {metric!r} is not among the validation metrics (is data.val_size > 0?)")
    key = (lambda s: s["val"][metric]) if recipe.hbat.select_mode == "max" else (lambda s: -s["val"][metric])
    return max(scored, key=key)


def _save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(ckpt.trainable_state(model), str(tmp))
    os.replace(tmp, path)


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
