"""The ``eval`` block of a recipe: what ``tandem eval``, ``tandem compare`` and ``tandem study`` measure, and the extra
prompt sets (``eval.also``) scored like its data."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tandem.config.base import SEED_MAX, Strict
from tandem.config.inputs import SourceConfig


class JudgeSettings(Strict):
    base_url: str
    model: str
    api_key_env: str = Field(default="OPENAI_API_KEY", description="the NAME of the environment variable holding the key")
    task: Literal["dialogue", "summarization"] = "dialogue"
    max_workers: int = Field(default=4, ge=1)

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, v: str) -> str:
        """A key pasted here would be written to RUN/recipe.yaml and the model card: refused (never echoed)."""
        from tandem.io.secrets import ENV_NAME, looks_like_key

        if looks_like_key(v):
            raise ValueError("this looks like an API key, not the name of an environment variable: never put the key in "
                             "a recipe; export it (export OPENAI_API_KEY=...) and give the variable's name")
        if not ENV_NAME.match(v):
            raise ValueError(f"{v!r} is not the name of an environment variable (letters, digits, '_')")
        return v

    @field_validator("base_url")
    @classmethod
    def _no_userinfo(cls, v: str) -> str:
        """``https://user:key@host`` would be written to RUN/recipe.yaml and the model card: refused (never echoed)."""
        from tandem.io.secrets import url_userinfo

        if url_userinfo(v):
            raise ValueError("the URL holds a user name or password (user:key@host): remove it and give the key through "
                             "the environment variable named by eval.judge.api_key_env")
        return v


SET_METRICS_REFUSED = {"reward_win_rate": "its baseline generations belong to eval.data's prompts",
                       "implicit_reward_accuracy": "it scores eval.pairs, not a prompt set"}


class ExtraEvalSet(Strict):
    """A second prompt set scored like ``eval.data`` (same model, generation settings, reward model), e.g. the
    AlpacaEval prompts with their reference outputs: columns ``<name>/<metric>``, no temperature sweep."""

    data: SourceConfig
    metrics: list[str] = Field(default_factory=lambda: ["rouge", "reference_nll"])

    @field_validator("metrics")
    @classmethod
    def _set_metrics(cls, v: list[str]) -> list[str]:
        for m in v:
            if m in SET_METRICS_REFUSED:
                raise ValueError(f"metric {m!r} is not for a second prompt set: {SET_METRICS_REFUSED[m]}")
        if not v:
            raise ValueError("give at least one metric (default: rouge, reference_nll)")
        return v


class EvalConfig(Strict):
    """What ``tandem eval`` (and ``tandem compare``) measure. Generation metrics use ``data`` (prompts with
    references, any SFT format); alignment-tax metrics use ``heldout_text`` and ``mc``."""

    data: SourceConfig | None = None
    metrics: list[str] = Field(default_factory=list)
    reward_model: str | None = None
    reward_fn: str | None = Field(default=None, description="'module:function' (prompt_text, reply) -> float, metric reward_fn")
    baseline: str | None = Field(default=None, description="JSONL with an 'output' per prompt to compare against")
    judge: JudgeSettings | None = None
    heldout_text: str | None = Field(default=None, description="text/JSONL file (field 'text') for perplexity")
    mc: str | None = Field(default=None, description="JSONL of {question, choices, answer}")
    temperature: float = Field(default=0.75, ge=0, description="0 = greedy")
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=128, ge=1)
    batch_size: int = Field(default=8, ge=1)
    temperatures: list[float] = Field(default_factory=list, description="temperature sweep (empty: none)")
    repeats: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    bartscore_model: str | None = Field(default=None, description="BART model (Hub id, e.g. facebook/bart-large-cnn, or dir) for metric bartscore")
    pairs: str | None = Field(default=None, description="held-out preference pairs (any preference format) for metric implicit_reward_accuracy")
    pairs_limit: int | None = Field(default=None, ge=1, description="first N pairs of eval.pairs")
    reference_model: str | None = Field(default=None, description="DPO reference of implicit_reward_accuracy (the base model); "
                                        "default: the evaluated LoRA adapter's base")
    beta: float = Field(default=0.1, gt=0, description="implicit reward scale (margins only, not the accuracy)")
    max_length: int = Field(default=1024, ge=2, description="reference_nll / implicit_reward_accuracy: longest scored "
                            "prompt + response in tokens (the prompt keeps its tail, as in training)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="weights of every model the evaluation loads (evaluated, reward, reference): auto = "
        "bf16 where training's precision: auto picks it (GPUs and CPUs with native bf16), else the checkpoint's dtype")
    also: dict[str, ExtraEvalSet] = Field(default_factory=dict, description="more prompt sets scored like eval.data "
                                          "(name -> {data, metrics}); columns NAME/METRIC, results in EVAL_DIR/also-NAME")

    @field_validator("also")
    @classmethod
    def _set_names(cls, v: dict[str, "ExtraEvalSet"]) -> dict[str, "ExtraEvalSet"]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", k)]
        if bad:
            raise ValueError(f"set name(s) {bad}: use letters, digits, '_', '-', '.' (they name columns and directories)")
        return v

    @model_validator(mode="after")
    def _bartscore_has_model(self) -> "EvalConfig":
        if "bartscore" in self.metrics and self.bartscore_model is None:
            raise ValueError("metric 'bartscore' needs eval.bartscore_model (a BART model: a Hub id such as "
                             "facebook/bart-large-cnn, or a local dir)")
        if "implicit_reward_accuracy" in self.metrics and self.pairs is None:
            raise ValueError("metric 'implicit_reward_accuracy' needs eval.pairs (a preference JSONL file held out from training)")
        if "reference_nll" in self.metrics and self.data is None:
            raise ValueError("metric 'reference_nll' needs eval.data (prompts with reference outputs)")
        return self

    @field_validator("temperatures")
    @classmethod
    def _temperatures_non_negative(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not (0 <= t < float("inf"))]
        if bad:
            raise ValueError(f"temperatures must be finite and >= 0, got {bad}")
        return v
