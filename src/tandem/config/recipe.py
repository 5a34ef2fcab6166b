"""Recipes: the YAML description of a run, validated by pydantic.

Every model forbids unknown keys, so a typo is an error that names the key, its line and the file.
Defaults that matter live in the recipe files under ``recipes/``; the defaults here only make small
recipes (tests, overrides) possible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Strict):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(Strict):
    name_or_path: str
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    revision: str | None = None
    lora: LoraConfig | None = None


class SourceConfig(Strict):
    source: str
    format: str | None = None
    split: str = "train"
    limit: int | None = Field(default=None, ge=1)


class DataConfig(Strict):
    sft: SourceConfig | None = None
    preference: SourceConfig | None = None
    max_length: int = Field(default=512, ge=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    val_size: int = Field(default=0, ge=0)


class BatchingConfig(Strict):
    mode: Literal["pack", "pad"] = "pack"
    batch_size: int = Field(default=8, ge=1, description="examples (or pairs) per optimizer step, all processes")
    grad_accum: int = Field(default=1, ge=1)
    max_tokens_per_row: int | None = Field(default=1024, ge=1, description="pack: longest row in tokens (attention cost grows with its square); null = one row per micro-batch")
    group_by_length: bool = True


class OptimizerConfig(Strict):
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    max_grad_norm: float | None = 1.0


class ObjectiveConfig(BaseModel):
    """``name`` picks the objective in the registry; other keys are its arguments (checked by it)."""

    model_config = ConfigDict(extra="allow")
    name: str


class RegularizerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class ScheduleConfig(Strict):
    method: str = "sft"
    parts: int = Field(default=1, ge=1)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="cap on optimizer steps per stage")


class HBATConfig(Strict):
    """Settings of the hybrid-training methods (see tandem.schedules.methods). Each regularizer block is passed
    to the regularizer registry as keyword arguments, so a wrong key is an error naming it."""

    ewc: dict[str, Any] = Field(default_factory=lambda: {"lam": 1.0, "f_max": 50.0, "normalise": "zscore", "temperature": 1.0})
    freeze: dict[str, Any] = Field(default_factory=lambda: {"percent": 20.0, "normalise": "zscore"})
    fisher: dict[str, Any] = Field(default_factory=lambda: {"lam": 1.0, "samples": 64})
    l2: dict[str, Any] = Field(default_factory=lambda: {"lam": 0.01})
    l1: dict[str, Any] = Field(default_factory=lambda: {"lam": 1e-4})
    mix_gamma: float = Field(default=0.5, ge=0, description="weight of the auxiliary loss in dpo+sft / sft+dpo")
    reference: Literal["stage_start", "initial"] = "stage_start"
    select_metric: str | None = Field(default=None, description="validation metric that picks the best stage, e.g. preference/rewards/margin")
    select_mode: Literal["max", "min"] = "max"
    final: Literal["best", "last"] = "last"


class JudgeSettings(Strict):
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    task: Literal["dialogue", "summarization"] = "dialogue"
    max_workers: int = 4


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
    temperature: float = 0.75
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 8
    temperatures: list[float] = Field(default_factory=list, description="temperature sweep (empty: none)")
    repeats: int = Field(default=1, ge=1)
    seed: int = 0


class AdaptiveRatiosConfig(Strict):
    enabled: bool = True
    top_k: int = Field(default=8, ge=1, description="highest-reward responses of the tuned model to learn on")
    steps: int = Field(default=20, ge=1)
    lr: float = 0.1
    mean_ratio: float = Field(default=0.5, ge=0.0, le=1.0)


class TaxConfig(Strict):
    """``tandem tax``: model averaging between theta_0 (before preference training) and theta_1 (after)."""

    base: str | None = Field(default=None, description="theta_0; default model.name_or_path")
    tuned: str | None = Field(default=None, description="theta_1; default OUTPUT_DIR/final")
    out: str | None = Field(default=None, description="default OUTPUT_DIR/tax")
    groups: str = "block3"
    head_alpha: float | None = None
    sweep: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    trials: int = Field(default=16, ge=0, description="optuna trials over per-group ratios")
    seed: int = 0
    prompts: SourceConfig | None = Field(default=None, description="reward side prompts; default eval.data")
    reward_model: str | None = Field(default=None, description="default eval.reward_model")
    tax_metric: Literal["perplexity", "mc"] = "perplexity"
    heldout_text: str | None = Field(default=None, description="default eval.heldout_text")
    heldout_limit: int | None = Field(default=None, ge=1)
    mc: str | None = Field(default=None, description="default eval.mc")
    budget: float | None = Field(default=None, description="largest tax allowed for the pick")
    max_new_tokens: int = 48
    temperature: float = 0.0
    batch_size: int = 8
    adaptive: AdaptiveRatiosConfig = AdaptiveRatiosConfig()


class CheckpointConfig(Strict):
    every: int = Field(default=0, ge=0, description="optimizer steps between checkpoints; 0 = stage ends only")
    keep: int = Field(default=1, ge=1)
    stage_weights: bool = Field(default=True, description="save trainable weights at the start and at each stage end (stages/)")


class LoggingConfig(Strict):
    every: int = Field(default=1, ge=1)
    tensorboard: bool = True
    progress: bool = True


class ProbeConfig(Strict):
    """Training-time gradient-entanglement probe (tandem.probes.ProbeHook) in preference stages."""

    every: int = Field(default=0, ge=0, description="optimizer steps between probes; 0 = off")
    pairs: int = Field(default=8, ge=1, description="the first N pairs of the stage's data are probed")
    params: str = Field(default="all", description="'all', 'lora' or a regex on parameter names")


class Recipe(Strict):
    name: str = "run"
    output_dir: str
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    model: ModelConfig
    data: DataConfig
    batching: BatchingConfig = BatchingConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    objectives: dict[str, ObjectiveConfig]
    regularizer: RegularizerConfig | None = None
    hbat: HBATConfig = HBATConfig()
    eval: EvalConfig = EvalConfig()
    tax: TaxConfig = TaxConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    probe: ProbeConfig = ProbeConfig()
    save_merged: bool = Field(default=True, description="with LoRA, also save a merged full model in final/merged")

    @model_validator(mode="after")
    def _objectives_known(self) -> "Recipe":
        allowed = {"sft", "preference", "reward", "ppo"}  # ppo: settings for the PPO methods (schedules.methods)
        bad = set(self.objectives) - allowed
        if bad:
            raise ValueError(f"objectives: unknown role(s) {sorted(bad)}; roles are {sorted(allowed)}")
        return self


class RecipeError(ValueError):
    pass


def _coerce(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to the raw recipe dict."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key.sub=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise RecipeError(f"--set {item!r}: {p!r} is not a mapping")
            node = node[p]
        node[parts[-1]] = _coerce(value)
    return raw


def _line_of(text: str, loc: tuple) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its closest existing parent)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    return parse_recipe(raw, source=str(path), text=text)


def parse_recipe(raw: dict, source: str = "<recipe>", text: str | None = None) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(x for x in err["loc"])
            key = ".".join(str(x) for x in loc) or "(top level)"
            where = source
            ln = _line_of(text, loc) if text else None
            if ln:
                where += f", line {ln}"
            if err["type"] == "extra_forbidden":
                msg = f"unknown key '{key}'"
            elif err["type"] == "missing":
                msg = f"missing required key '{key}'"
            else:
                msg = f"'{key}': {err['msg']}"
            lines.append(f"{where}: {msg}")
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
