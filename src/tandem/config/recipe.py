"""Recipes: the YAML description of a run, validated by pydantic.

Every model forbids unknown keys, so a typo is an error that names the key, its line and the file; a key
given twice in one mapping is an error naming both lines; every number has its range (and must be finite),
so a bad value is refused here, before anything is loaded. A bad ``--set key=value`` is blamed on the flag,
not on a line of the file.
Defaults that matter live in the recipe files under ``recipes/``; the defaults here only make small
recipes (tests, overrides) possible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import copy
import json
import math

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from tandem.config.yamlsrc import (  # noqa: F401 - re-exported: tandem.config.recipe is the public place
    DuplicateKeyError,
    RecipeError,
    apply_overrides,
    flag_of,
    line_of,
    load_yaml,
)
from tandem.config.base import SEED_MAX, Strict  # noqa: F401 - re-exported
from tandem.config.values import expand_path, finite_extras, finite_numbers, not_bool, redact_flag
from tandem.io.secrets import redact_value
from tandem.schedules.methods import METHODS, build_stages, get_method
from tandem.config.aliases import canonical_key, normalise
from tandem.config.defaults import implied_objectives
from tandem.config.hints import hint
from tandem.config.taxblock import AdaptiveRatiosConfig, TaxConfig  # noqa: F401 - re-exported
from tandem.config.evalblock import EvalConfig, ExtraEvalSet, JudgeSettings  # noqa: F401 - re-exported
from tandem.config.inputs import (  # noqa: F401 - re-exported: tandem.config.recipe is the public place
    BRANCH_TAGS,
    ATTN_IMPLEMENTATIONS,
    DataConfig,
    LoraConfig,
    ModelConfig,
    SourceConfig,
)


# objectives that read only per-sequence log-probs of chosen and rejected (tandem.objectives.logprobs), so the
# prefix-shared layout (tandem.data.prefix) gives them the same values; the reward model reads the hidden state of each
# sequence's last token, which the layout keeps too
LOGPROB_PAIR_OBJECTIVES = ("dpo", "dpop", "orpo", "simpo", "sparse_token")
PREFIX_SHARING_OBJECTIVES = (*LOGPROB_PAIR_OBJECTIVES, "reward")
GROUP_OBJECTIVES = ("grpo", "rloo")  # per-token log-probs of completions: a prompt's group shares it the same way


def prefix_sharing_problem(method: str, objectives: dict) -> str | None:
    """Why ``batching.prefix_sharing`` does not apply to a run of ``method`` with these ``objectives`` blocks (role ->
    ObjectiveConfig), or None. Every pair-training role of the run (preference, reward) must train with an objective of
    :data:`PREFIX_SHARING_OBJECTIVES`. An unknown method is left to its own check."""
    try:
        m, stages = get_method(method), build_stages(method, 1)
    except ValueError:
        return None
    roles = {s.role for s in stages} | ({m.aux_role} if m.aux_role else set())

    def name(role: str) -> str | None:
        block = objectives.get(role)
        return block.name if block is not None else None

    trained = {r: (m.preference_objective or name(r)) if r == "preference" else name(r) or r
               for r in ("preference", "reward") if r in roles}
    if trained and all(o in PREFIX_SHARING_OBJECTIVES + GROUP_OBJECTIVES for o in trained.values()):
        return None
    what = ", ".join(f"objective {o}" for o in trained.values()) or "no preference pairs"
    return (f"batching.prefix_sharing: true applies to pair training with {', '.join(PREFIX_SHARING_OBJECTIVES)} and to "
            f"the groups of {', '.join(GROUP_OBJECTIVES)}; schedule.method {method} trains {what}: set batching.prefix_sharing: false")


class BatchingConfig(Strict):
    mode: Literal["pack", "pad"] = "pack"
    batch_size: int = Field(default=8, ge=1, description="examples (or pairs) per optimizer step, all processes")
    grad_accum: int = Field(default=1, ge=1)
    max_tokens_per_row: int | Literal["max_length"] | None = Field(
        default="max_length", description="pack: longest row in tokens. max_length (default): data.max_length; "
        "sdpa attention (CPU, GPUs without varlen flash-attention) computes a row's full causal square, so rows that "
        "hold several sequences mostly add attention between tokens that cannot see each other (docs/benchmarks.md); "
        "null = one row per micro-batch")
    group_by_length: bool = True
    prefix_sharing: bool = Field(default=False, description="pack: the prompt once per pair ([prompt][chosen][rejected], "
                                 f"a block attention mask, arXiv 2410.20305; {', '.join(PREFIX_SHARING_OBJECTIVES)}) or "
                                 f"per group of num_generations completions ({', '.join(GROUP_OBJECTIVES)})")

    @field_validator("max_tokens_per_row")
    @classmethod
    def _positive_rows(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be at least 1 (or max_length, or null), got {v}")
        return v

    def row_tokens(self, max_length: int) -> int | None:
        """The row cap collate packs to: ``max_tokens_per_row`` with ``max_length`` resolved."""
        return max_length if self.max_tokens_per_row == "max_length" else self.max_tokens_per_row

    @model_validator(mode="after")
    def _prefix_sharing_packs(self) -> "BatchingConfig":
        if self.prefix_sharing and self.mode != "pack":
            raise ValueError(f"prefix_sharing needs mode: pack, got mode: {self.mode}")
        return self


#: learning-rate schedules (transformers' ``get_scheduler`` names that need no extra arguments); checked on load.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


class OptimizerConfig(Strict):
    lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    scheduler: Literal[SCHEDULERS] = "cosine"  # type: ignore[valid-type]
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    warmup_steps: int | None = Field(default=None, ge=0, description="warm-up optimizer steps of each stage "
                                     "(instead of warmup_ratio)")
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="null = no clipping")
    lr_by_role: dict[Literal["sft", "preference", "reward"], Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="the learning rate of a stage role's stages instead of lr: {preference: 1e-4}")

    @model_validator(mode="after")
    def _one_warmup(self) -> "OptimizerConfig":
        if self.warmup_steps is not None and self.warmup_ratio > 0:
            raise ValueError("warmup_ratio and warmup_steps are both set; keep one")
        return self

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        for i, b in enumerate(v):
            if not 0 <= b < 1:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
        return v


class ObjectiveConfig(BaseModel):
    """``name`` picks the objective in the registry; other keys are its arguments (checked by it)."""

    model_config = ConfigDict(extra="allow")
    name: str
    _finite = model_validator(mode="after")(finite_extras)  # beta: .inf refused here, not blamed on the lr later


class RegularizerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    _finite = model_validator(mode="after")(finite_extras)  # NaN/inf refused, percent in [0, 100]


class ScheduleConfig(Strict):
    method: str = "sft"
    parts: int = Field(default=1, ge=1)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps over the whole run (as in TRL), "
                                  "split over the stages in proportion to their planned steps")
    max_steps_per_stage: int | None = Field(default=None, ge=1, description="cap on the optimizer steps of each stage")

    @field_validator("method")
    @classmethod
    def _method_known(cls, v: str) -> str:
        if v not in METHODS:
            import difflib

            near = difflib.get_close_matches(v, list(METHODS), n=1)
            raise ValueError(f"unknown method {v!r}" + (f"; did you mean {near[0]!r}?" if near else "") +
                             f" (methods: {', '.join(sorted(METHODS))})")
        return v


class HBATConfig(Strict):
    """Settings of the hybrid-training methods (see tandem.schedules.methods). Each regularizer block is passed
    to the regularizer registry as keyword arguments, so a wrong key is an error naming it."""

    ewc: dict[str, Any] = Field(default_factory=lambda: {"lam": 1.0, "f_max": 50.0, "normalise": "zscore", "temperature": 1.0})
    freeze: dict[str, Any] = Field(default_factory=lambda: {"percent": 20.0, "normalise": "zscore"})
    fisher: dict[str, Any] = Field(default_factory=lambda: {"lam": 1.0, "samples": 64})
    l2: dict[str, Any] = Field(default_factory=lambda: {"lam": 0.01})
    l1: dict[str, Any] = Field(default_factory=lambda: {"lam": 1e-4})
    mix_gamma: float = Field(default=0.5, ge=0, description="weight of the auxiliary loss in dpo+sft / sft+dpo")
    alternate_weight: float = Field(default=0.5, ge=0, le=1, description="alright / maxright: weight (probability "
                                    "for alright) of the stage's other objective")
    reference: Literal["stage_start", "initial"] = "stage_start"
    select_metric: str | None = Field(default=None, description="validation metric that picks the best stage, e.g. preference/rewards/margin")
    select_mode: Literal["max", "min"] = "max"
    final: Literal["best", "last"] = "last"

    @field_validator("ewc", "freeze", "fisher", "l2", "l1")
    @classmethod
    def _finite_numbers(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Each regularizer checks its own ranges when built; a NaN or an infinity (and a percent outside [0, 100]) is
        refused here."""
        return finite_numbers(v)


class CheckpointConfig(Strict):
    every: int = Field(default=0, ge=0, description="optimizer steps between checkpoints; 0 = stage ends only")
    keep: int = Field(default=1, ge=1)
    stage_weights: bool | None = Field(default=None, description="save trainable weights at the start and at each "
                                       "stage end (stages/); null (default): where the method needs them (several "
                                       "stages, PPO, hbat.final: best)")


TRACKERS = ("tensorboard", "wandb", "mlflow")


class LoggingConfig(Strict):
    """``report_to`` lists the trackers (through accelerate; ``"none"`` = ``[]``, ``"all"`` = every one).
    ``tensorboard`` is the older switch: ``tensorboard: false`` without ``report_to`` means ``report_to: []``;
    when ``report_to`` is given it decides."""

    every: int = Field(default=1, ge=1)
    val_every: int = Field(default=0, ge=0, description="optimizer steps between validations inside a stage (data.val); "
                           "0 = at stage ends only")
    tensorboard: bool = True
    progress: bool = True
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    project: str | None = Field(default=None, description="tracker project / experiment name; default: the recipe's name")

    @model_validator(mode="before")
    @classmethod
    def _report_to_list(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        rep = data.get("report_to")
        if isinstance(rep, str):
            data["report_to"] = [] if rep.lower() == "none" else list(TRACKERS) if rep.lower() == "all" else [rep]
        elif rep is None and data.get("tensorboard") is False:
            data["report_to"] = []
        return data

    @field_validator("report_to")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a tracker is named twice: {v}")
        return v


class ProbeConfig(Strict):
    """Training-time gradient-entanglement probe (tandem.probes.ProbeHook) in preference stages."""

    every: int = Field(default=0, ge=0, description="optimizer steps between probes; 0 = off")
    pairs: int = Field(default=8, ge=1, description="the first N pairs of the stage's data are probed")
    params: str = Field(default="all", description="'all', 'lora' or a regex on parameter names")


class HubConfig(Strict):
    """Push ``final/`` (or ``final/merged``) to a Hub repo at the end of training, as ``tandem push`` does."""

    push: bool = Field(default=False, description="push at the end of training (TRL's push_to_hub)")
    repo_id: str | None = Field(default=None, description="org/name (TRL's hub_model_id)")
    private: bool = False
    merged: bool = Field(default=True, description="with LoRA, push final/merged (else the adapter final/)")

    @model_validator(mode="after")
    def _repo_named(self) -> "HubConfig":
        if self.push and not self.repo_id:
            raise ValueError("push: true needs repo_id (e.g. hub.repo_id: me/my-model, TRL's hub_model_id)")
        return self


class Recipe(Strict):
    name: str = "run"
    output_dir: Annotated[str, AfterValidator(expand_path)]  # ~ and $HOME expanded
    seed: Annotated[int, BeforeValidator(not_bool)] = Field(default=0, ge=0, le=SEED_MAX)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    model: ModelConfig
    data: DataConfig
    batching: BatchingConfig = BatchingConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    objectives: dict[str, ObjectiveConfig] = Field(default_factory=dict, description="default: the method's")
    regularizer: RegularizerConfig | None = None
    hbat: HBATConfig = HBATConfig()
    eval: EvalConfig = EvalConfig()
    tax: TaxConfig = TaxConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    probe: ProbeConfig = ProbeConfig()
    save_merged: bool = Field(default=True, description="with LoRA, also save a merged full model in final/merged")
    hub: HubConfig = HubConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        return implied_objectives(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _objectives_known(self) -> "Recipe":
        roles = {"sft", "preference", "reward", "pretrain"}
        # besides the data roles, a block named after its objective holds that objective's settings for the methods
        # that force it (ppo, orpo, simpo, dpop: see tandem.schedules.methods)
        bad = {k for k, v in self.objectives.items() if k not in roles and k != v.name}
        if bad:
            raise ValueError(f"objectives: unknown role(s) {sorted(bad)}; roles are {sorted(roles)}, or a block "
                             "named after its objective (e.g. objectives.ppo with name: ppo)")
        if self.batching.prefix_sharing and (problem := prefix_sharing_problem(self.schedule.method, self.objectives)):
            raise ValueError(problem)
        pref = self.objectives.get("preference")
        if self.probe.every and (self.schedule.method == "kto" or (pref is not None and pref.name == "kto")):
            raise ValueError("probe.every: the entanglement probe compares chosen and rejected replies; the kto "
                             "objective trains on unpaired rows: set probe.every: 0")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "Recipe":
        """A recipe file, checked (``overrides``: ``--set`` items such as ``"optimizer.lr=1e-5"``)."""
        return load_recipe(path, overrides)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> "Recipe":
        """A recipe from plain data (TRL's names accepted), checked like a file; ``raw`` is not modified."""
        if not isinstance(raw, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of keys, got {type(raw).__name__}")
        return parse_recipe(copy.deepcopy(raw), source=source)

    def set(self, key: str, value: Any) -> "Recipe":
        """One field changed (``"optimizer.lr"``, or a TRL name), the whole recipe checked again as ``--set`` does;
        changed in place and returned."""
        item = f"{canonical_key(key)}={json.dumps(value)}"  # JSON is YAML: the value parses back as it is
        new = parse_recipe(apply_overrides(self.model_dump(mode="json"), [item]), source=f"Recipe.set({key!r}, {value!r})")
        for name in type(self).model_fields:
            object.__setattr__(self, name, getattr(new, name))
        return self


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe not found")
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory, not a recipe file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise RecipeError(f"{path}, line {line}: not valid UTF-8 text (byte {e.object[e.start]:#04x})") from None
    try:
        raw = load_yaml(text) or {}
    except DuplicateKeyError as e:
        raise RecipeError(f"{path}, line {e.second}: {e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    moved: dict = {}
    raw = normalise(raw, str(path), moved, text)  # TRL's names in the file, before the --set flags override fields
    overrides = [canonical_key(o.split("=", 1)[0].strip()) + "=" + o.split("=", 1)[1] if "=" in o else o
                 for o in overrides or []]
    raw = apply_overrides(raw, overrides)
    return parse_recipe(raw, source=str(path), text=text, overrides=overrides, moved=moved)


def parse_recipe(raw: dict, source: str = "<recipe>", text: str | None = None,
                 overrides: list[str] | None = None, moved: dict | None = None) -> Recipe:
    """Validate a raw recipe dict; errors name ``source`` and the line in ``text``, or the ``--set`` flag in
    ``overrides`` that wrote the value at fault. TRL's option names are rewritten first (:mod:`tandem.config.aliases`;
    ``moved``: tandem path -> the alias's path in ``text``, for line numbers); an unknown key gets a close-match hint."""
    moved = dict(moved or {})
    raw = normalise(raw, source, moved)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(x for x in err["loc"] if x not in BRANCH_TAGS)  # data.preference.1.limit, not its branch
            key = ".".join(str(x) for x in loc) or "(top level)"
            flag = flag_of(overrides or [], loc) if loc else None
            if flag is not None:
                where = f"--set {redact_flag(flag)}"
            else:
                where = source
                at = next((moved[loc[:n]] + loc[n:] for n in range(len(loc), 0, -1) if loc[:n] in moved), loc)
                ln = line_of(text, at) if text else None
                if ln:
                    where += f", line {ln}"
            if err["type"] == "extra_forbidden":
                msg = f"unknown key '{key}'" + (f"; {h}" if (h := hint(Recipe, loc)) else "")
            elif err["type"] == "missing":
                msg = f"missing required key '{key}'"
            else:
                msg = f"'{key}': " + ("null; give a value or leave the key out" if err.get("input", 0) is None else err["msg"])
            lines.append(f"{where}: {msg}")
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None


def dump_recipe(recipe: Recipe) -> str:  # API keys and URL passwords redacted (RUN/recipe.yaml, model cards)
    return yaml.safe_dump(redact_value("", recipe.model_dump(mode="json")), sort_keys=False)
