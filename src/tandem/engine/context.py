"""What the engine receives: a typed loop configuration and a stage's built objects (never a ``Recipe``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import torch

from tandem.optim import GradScaling

if TYPE_CHECKING:
    from accelerate import Accelerator
    from rich.progress import Progress

    from tandem.io.metrics import MetricsLog
    from tandem.objectives.base import Objective
    from tandem.regularizers.base import Regularizer
    from tandem.schedules.steps import Alternation
    from tandem.schedules import Stage

BatchFn = Callable[[list[dict]], dict]


@dataclass(frozen=True)
class LoopConfig:
    """Every setting a training loop reads (built from the recipe by ``tandem.pipelines.train.loop_config``)."""

    output_dir: Path
    seed: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    group_by_length: bool = True
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps over the whole run (split over stages in proportion)
    max_steps_per_stage: int | None = None
    alternate: str | None = None  # "alright" | "maxright": one objective per step (else aux terms are added)
    alternate_weight: float = 0.5
    lr: float = 1e-5
    lr_by_role: dict[str, float] = field(default_factory=dict)  # stage role -> its learning rate (else lr)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # warm-up steps of each stage (instead of warmup_ratio)
    max_grad_norm: float | None = 1.0
    log_every: int = 1
    val_every: int = 0  # optimizer steps between validations inside a stage (0: stage ends only)
    checkpoint_every: int = 0
    checkpoint_keep: int = 1
    stage_weights: bool = True
    reference: Literal["stage_start", "initial"] = "stage_start"
    select_metric: str | None = None
    select_mode: Literal["max", "min"] = "max"
    final: Literal["best", "last"] = "last"
    probe_every: int = 0
    probe_pairs: int = 8
    probe_params: str = "all"
    progress: bool = True
    report_to: tuple[str, ...] = ("tensorboard",)  # trackers (tandem.io.metrics)
    project: str = "tandem"
    loss_scaling: bool = False  # fp16: scale the loss, unscale before the gradients are read (tandem.optim)


@dataclass(frozen=True)
class AuxTerm:
    """An objective mixed into every step of a stage with a weight (multi-objective methods)."""

    objective: "Objective"
    features: list[dict]
    weight: float
    role: str  # the data role of the features (budgets are counted per role)


class Runner(torch.nn.Module):
    """Calls ``fn(model, batch)`` inside ``forward`` so DDP's hooks see the whole computation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, batch):
        return fn(self.model, batch)


@dataclass
class StageContext:  # what a stage loop needs; built by tandem.engine.run for each stage
    accelerator: "Accelerator"
    runner: Runner  # the prepared (possibly DDP-wrapped) Runner
    model: torch.nn.Module  # the unwrapped HF model
    objective: "Objective"
    features: list[dict]
    batch_fn: BatchFn
    config: LoopConfig
    stage: "Stage"
    regularizer: "Regularizer | None"
    log: "MetricsLog"
    progress: "Progress"
    on_checkpoint: Callable[[int, torch.optim.Optimizer, object], None]  # (stage_step, optimizer, scheduler)
    on_validate: Callable[[int], dict] | None = None  # (stage_step): validation inside the stage (``val_every``)
    global_step: int = 0
    aux: list[AuxTerm] = field(default_factory=list)  # added to every step, or alternated with (``alternation``)
    alternation: "Alternation | None" = None
    seen: dict[str, int] = field(default_factory=dict)  # examples trained on per role (the compare budget)
    scaling: GradScaling = field(default_factory=GradScaling)  # the run's loss scaling (identity unless fp16)
