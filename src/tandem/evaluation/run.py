"""``evaluate``: load a model, generate once, compute the requested metrics, write results.json + results.md.

Metric names (``metrics=``):

=================  ==========================================================================================
``exact_match``    share of generations whose answer equals the reference (checkable tasks)
``rouge``          ROUGE-1/2/L F1 of the generations against ``references``
``reward``         mean reward-model score of the generations (and of the baseline, when there is one)
``reward_win_rate``  reward-judged win rate of the generations over the baseline (ties excluded)
``reward_fn``      mean of a programmatic reward ``fn(last user message, reply)`` (``reward_fn="module:function"``)
``judge_win_rate`` LLM-judge win rate over the baseline, both orders (see :mod:`tandem.evaluation.judge`)
``perplexity``     held-out perplexity on ``heldout_texts`` (alignment tax)
``mc_accuracy``    multiple-choice accuracy on ``mc_rows`` (alignment tax)
``lm_eval``        lm-evaluation-harness ``lm_eval_tasks`` (optional extra)
``bartscore``      mean source -> output BARTScore under ``bartscore_model`` (summarisation)
``reference_nll``  mean NLL per token of the ``references`` given their prompts (no generation)
``implicit_reward_accuracy``  share of held-out ``pairs`` whose DPO implicit reward ranks chosen over rejected
                   (against ``reference_model_path``, default the evaluated adapter's base), and the mean margin
=================  ==========================================================================================

Each metric is a function of one :class:`~tandem.evaluation.context.EvalContext` registered in
:data:`tandem.evaluation.registry.METRIC_TABLE` with the inputs it needs (checked before anything is loaded).
The baseline of the win rates is ``baseline`` (e.g. another model's generations) or else ``references``.
Generations are cached in ``out_dir/generations.jsonl`` (see :func:`generate_to_file`) and judge verdicts in
``out_dir/judge_cache.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from tandem.evaluation.context import EvalContext, GenerationSettings
from tandem.evaluation.generation import generate_to_file, model_identity
from tandem.evaluation.judge import JudgeConfig
from tandem.evaluation.registry import METRIC_TABLE, METRICS, NEEDS_GENERATION, check_metrics
from tandem.models.merged import load_merged
from tandem.models.resolve import resolve_model_path



def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def results_markdown(results: dict) -> str:
    """A markdown table of every scalar in ``results["metrics"]`` (nested keys joined with ``/``)."""
    flat: dict = {}
    _flatten("", results["metrics"], flat)
    lines = [f"# Evaluation: `{results['model']}`", ""]
    if results.get("settings"):
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in results["settings"].items()), ""]
    lines += ["| metric | value |", "|---|---|"]
    for k, v in flat.items():
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) and math.isfinite(v) else f"| {k} | {v} |")
    return "\n".join(lines) + "\n"


def evaluate(
    model_path: str | Path | None,
    out_dir: str | Path,
    metrics: list[str],
    prompts: list | None = None,
    references: list[str] | None = None,
    baseline: list[str] | None = None,
    settings: GenerationSettings | dict | None = None,
    reward_model_path: str | Path | None = None,
    judge: JudgeConfig | None = None,
    heldout_texts: list[str] | None = None,
    perplexity_max_length: int = 1024,
    mc_rows: list[dict] | None = None,
    lm_eval_tasks: list[str] | None = None,
    device: str = "cpu",
    model=None,
    tokenizer=None,
    reward_model=None,
    reward_tokenizer=None,
    reward_fn=None,
    bartscore_model: str | Path | None = None,
    pairs: list | None = None,
    checks: list[dict] | None = None,
    reference_model_path: str | Path | None = None,
    reference_model=None,
    beta: float = 0.1,
    likelihood_max_length: int = 1024,
    dtype=None,
    reference_cache: str | Path | None = None,
) -> dict:
    """Evaluate one model and write ``out_dir/results.json`` and ``out_dir/results.md``; returns the results.

    Pass ``model_path`` (loaded merged with :func:`tandem.models.merged.load_merged`) or an already loaded
    ``model`` and ``tokenizer``; likewise ``reward_model_path`` or ``reward_model`` + ``reward_tokenizer``.
    Every metric is checked for its inputs (:func:`tandem.evaluation.registry.check_metrics`) before anything
    is loaded or generated. ``dtype``: the weights' dtype of every model loaded here (None: each checkpoint's own).
    ``reference_cache``: a directory where implicit_reward_accuracy keeps its reference log-probs (shared by the runs
    of a study).
    """
    s = settings if isinstance(settings, GenerationSettings) else GenerationSettings(**(settings or {}))
    ctx = EvalContext(
        out_dir=Path(out_dir), settings=s, model=model, tokenizer=tokenizer, model_path=model_path, prompts=prompts,
        references=references, baseline=baseline, reward_model_path=reward_model_path, reward_model=reward_model,
        reward_tokenizer=reward_tokenizer, reward_fn=reward_fn, judge=judge, heldout_texts=heldout_texts,
        perplexity_max_length=perplexity_max_length, mc_rows=mc_rows, lm_eval_tasks=lm_eval_tasks, device=device,
        bartscore_model=bartscore_model, pairs=pairs, checks=checks, reference_model_path=reference_model_path,
        reference_model=reference_model, beta=beta, likelihood_max_length=likelihood_max_length, dtype=dtype,
        reference_cache=Path(reference_cache) if reference_cache is not None else None,
    )
    chosen = check_metrics(metrics, ctx)
    if model is None and any(METRIC_TABLE[m].loads_model for m in chosen):
        if model_path is None:
            raise ValueError("evaluate needs model_path or model + tokenizer")
        ctx.model, ctx.tokenizer = load_merged(model_path, device=device, dtype=dtype)
    if ctx.model is not None and ctx.tokenizer is None:
        raise ValueError("evaluate: a model was given without its tokenizer")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    if any(m in NEEDS_GENERATION for m in chosen):
        ctx.outputs = generate_to_file(
            ctx.model, ctx.tokenizer, prompts, ctx.out_dir / "generations.jsonl", references=references,
            model_id=model_identity(resolve_model_path(model_path)) if model_path is not None else None, **asdict(s),
        )
    res = {name: METRIC_TABLE[name].fn(ctx) for name in chosen}
    results = {
        "model": str(model_path) if model_path is not None else ctx.model.config._name_or_path,
        "settings": asdict(s) if ctx.outputs is not None else {},
        "n_prompts": len(prompts) if prompts else 0,
        "metrics": res,
    }
    tmp = ctx.out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, ctx.out_dir / "results.json")
    (ctx.out_dir / "results.md").write_text(results_markdown(results))
    return results


__all__ = ["GenerationSettings", "METRICS", "NEEDS_GENERATION", "evaluate", "results_markdown"]
