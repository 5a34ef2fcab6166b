"""The recipe's ``tax`` block: ``tandem tax``, model averaging between theta_0 and theta_1."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tandem.config.base import SEED_MAX, Strict
from tandem.config.inputs import SourceConfig


class AdaptiveRatiosConfig(Strict):
    enabled: bool = True
    top_k: int = Field(default=8, ge=1, description="highest-reward responses of the tuned model to learn on")
    steps: int = Field(default=20, ge=1)
    lr: float = Field(default=0.1, gt=0)
    mean_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    parametrisation: Literal["softmax", "sigmoid"] = Field(default="softmax", description="softmax: tandem's (clamped "
                                                           "n * mean_ratio * softmax); sigmoid: the authors' normalised sigmoid")
    pull: float = Field(default=0.0, ge=0.0, description="weight of the L1 pull of the ratios to mean_ratio (the "
                        "authors' release has one; 0: none)")
    pull_weights: list[float] | None = Field(default=None, description="per-group weights of the pull (default 1 each)")
    prompts: SourceConfig | None = Field(default=None, description="prompts to fit the ratios on (disjoint from the "
                                         "scoring prompts); default: fit_fraction of the tax prompts, held out")
    fit_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)


class TaxConfig(Strict):
    """``tandem tax``: model averaging between theta_0 (before preference training) and theta_1 (after)."""

    base: str | None = Field(default=None, description="theta_0; default model.name_or_path")
    tuned: str | None = Field(default=None, description="theta_1; default OUTPUT_DIR/final")
    out: str | None = Field(default=None, description="default OUTPUT_DIR/tax")
    groups: str = "block3"
    head_alpha: float | None = Field(default=None, ge=0.0, le=1.0)
    sweep: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], description="global alphas tried, each in [0, 1]")
    trials: int = Field(default=16, ge=0, description="optuna trials over per-group ratios")
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    prompts: SourceConfig | None = Field(default=None, description="reward side prompts; default eval.data")
    reward_model: str | None = Field(default=None, description="default eval.reward_model")
    tax_metric: Literal["perplexity", "mc"] = "perplexity"
    heldout_text: str | None = Field(default=None, description="default eval.heldout_text")
    heldout_limit: int | None = Field(default=None, ge=1)
    mc: str | None = Field(default=None, description="default eval.mc")
    budget: float | None = Field(default=None, description="largest tax allowed for the pick")
    max_new_tokens: int = Field(default=48, ge=1)
    temperature: float = Field(default=0.0, ge=0, description="0 = greedy")
    batch_size: int = Field(default=8, ge=1)
    adaptive: AdaptiveRatiosConfig = AdaptiveRatiosConfig()
