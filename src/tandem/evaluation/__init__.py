"""Evaluation: generation (cached), ROUGE, reward-model scores and win rates, LLM-judge win rates, temperature
sweeps, and alignment-tax metrics (held-out perplexity, multiple-choice accuracy, lm-eval). A metric is one
function of an :class:`EvalContext` plus one line in :data:`METRIC_TABLE` (:mod:`tandem.evaluation.registry`)."""

from tandem.evaluation.context import EvalContext
from tandem.evaluation.generation import generate, generate_to_file, model_identity
from tandem.evaluation.judge import JudgeConfig, JudgeError, judge_pairs, parse_verdict
from tandem.evaluation.metrics import (
    load_mc_rows,
    multiple_choice_accuracy,
    perplexity,
    reward_scores,
    reward_win_rate,
    rouge_scores,
    run_lm_eval,
    temperature_sweep,
)
from tandem.evaluation.registry import METRIC_TABLE, Metric, Need
from tandem.evaluation.run import GenerationSettings, evaluate

__all__ = [
    "METRIC_TABLE",
    "EvalContext",
    "GenerationSettings",
    "JudgeConfig",
    "JudgeError",
    "evaluate",
    "generate",
    "generate_to_file",
    "judge_pairs",
    "load_mc_rows",
    "Metric",
    "model_identity",
    "multiple_choice_accuracy",
    "Need",
    "parse_verdict",
    "perplexity",
    "reward_scores",
    "reward_win_rate",
    "rouge_scores",
    "run_lm_eval",
    "temperature_sweep",
]
