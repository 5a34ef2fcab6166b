"""``evaluate``: load a model, generate once, compute the requested metrics, write results.json + results.md.

Metric names (``metrics=``):

=================  ==========================================================================================
``exact_match``    share of generations whose answer equals the reference (checkable tasks)
``rouge``          ROUGE-1/2/L F1 of the generations against ``references``
``reward``         mean reward-model score of the generations (and of the baseline, when there is one)
``reward_win_rate``  reward-judged win rate of the generations over the baseline (ties excluded)
``judge_win_rate`` LLM-judge win rate over the baseline, both orders (see :mod:`tandem.evaluation.judge`)
``perplexity``     held-out perplexity on ``heldout_texts`` (alignment tax)
``mc_accuracy``    multiple-choice accuracy on ``mc_rows`` (alignment tax)
``lm_eval``        lm-evaluation-harness ``lm_eval_tasks`` (optional extra)
=================  ==========================================================================================

The baseline of the win rates is ``baseline`` (e.g. another model's generations) or else ``references``.
Generations are cached in ``out_dir/generations.jsonl`` (see :func:`generate_to_file`) and judge verdicts in
``out_dir/judge_cache.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tandem.evaluation import metrics as M
from tandem.evaluation.generation import generate_to_file, model_identity
from tandem.evaluation.judge import JudgeConfig, judge_pairs

METRICS = ("exact_match", "rouge", "reward", "reward_fn", "reward_win_rate", "judge_win_rate", "perplexity", "mc_accuracy",
           "lm_eval")
NEEDS_GENERATION = {"exact_match", "rouge", "reward", "reward_fn", "reward_win_rate", "judge_win_rate"}


@dataclass
class GenerationSettings:
    temperature: float = 0.75
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: int | None = None


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return AutoTokenizer.from_pretrained(base)
    return AutoTokenizer.from_pretrained(str(path))


def load_model_and_tokenizer(path: str | Path, device: str = "cpu", dtype=None):
    """A full model dir / Hub id, or a LoRA adapter dir (``adapter_config.json``: loaded on its base model and
    merged), plus its tokenizer (the adapter dir's own, else the base model's)."""
    from tandem.merging.loading import load_full_weights

    model = load_full_weights(path, dtype=dtype, device=device)
    return model, _load_tokenizer(Path(path))


def load_reward_model(path: str | Path, device: str = "cpu", dtype=None):
    """A reward model dir (scalar head), or a tandem reward run's LoRA adapter dir (merged into its base)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (Path(path) / "adapter_config.json").is_file():
        from tandem.models.load import load_saved

        model, tok = load_saved(path)
        model = model.merge_and_unload()
        if dtype is not None:
            model = model.to(dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=dtype or "auto")
        tok = AutoTokenizer.from_pretrained(str(path))
    if model.config.pad_token_id is None and tok.pad_token_id is not None:
        model.config.pad_token_id = tok.pad_token_id
    return model.to(device).eval(), tok


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
) -> dict:
    """Evaluate one model and write ``out_dir/results.json`` and ``out_dir/results.md``; returns the results.

    Pass ``model_path`` (loaded with :func:`load_model_and_tokenizer`) or an already loaded ``model`` and
    ``tokenizer``; likewise ``reward_model_path`` or ``reward_model`` + ``reward_tokenizer``.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = settings if isinstance(settings, GenerationSettings) else GenerationSettings(**(settings or {}))
    if model is None and (set(metrics) - {"lm_eval"}):
        if model_path is None:
            raise ValueError("evaluate needs model_path or model + tokenizer")
        model, tokenizer = load_model_and_tokenizer(model_path, device=device)
    if model is not None and tokenizer is None:
        raise ValueError("evaluate: a model was given without its tokenizer")
    other = baseline if baseline is not None else references
    res: dict = {}

    outputs = None
    if NEEDS_GENERATION & set(metrics):
        if not prompts:
            raise ValueError(f"metrics {sorted(NEEDS_GENERATION & set(metrics))} need prompts")
        outputs = generate_to_file(
            model, tokenizer, prompts, out / "generations.jsonl", references=references,
            model_id=model_identity(model_path) if model_path is not None else None, **asdict(s),
        )
    if "exact_match" in metrics:
        if references is None:
            raise ValueError("metric 'exact_match' needs references")
        res["exact_match"] = M.exact_match(outputs, references)
    if "rouge" in metrics:
        if references is None:
            raise ValueError("metric 'rouge' needs references")
        res["rouge"] = M.rouge_scores(outputs, references)
    if {"reward", "reward_win_rate"} & set(metrics):
        if reward_model is None:
            if reward_model_path is None:
                raise ValueError("metrics 'reward'/'reward_win_rate' need reward_model_path (or reward_model)")
            reward_model, reward_tokenizer = load_reward_model(reward_model_path, device=device)
        scores = M.reward_scores(reward_model, reward_tokenizer, prompts, outputs, batch_size=s.batch_size)
        base_scores = (
            M.reward_scores(reward_model, reward_tokenizer, prompts, other, batch_size=s.batch_size) if other else None
        )
        if "reward" in metrics:
            res["reward"] = {"mean": sum(scores) / len(scores)}
            if base_scores:
                res["reward"]["baseline_mean"] = sum(base_scores) / len(base_scores)
        if "reward_win_rate" in metrics:
            if base_scores is None:
                raise ValueError("metric 'reward_win_rate' needs baseline or references")
            res["reward_win_rate"] = M.reward_win_rate(scores, base_scores)
    if "reward_fn" in metrics:  # a programmatic reward: fn(last user message, reply) -> float
        if reward_fn is None:
            raise ValueError("metric 'reward_fn' needs eval.reward_fn ('module:function')")
        from tandem.objectives.ppo.rollout import prompt_text, resolve_function

        fn = resolve_function(reward_fn)
        vals = [float(fn(prompt_text(p), o)) for p, o in zip(prompts, outputs)]
        res["reward_fn"] = {"mean": sum(vals) / len(vals), "n": len(vals)}
    if "judge_win_rate" in metrics:
        if judge is None or other is None:
            raise ValueError("metric 'judge_win_rate' needs judge=JudgeConfig(...) and baseline or references")
        j = judge_pairs(prompts, outputs, other, judge, cache_path=out / "judge_cache.jsonl")
        res["judge_win_rate"] = {k: j[k] for k in ("win_rate", "wins", "losses", "ties", "n", "mean_score")}
    if "perplexity" in metrics:
        if not heldout_texts:
            raise ValueError("metric 'perplexity' needs heldout_texts")
        res["perplexity"] = M.perplexity(model, tokenizer, heldout_texts, max_length=perplexity_max_length)
    if "mc_accuracy" in metrics:
        if not mc_rows:
            raise ValueError("metric 'mc_accuracy' needs mc_rows")
        mc = M.multiple_choice_accuracy(model, tokenizer, mc_rows)
        res["mc_accuracy"] = {k: mc[k] for k in ("acc", "acc_norm", "n")}
    if "lm_eval" in metrics:
        if model_path is None or not lm_eval_tasks:
            raise ValueError("metric 'lm_eval' needs model_path and lm_eval_tasks")
        res["lm_eval"] = M.run_lm_eval(model_path, lm_eval_tasks, batch_size=s.batch_size, device=device)

    results = {
        "model": str(model_path) if model_path is not None else getattr(model.config, "_name_or_path", "model"),
        "settings": asdict(s) if outputs is not None else {},
        "n_prompts": len(prompts) if prompts else 0,
        "metrics": res,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, out / "results.json")
    (out / "results.md").write_text(results_markdown(results))
    return results


__all__ = ["GenerationSettings", "METRICS", "evaluate", "load_model_and_tokenizer", "load_reward_model", "results_markdown"]
