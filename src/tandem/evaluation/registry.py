"""The metric registry of :func:`tandem.evaluation.run.evaluate`.

A metric is a function ``EvalContext -> dict`` (its entry in ``results["metrics"]``) plus one line in
:data:`METRIC_TABLE` saying whether it needs generations and which inputs it requires (each a check with the
error message shown when the input is missing). Adding a metric = one function + one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tandem.evaluation import bartscore as B
from tandem.evaluation import likelihood as L
from tandem.evaluation import metrics as M
from tandem.evaluation.context import EvalContext


@dataclass(frozen=True)
class Need:
    """An input a metric requires: ``present(ctx)`` must hold, else ``ValueError(message)``."""

    present: Callable[[EvalContext], bool]
    message: str


@dataclass(frozen=True)
class Metric:
    fn: Callable[[EvalContext], dict]
    generates: bool  # computed on the model's generations for ``prompts``
    needs: tuple[Need, ...] = ()
    loads_model: bool = True  # False: the metric loads the model itself from ``model_path``


# ------------------------------------------------------------------------------------------------ metrics


def exact_match(c: EvalContext) -> dict:
    return M.exact_match(c.outputs, c.references)


def rouge(c: EvalContext) -> dict:
    return M.rouge_scores(c.outputs, c.references)


def reward(c: EvalContext) -> dict:
    scores, base = c.reward_scores()
    out = {"mean": sum(scores) / len(scores)}
    if base:
        out["baseline_mean"] = sum(base) / len(base)
    return out


def reward_win_rate(c: EvalContext) -> dict:
    scores, base = c.reward_scores()
    return M.reward_win_rate(scores, base)


def reward_fn(c: EvalContext) -> dict:
    """A programmatic reward: ``fn(last user message, reply) -> float``, averaged."""
    from tandem.data.messages import prompt_text
    from tandem.io.callables import resolve_function

    fn = resolve_function(c.reward_fn, what="eval.reward_fn")
    vals = [float(fn(prompt_text(p), o)) for p, o in zip(c.prompts, c.outputs)]
    return {"mean": sum(vals) / len(vals), "n": len(vals)}


def judge_win_rate(c: EvalContext) -> dict:
    from tandem.evaluation.judge import judge_pairs

    j = judge_pairs(c.prompts, c.outputs, c.other, c.judge, cache_path=c.out_dir / "judge_cache.jsonl")
    return {k: j[k] for k in ("win_rate", "wins", "losses", "ties", "n", "mean_score")}


def perplexity(c: EvalContext) -> dict:
    return M.perplexity(c.model, c.tokenizer, c.heldout_texts, max_length=c.perplexity_max_length)


def mc_accuracy(c: EvalContext) -> dict:
    mc = M.multiple_choice_accuracy(c.model, c.tokenizer, c.mc_rows)
    return {k: mc[k] for k in ("acc", "acc_norm", "n")}


def reference_nll(c: EvalContext) -> dict:
    return L.reference_nll(c.model, c.tokenizer, c.prompts, c.references, max_length=c.likelihood_max_length,
                           batch_size=c.settings.batch_size)


def implicit_reward_accuracy(c: EvalContext) -> dict:
    """DPO implicit-reward ranking of held-out pairs against the reference model (loaded on first use). With
    ``c.reference_cache`` and a reference given by path, the reference's log-probs are computed once per cache dir."""
    from tandem.evaluation.generation import model_identity

    if not c.pairs:
        raise ValueError("implicit_reward_accuracy: no preference pairs")
    ml, bs = c.likelihood_max_length, c.settings.batch_size
    src = L.reference_source(c.model_path, c.reference_model_path)

    def reference_logps():
        if c.reference_model is None:
            from tandem.models.merged import load_merged

            c.reference_model = load_merged(src, device=c.device, dtype=c.dtype)[0]
        return L.pair_logps(c.reference_model, c.tokenizer, c.pairs, ml, bs)

    cache = c.reference_cache if c.reference_model is None else None  # a model object has no identity to key on
    key = L.reference_cache_key(model_identity(src), c.tokenizer, c.pairs, ml, bs, c.dtype) if cache else ""
    reference = L.cached_pair_logps(cache, key, reference_logps)
    return L.implicit_rewards(L.pair_logps(c.model, c.tokenizer, c.pairs, ml, bs), reference, c.beta)


def conflict(c: EvalContext) -> dict:
    """The conflict benchmark's exact checks of the generations: pass rate, preferred-style rate, reply length
    (words), per family; each prompt's verdicts go to ``out_dir/per_prompt.jsonl`` (for paired re-analysis)."""
    import json

    from tandem.data.conflict import score
    from tandem.data.messages import prompt_text

    rows = [{"prompt": prompt_text(p), **k} for p, k in zip(c.prompts, c.checks)]
    s = score(rows, c.outputs)
    (c.out_dir / "per_prompt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s.pop("per_prompt")))
    per_family = s.pop("per_family")
    return {**s, **{f"{f}_pass_rate": v["pass_rate"] for f, v in per_family.items()}}


def lm_eval(c: EvalContext) -> dict:
    return M.run_lm_eval(c.model_path, c.lm_eval_tasks, batch_size=c.settings.batch_size, device=c.device)


# -------------------------------------------------------------------------------------------------- table

REWARD_MODEL = Need(lambda c: c.reward_model is not None or c.reward_model_path is not None,
                    "metrics 'reward'/'reward_win_rate' need reward_model_path (or reward_model)")

METRIC_TABLE: dict[str, Metric] = {  # in the order results are computed and reported
    "exact_match": Metric(exact_match, True, (Need(lambda c: c.references is not None, "metric 'exact_match' needs references"),)),
    "rouge": Metric(rouge, True, (Need(lambda c: c.references is not None, "metric 'rouge' needs references"),)),
    "reward": Metric(reward, True, (REWARD_MODEL,)),
    "reward_win_rate": Metric(reward_win_rate, True, (
        REWARD_MODEL, Need(lambda c: bool(c.other), "metric 'reward_win_rate' needs baseline or references"))),
    "reward_fn": Metric(reward_fn, True, (
        Need(lambda c: c.reward_fn is not None, "metric 'reward_fn' needs eval.reward_fn ('module:function')"),)),
    "judge_win_rate": Metric(judge_win_rate, True, (
        Need(lambda c: c.judge is not None and c.other is not None,
             "metric 'judge_win_rate' needs judge=JudgeConfig(...) and baseline or references"),)),
    "bartscore": Metric(B.bartscore, True, (Need(B.has_model, B.NEEDS_MESSAGE),)),
    "perplexity": Metric(perplexity, False, (Need(lambda c: bool(c.heldout_texts), "metric 'perplexity' needs heldout_texts"),)),
    "reference_nll": Metric(reference_nll, False, (
        Need(lambda c: bool(c.prompts) and c.references is not None, "metric 'reference_nll' needs prompts with references (eval.data)"),)),
    "implicit_reward_accuracy": Metric(implicit_reward_accuracy, False, (
        Need(lambda c: bool(c.pairs), "metric 'implicit_reward_accuracy' needs held-out preference pairs (eval.pairs)"),
        Need(lambda c: c.reference_model is not None or L.reference_source(c.model_path, c.reference_model_path) is not None,
             "metric 'implicit_reward_accuracy' needs a reference model: eval.reference_model (the base model), "
             "or evaluate a LoRA adapter whose base is the reference"))),
    "conflict": Metric(conflict, True, (
        Need(lambda c: c.checks is not None and len(c.checks) == len(c.prompts or []),
             "metric 'conflict' needs eval.data rows with 'family' and 'check' (a file of `tandem conflict make`)"),)),
    "mc_accuracy": Metric(mc_accuracy, False, (Need(lambda c: bool(c.mc_rows), "metric 'mc_accuracy' needs mc_rows"),)),
    "lm_eval": Metric(lm_eval, False, (
        Need(lambda c: c.model_path is not None and bool(c.lm_eval_tasks), "metric 'lm_eval' needs model_path and lm_eval_tasks"),),
        loads_model=False),
}

METRICS = tuple(METRIC_TABLE)
NEEDS_GENERATION = frozenset(name for name, m in METRIC_TABLE.items() if m.generates)


def check_metrics(names: list[str], ctx: EvalContext) -> list[str]:
    """The requested metric names in table order, after checking that each is known and has its inputs
    (``ValueError`` naming what is missing, before anything is loaded or generated)."""
    unknown = [m for m in names if m not in METRIC_TABLE]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    chosen = [m for m in METRIC_TABLE if m in names]
    generating = sorted(m for m in chosen if METRIC_TABLE[m].generates)
    if generating and not ctx.prompts:
        raise ValueError(f"metrics {generating} need prompts")
    for name in chosen:
        for need in METRIC_TABLE[name].needs:
            if not need.present(ctx):
                raise ValueError(need.message)
    return chosen
