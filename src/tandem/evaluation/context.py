"""What a metric sees: one typed :class:`EvalContext` (the model, its generations, every input of ``evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tandem.data.types import Message, PreferenceExample
from tandem.evaluation.judge import JudgeConfig


@dataclass
class GenerationSettings:
    temperature: float = 0.75
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: int | None = None


@dataclass
class EvalContext:
    """Everything :func:`tandem.evaluation.run.evaluate` was given, plus the generations (``outputs``, set
    before any metric that needs them runs). Metrics read it; only :meth:`reward_scores` fills a cache."""

    out_dir: Path
    settings: GenerationSettings
    model: Any = None
    tokenizer: Any = None
    model_path: str | Path | None = None
    prompts: list[list[Message]] | None = None
    references: list[str] | None = None
    baseline: list[str] | None = None
    outputs: list[str] | None = None
    reward_model_path: str | Path | None = None
    reward_model: Any = None
    reward_tokenizer: Any = None
    reward_fn: str | Callable | None = None
    judge: JudgeConfig | None = None
    heldout_texts: list[str] | None = None
    perplexity_max_length: int = 1024
    mc_rows: list[dict] | None = None
    lm_eval_tasks: list[str] | None = None
    bartscore_model: str | Path | None = None
    pairs: list[PreferenceExample] | None = None  # held-out preference pairs (implicit_reward_accuracy)
    checks: list[dict] | None = None  # per prompt: {"family", "check"} of the conflict benchmark (metric "conflict")
    reference_model_path: str | Path | None = None  # DPO reference of the implicit reward (default: the adapter's base)
    reference_model: Any = None
    beta: float = 0.1  # implicit reward scale (margins only, never the accuracy)
    likelihood_max_length: int = 1024  # reference_nll / implicit_reward_accuracy: longest scored sequence
    device: str = "cpu"
    reference_cache: Path | None = None  # implicit_reward_accuracy: the reference's log-probs, computed once per dir
    dtype: Any = None  # weights of the models loaded on first use (reward, reference); None: each checkpoint's own
    _rewards: tuple[list[float], list[float] | None] | None = field(default=None, repr=False)

    @property
    def other(self) -> list[str] | None:
        """What the win rates compare against: ``baseline`` when given, else ``references``."""
        return self.baseline if self.baseline is not None else self.references

    def reward_scores(self) -> tuple[list[float], list[float] | None]:
        """``(scores of the outputs, scores of other or None)`` under the reward model (loaded from
        ``reward_model_path`` on first use); computed once for all reward metrics."""
        if self._rewards is None:
            from tandem.evaluation.metrics import reward_scores
            from tandem.models.load import load_reward_model

            if self.reward_model is None:
                self.reward_model, self.reward_tokenizer = load_reward_model(self.reward_model_path, device=self.device,
                                                                                dtype=self.dtype or "auto")
                self.reward_model.eval()
            bs = self.settings.batch_size
            scores = reward_scores(self.reward_model, self.reward_tokenizer, self.prompts, self.outputs, batch_size=bs)
            other = self.other
            base = reward_scores(self.reward_model, self.reward_tokenizer, self.prompts, other, batch_size=bs) if other else None
            self._rewards = (scores, base)
        return self._rewards
