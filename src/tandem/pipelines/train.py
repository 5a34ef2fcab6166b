"""``tandem train``: a recipe -> model, data, objectives, regularizer, stages -> the engine's run.

Everything the recipe names is built and checked before the run directory is touched (an unknown method,
objective argument or regularizer setting fails in a second, not after the model has loaded).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from tandem.config.recipe import Recipe, dump_recipe
from tandem.data import collate, split_parts
from tandem.distributed.settings import check_supported, read_settings
from tandem.engine.context import LoopConfig
from tandem.engine.run import RunPlan, run
from tandem.io.rundir import RunDirError, check_run_dir, open_run_dir, path_inputs
from tandem.models.precision import apply_precision, resolve, training_attention
from tandem.pipelines.train_data import check_source, data_sources, load_data, load_role_features  # noqa: F401 - re-exported
from tandem.pipelines.resume import check_data_unchanged, record_changes, record_data, resume_changes
from tandem.schedules import Method, build_stages, get_method
from tandem.models.sampling import pad_token_id

log = logging.getLogger("tandem")


def mixed_precision(precision: str) -> str:
    """The resolved precision as accelerate/FSDP name it; ``auto`` follows the hardware (tandem.models.precision)."""
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve(precision).name]


def loop_config(recipe: Recipe, progress: bool | None = None) -> LoopConfig:
    b, o, s, h, c, p = recipe.batching, recipe.optimizer, recipe.schedule, recipe.hbat, recipe.checkpoint, recipe.probe
    return LoopConfig(
        output_dir=Path(recipe.output_dir), seed=recipe.seed, batch_size=b.batch_size, grad_accum=b.grad_accum,
        group_by_length=b.group_by_length, epochs=s.epochs, max_steps=s.max_steps,
        max_steps_per_stage=s.max_steps_per_stage, alternate=get_method(s.method).alternate,
        alternate_weight=h.alternate_weight, lr=o.lr, lr_by_role=dict(o.lr_by_role), betas=tuple(o.betas),
        eps=o.eps, weight_decay=o.weight_decay, scheduler=o.scheduler, warmup_ratio=o.warmup_ratio,
        warmup_steps=o.warmup_steps, max_grad_norm=o.max_grad_norm, log_every=recipe.logging.every,
        val_every=recipe.logging.val_every, checkpoint_every=c.every, checkpoint_keep=c.keep,
        stage_weights=c.stage_weights if c.stage_weights is not None else stage_weights_needed(recipe),
        reference=h.reference, select_metric=h.select_metric,
        select_mode=h.select_mode, final=h.final, probe_every=p.every, probe_pairs=p.pairs, probe_params=p.params,
        progress=recipe.logging.progress if progress is None else progress,
        report_to=tuple(recipe.logging.report_to), project=recipe.logging.project or recipe.name,
        loss_scaling=resolve(recipe.precision).loss_scaling,
    )


def stage_weights_needed(recipe: Recipe) -> bool:
    """Whether the run needs ``stages/`` weights: several stages (``tandem tax`` and stage models read them), an online
    stage (PPO, GRPO, RLOO: its KL reference), ``hbat.final: best`` or ``hbat.reference: initial``."""
    method, stages = get_method(recipe.schedule.method), build_stages(recipe.schedule.method, recipe.schedule.parts)
    return (len(stages) > 1 or any(method.loop(s) != "offline" for s in stages) or recipe.hbat.final == "best"
            or recipe.hbat.reference == "initial")


def prepare_tokenizer(recipe: Recipe, tok):
    """``data.chat_template`` applied; a tokenizer with no template gets tandem's fallback, with a warning line."""
    from tandem.data.templates import ensure_chat_template, set_chat_template

    set_chat_template(tok, recipe.data.chat_template)
    ensure_chat_template(tok)
    return tok


def load_model(recipe: Recipe, reward: bool, device=None, attn_implementation: str | None = None, model=None,
               tokenizer=None):
    """The recipe's model and tokenizer (LoRA applied); ``attn_implementation`` as resolved by
    :func:`tandem.models.precision.training_attention`. ``model``: a model object to train instead of loading one
    (a peft model keeps its adapters; ``model.lora`` then must be unset); ``tokenizer``: one already prepared."""
    from tandem.models import apply_lora, load_policy, load_reward_model
    from tandem.models.lora import prepare_for_training

    m = recipe.model
    kw = dict(gguf_file=m.gguf_file, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision,
              attn_implementation=attn_implementation, quantization=m.quantization, device=device)
    if model is not None:
        if is_peft(model):
            if m.lora is not None:
                raise ValueError("model: a peft model already holds its adapters; leave model.lora out of the recipe")
            return model, tokenizer
        tok = tokenizer
    else:
        model, tok = (load_reward_model if reward else load_policy)(m.name_or_path, **kw)
        tok = tokenizer if tokenizer is not None else prepare_tokenizer(recipe, tok)
    model = prepare_for_training(model, gradient_checkpointing=m.gradient_checkpointing,
                                 quantized=m.quantization is not None, lora=m.lora is not None)
    if m.lora is not None:
        from tandem.models.checks import check_lora

        check_lora(model, m.lora.r, m.lora.target_modules)  # matching nothing, or a rank past the width: one line
        model = apply_lora(model, r=m.lora.r, alpha=m.lora.alpha, dropout=m.lora.dropout,
                           target_modules=m.lora.target_modules, task_type="SEQ_CLS" if reward else "CAUSAL_LM")
    return model, tok


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - a core dependency
        return False
    return isinstance(model, PeftModel)


def build_objective(recipe: Recipe, role: str, forced: str | None = None):
    """The objective of ``role``. ``forced`` (a method's ``preference_objective``, e.g. ``ppo``) takes its settings
    from ``objectives.<forced>`` when present, else from ``objectives.<role>``, which must then name it."""
    from tandem.config.values import number_arguments
    from tandem.objectives import build
    from tandem.objectives.registry import OBJECTIVES

    if forced is not None and forced in recipe.objectives:
        role = forced
    if role == "pretrain" and role not in recipe.objectives:
        return build("sft")  # the LM loss on the pretraining-like texts, unless objectives.pretrain says otherwise
    if role not in recipe.objectives:
        raise ValueError(f"the schedule needs objectives.{role}, which the recipe does not define")
    if forced == "grpo":  # GRPO methods: objectives.preference names grpo or rloo, else an objectives.grpo/rloo block
        role = next((r for r in ("preference", "grpo", "rloo") if r in recipe.objectives
                     and recipe.objectives[r].name in ("grpo", "rloo")), "grpo")
        forced = recipe.objectives[role].name if role in recipe.objectives else "grpo"
    if forced is not None and forced not in ("ppo", "grpo", "rloo") and recipe.objectives[role].name != forced:
        return build(forced)  # orpo / simpo / dpop with their defaults (an objectives.<name> block sets them)
    if forced is not None and recipe.objectives[role].name != forced:
        raise ValueError(f"schedule.method {recipe.schedule.method!r} trains the preference stages with {forced!r}: add an "
                         f"objectives.{forced} block (or set objectives.{role}.name: {forced})")
    cfg = recipe.objectives[role].model_dump()
    name = cfg.pop("name")
    number_arguments(f"objectives.{role}", OBJECTIVES.get(name), cfg)  # beta: abc named here, not a TypeError inside
    try:
        return build(name, **cfg)
    except TypeError as e:
        raise ValueError(f"objectives.{role} ({name}): {e}{argument_hint(str(e))}") from None


def build_regularizer(recipe: Recipe, method: Method):
    """The recipe's explicit ``regularizer`` block, else the method's (settings from ``hbat.<name>``)."""
    from tandem.regularizers import build

    if recipe.regularizer is not None:
        cfg, where = recipe.regularizer.model_dump(), "regularizer"
        name = cfg.pop("name")
    elif method.regularizer is None:
        return None
    else:
        name, where = method.regularizer, f"hbat.{method.regularizer}"
        cfg = dict(getattr(recipe.hbat, name))
    try:
        return build(name, **cfg)
    except TypeError as e:
        raise ValueError(f"{where} ({name}): {e}{argument_hint(str(e))}") from None


def argument_hint(message: str) -> str:
    """``; did you mean 'beta'?`` for a registry's "unknown argument(s) ['bta'] ... accepted: a, beta" message."""
    import difflib
    import re

    bad = re.search(r"unknown argument\(s\) \[([^\]]*)\]", message)
    ok = re.search(r"(?:accepted|allowed): \[?([^\]]*)\]?$", message)
    if not (bad and ok):
        return ""
    names = [x.strip(" '\"") for x in ok.group(1).split(",")]
    for b in (x.strip(" '\"") for x in bad.group(1).split(",")):
        near = difflib.get_close_matches(b, names, n=1)
        if near:
            return f"; did you mean {near[0]!r}?"
    return ""


def build_plan(recipe: Recipe, acc, objectives: dict, regularizer, fsdp=None, model=None, tokenizer=None,
               data: tuple[dict, dict, dict] | None = None, hooks=None) -> RunPlan:
    """Load the model and the data of every role, split the data into parts: the engine's ``RunPlan``. With
    ``fsdp`` (:class:`tandem.distributed.FSDPSettings`) the model is sharded with FSDP2 after loading. ``model``,
    ``tokenizer``: objects to train instead of loading them; ``data``: :func:`load_data`'s result when already
    loaded; ``hooks``: the callbacks (:class:`tandem.io.hooks.RunHooks`)."""
    method = get_method(recipe.schedule.method)
    stages = build_stages(recipe.schedule.method, recipe.schedule.parts)
    run_dir = Path(recipe.output_dir)
    bc = recipe.batching
    rows = bc.row_tokens(recipe.data.max_length)
    dev = acc.device.type
    precision = resolve(recipe.precision, dev)
    attn, why = training_attention(recipe.model.attn_implementation, precision, dev, rows, bc.prefix_sharing)
    if acc.is_main_process:
        log.info("%s", why)
    given = model
    model, tok = load_model(recipe, reward=any(s.role == "reward" for s in stages), device=acc.device,
                            attn_implementation=attn, model=model, tokenizer=tokenizer)
    if recipe.model.quantization is None:  # quantized models are placed on their device when loaded
        model.to(acc.device)
    if fsdp is not None:
        from tandem.distributed import shard_model

        model = shard_model(model, fsdp, acc.device.type, mixed_precision(recipe.precision))
    if recipe.model.quantization is None:  # bf16: bf16 weights, LoRA adapters too (fp32 masters: tandem.optim)
        apply_precision(model, precision)
        if acc.is_main_process:
            log.info("%s", precision.describe())
    pad_id = pad_token_id(tok)

    def batch_fn(feats):
        b = collate(feats, mode=bc.mode, pad_id=pad_id, max_tokens_per_row=rows,
                    prefix_sharing=bc.prefix_sharing)
        return {k: (v.to(acc.device) if torch.is_tensor(v) else v) for k, v in b.items()}

    train, val, infos = data if data is not None else load_data(recipe, tok, objectives, acc.is_main_process)
    for role, info in infos.items():
        if acc.is_main_process:
            (run_dir / f"data-{role}.json").write_text(json.dumps(info, indent=2, default=str))
    n_parts = {role: max([s.n_parts for s in stages if s.role == role] or [1]) for role in objectives}
    parts = {role: split_parts(train[role], n, seed=recipe.seed) if n > 1 else [train[role]] for role, n in n_parts.items()}
    return RunPlan(accelerator=acc, model=model, tokenizer=tok, name=recipe.name, method=recipe.schedule.method,
                   stages=stages, loops={s.index: method.loop(s) for s in stages}, objectives=objectives, parts=parts,
                   train=train, val=val, aux_role=method.aux_role, aux_weight=recipe.hbat.mix_gamma,
                   aux_in=set(method.aux_in) if method.aux_in else None,
                   ppo_role=method.ppo_role, regularizer=regularizer, batch_fn=batch_fn,
                   save_merged=recipe.save_merged and (recipe.model.lora is not None or (given is not None and is_peft(given))),
                   meta=recipe.model_dump(mode="json"), hooks=hooks)


def check_recipe(recipe: Recipe, model_given: bool = False) -> tuple[dict, object]:
    """Everything ``train`` would refuse, checked without writing anything (method, objectives, regularizer, model
    and data paths); returns the built objectives and regularizer."""
    from tandem.data.templates import resolve_chat_template
    from tandem.models import check_exists
    from tandem.models.load import check_model_options

    objectives = build_objectives(recipe)
    regularizer = build_regularizer(recipe, get_method(recipe.schedule.method))
    if not model_given:  # a model object (tandem.train(model=...)) is not loaded from model.name_or_path
        check_exists(recipe.model.name_or_path, "model.name_or_path")
    check_model_options(recipe.model.quantization, recipe.model.attn_implementation)
    if recipe.data.chat_template:
        resolve_chat_template(recipe.data.chat_template)
    for role in objectives:
        for src in data_sources(recipe, role):
            check_source(src.source)
    for src in recipe.data.val.values():
        check_source(src.source)
    return objectives, regularizer


def build_objectives(recipe: Recipe) -> dict:
    method = get_method(recipe.schedule.method)
    stages = build_stages(recipe.schedule.method, recipe.schedule.parts)
    roles = {s.role for s in stages} | ({method.aux_role} if method.aux_role else set())
    if "reward" not in roles and (recipe.data.val_size or recipe.data.val):
        # both sides of the conflict are validated, also for the methods that train one (sft, dpo, orpo, simpo, ...)
        roles |= {r for r in ("sft", "preference") if getattr(recipe.data, r) is not None and r in recipe.objectives
                  and (recipe.data.val_size or r in recipe.data.val)}
    return {role: build_objective(recipe, role, method.preference_objective if role == "preference" else None)
            for role in sorted(roles)}


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, progress: bool | None = None,
          allow_changes: list[str] | None = None, model=None, tokenizer=None, callbacks=(),
          fork_from: str | Path | None = None) -> dict:
    """Build everything the recipe names, prepare and lock the run directory, run the engine; returns the summary.

    Nothing is written before the recipe's method, objectives, regularizer and data sources are checked. The run
    directory is tandem's own (``tandem.io.rundir``): a directory without tandem's marker is never replaced, and a
    second writer is refused. ``resume`` refuses a recipe that differs from the run's ``recipe.yaml`` except in the
    fields named by ``allow_changes`` (only fields in ``SAFE_CHANGES``); what changed is recorded.

    Every data check (reading, format detection, role checks, encoding) runs before the run directory is created.
    ``model``/``tokenizer``: objects to train instead of loading ``model.name_or_path`` (:mod:`tandem.api`);
    ``callbacks``: :class:`tandem.io.hooks.Callback` objects. A callback's ``"stop"`` returns the summary so far with
    ``"stopped": True`` (the last checkpoint holds the state: resume continues). ``fork_from``: a checkpoint of another
    run that closed a stage (``RUN/checkpoints/NAME``): the new run starts as that run up to it and continues from
    there (:mod:`tandem.pipelines.fork`).
    """
    from tandem.io.hooks import RunHooks, RunStopped
    from tandem.models import load_tokenizer

    from accelerate import Accelerator
    from accelerate.utils import GradScalerKwargs, set_seed

    hooks = RunHooks(callbacks)
    objectives, regularizer = check_recipe(recipe, model_given=model is not None)
    if fork_from is not None:
        from tandem.pipelines.fork import fork_into, resolve_checkpoint

        if resume:
            raise ValueError("--fork-from starts a new run from another run's checkpoint; --resume continues this one: "
                             "give one of them")
        fork_from = resolve_checkpoint(Path(fork_from).parent.parent, Path(fork_from).name)
    run_dir = Path(recipe.output_dir)
    # --overwrite must not delete the model, data, tokenizer or chat template it reads (eval/tax/probe: other commands)
    inputs = path_inputs(recipe.model_dump(mode="json"), exclude=("output_dir", "eval", "tax", "probe", "logging"))
    check_run_dir(run_dir, resume=resume, overwrite=overwrite, command="train", inputs=inputs)
    if resume:
        changes = resume_changes(run_dir, recipe, allow_changes or [])
        check_data_unchanged(run_dir, recipe)
    fsdp = read_settings()  # refuses DeepSpeed, FSDP1 and FSDP options tandem does not honour
    acc = Accelerator(mixed_precision=resolve(recipe.precision).autocast, cpu=not torch.cuda.is_available(),
                      kwargs_handlers=[GradScalerKwargs(enabled=False)])  # fp16 losses: tandem.optim.GradScaling
    stages = build_stages(recipe.schedule.method, recipe.schedule.parts)
    fsdp = check_supported(fsdp, loops={get_method(recipe.schedule.method).loop(s) for s in stages},
                           probe_every=recipe.probe.every, mixed_precision=mixed_precision(recipe.precision),
                           num_processes=acc.num_processes)
    if hooks.callbacks and acc.num_processes > 1:
        raise ValueError("callbacks run in one process: a callback's stop would leave the other processes waiting; "
                         "train with callbacks in a single process, or without them under accelerate launch")
    if tokenizer is None:
        m = recipe.model
        tokenizer = load_tokenizer(m.name_or_path, m.gguf_file, m.trust_remote_code, m.revision)
    tokenizer = prepare_tokenizer(recipe, tokenizer)
    data = load_data(recipe, tokenizer, objectives, acc.is_main_process)  # before the run directory exists
    with contextlib.ExitStack() as stack:
        if acc.is_main_process:
            stack.enter_context(open_run_dir(run_dir, resume=resume, overwrite=overwrite, command="train", inputs=inputs))
            if resume:
                record_changes(run_dir, changes)
            elif fork_from is not None:
                fork_into(run_dir, fork_from, recipe)
            else:
                record_data(run_dir, recipe)
                (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        acc.wait_for_everyone()
        set_seed(recipe.seed)
        plan = build_plan(recipe, acc, objectives, regularizer, fsdp, model=model, tokenizer=tokenizer, data=data,
                          hooks=hooks)
        try:
            summary = run(plan, loop_config(recipe, progress), resume=resume or fork_from is not None)
        except RunStopped as e:
            log.info("%s", e)
            return {"name": recipe.name, "method": recipe.schedule.method, "stopped": True, "global_steps": e.global_step}
    if recipe.hub.push and acc.is_main_process:
        summary["pushed"] = push_final(recipe, run_dir)
    return summary


def push_final(recipe: Recipe, run_dir: Path) -> str:
    """``hub.push``: upload ``final/merged`` (LoRA, ``hub.merged``) or ``final/`` to ``hub.repo_id`` as ``tandem push``
    does (token and endpoint from ``HF_TOKEN`` / ``HF_ENDPOINT`` or the cached login); returns the commit URL."""
    from tandem.pipelines.push import push

    folder = run_dir / "final" / "merged" if recipe.hub.merged and (run_dir / "final" / "merged").is_dir() else run_dir / "final"
    res = push(folder, recipe.hub.repo_id, private=recipe.hub.private)
    log.info("pushed %s to %s (%s)", folder, res.url, res.commit_url)
    return res.commit_url


__all__ = ["RunDirError", "build_objective", "build_plan", "check_source", "load_data", "load_role_features",
           "loop_config", "train"]
