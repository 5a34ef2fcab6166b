"""Where training metrics go (the engine writes, reports read): ``RUN/metrics.jsonl`` (the public record), the
trackers named in ``logging.report_to`` and a rich progress bar.

Trackers are accelerate's tracker classes over the real clients:

============  ===================================================================================================
tensorboard   ``RUN/tb/`` (``tensorboard --logdir RUN/tb``)
wandb         ``wandb.init(project=project, name=run_name, dir=RUN)``; ``WANDB_MODE=offline`` keeps it local
              (``wandb sync RUN/wandb/offline-run-*`` uploads it later)
mlflow        experiment ``project``, run ``run_name`` at ``MLFLOW_TRACKING_URI`` (mlflow's default when unset)
============  ===================================================================================================

The resolved recipe (``config``) is logged once as hyperparameters. Each row goes to every tracker as
``<split>/<key>`` at ``step`` (the global optimizer step), and a train row's loss also as
``<split>/<role>/loss`` (``train/sft/loss``, ``train/preference/loss``): in an HBAT run the SFT stages' NLL and the
preference stages' DPO loss are separate curves, next to the validation rows' ``val/sft/loss`` and
``val/preference/loss``. The role is the row's ``role`` when it has one, else read from its stage name
(``03-sft-2`` -> ``sft``, ``02-pref-1`` -> ``preference``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Sequence

from tandem.io.hooks import RunHooks
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("tandem")

TRACKERS = ("tensorboard", "wandb", "mlflow")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# coordinates and bookkeeping of a row: not logged as metrics
NOT_METRICS = {"step", "stage_step", "stage_index", "epoch"}
STAGE_LABEL_ROLES = {"sft": "sft", "pref": "preference", "preference": "preference", "dpo": "preference",
                     "reward": "reward", "ppo": "ppo"}
_STAGE_NAME = re.compile(r"^\d+-([a-z]+)")


def role_of(row: dict) -> str | None:
    """The objective role of a metrics row: its ``role`` key, else the label in its stage name, else None."""
    if isinstance(row.get("role"), str):
        return row["role"]
    m = _STAGE_NAME.match(str(row.get("stage", "")))
    return STAGE_LABEL_ROLES.get(m.group(1)) if m else None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def overlay_layout(roles: Sequence[str] = ("sft", "preference", "reward", "pretrain", "ppo")) -> dict:
    """TensorBoard's custom-scalars layout (the CUSTOM SCALARS tab): one chart per role where the training and the
    validation curves of a metric overlay (``train/sft/loss`` with ``val/sft/loss``, ``train/rewards/margin``
    with ``val/preference/rewards/margin``, ...)."""
    charts = {f"{role} loss": ["Multiline", [f"^(train|val)/{role}/loss$"]] for role in roles}
    charts.update({f"preference {m}": ["Multiline", [f"^(train|val)/(preference/)?{m}$"]]
                   for m in ("rewards/margin", "rewards/accuracy", "chosen_logp", "rejected_logp")})
    charts["learning rate"] = ["Multiline", ["^train/lr$"]]
    return {"train and validation": charts}


def tracker_values(row: dict) -> dict[str, float]:
    """What a row sends to the trackers: ``<split>/<key>`` for every finite number, and ``<split>/<role>/loss``."""
    split = row.get("split", "train")
    out = {f"{split}/{k}": v for k, v in row.items() if k not in NOT_METRICS and _number(v)}
    role = role_of(row)
    if role and _number(row.get("loss")):
        out[f"{split}/{role}/loss"] = row["loss"]
    return out


def flat_config(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested recipe dict as ``{"optimizer.lr": 1e-5, ...}`` with scalar values (lists and None as text): what
    TensorBoard's and MLflow's hyperparameter tables accept."""
    out: dict[str, object] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out


def check_trackers(names: Sequence[str]) -> list[str]:
    """The tracker names, checked: unknown names and missing packages raise one clear ``ValueError``; ``none``
    means no tracker."""
    import importlib.util

    names = [n for n in dict.fromkeys(names) if n != "none"]
    for n in names:
        if n not in TRACKERS:
            raise ValueError(f"logging.report_to: unknown tracker {n!r}; choose from {', '.join(TRACKERS)} (or none)")
        pkg = TRACKER_PACKAGES[n]
        if importlib.util.find_spec(pkg) is None:
            raise ValueError(f"logging.report_to: {n} is not installed; pip install {pkg} "
                             "(or pip install 'tandem[trackers]')")
    return names


def _make_tracker(name: str, run_dir: Path, project: str, run_name: str):
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if name == "tensorboard":
        return TensorBoardTracker(run_name="tb", logging_dir=str(run_dir))
    if name == "wandb":
        return WandBTracker(project, name=run_name, dir=str(run_dir))
    return MLflowTracker(experiment_name=project, run_name=run_name)


class MetricsLog:
    """Appends one JSON object per line (can be truncated back to a checkpoint's offset on resume) and sends each
    row to the trackers.

    ``report_to``: tracker names (:data:`TRACKERS`); ``tensorboard=True`` adds ``tensorboard``. ``project``: the
    wandb project / MLflow experiment; ``run_name``: the tracker run's name (default: the run dir's name);
    ``config``: the resolved recipe, logged once as hyperparameters. ``enabled=False`` (other processes) writes
    nothing and starts no tracker."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, enabled: bool = True,
                 report_to: Sequence[str] = (), project: str = "tandem", run_name: str | None = None,
                 config: dict | None = None, hooks: RunHooks | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.hooks = hooks  # the run's callbacks (tandem.io.hooks): each written row goes to them
        names = check_trackers([*report_to, *(["tensorboard"] if tensorboard else [])])
        self.trackers = []
        if not enabled or not names:
            return
        from accelerate import PartialState

        PartialState()  # accelerate's trackers log through its state (a no-op when an Accelerator exists)
        for name in names:
            tracker = _make_tracker(name, Path(run_dir), project, run_name or Path(run_dir).resolve().name)
            try:
                tracker.start()
                if config:
                    tracker.store_init_configuration(config if name == "wandb" else flat_config(config))
                if name == "tensorboard":
                    tracker.writer.add_custom_scalars(overlay_layout())
            except Exception as e:  # a tracker that cannot start must say why in one line
                self.close()
                raise RuntimeError(f"logging.report_to {name}: could not start ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}); see docs/trackers.md") from e
            self.trackers.append(tracker)

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        if self.enabled and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(offset)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.hooks is not None:
            self.hooks.row(row)
        values = tracker_values(row)
        if not values:
            return
        for tracker in list(self.trackers):
            try:
                tracker.log(values, step=int(row.get("step", 0)))
            except Exception as e:  # training goes on; metrics.jsonl keeps the record
                log.warning("tracker %s failed (%s: %s); it is off for the rest of the run", tracker.name,
                            type(e).__name__, e)
                self.trackers.remove(tracker)

    @property
    def stopping(self) -> bool:
        """A callback asked the run to stop (tandem.io.hooks)."""
        return self.hooks is not None and self.hooks.stop_requested

    def stop_if_requested(self, stage: dict | None = None, last: bool = False) -> None:
        """``stage``: a finished stage for the ``on_stage_end`` callbacks. Raises :class:`RunStopped` (trackers
        closed) when a callback asked to stop, unless ``last`` (nothing is left to run)."""
        if self.hooks is None or not self.enabled:
            return
        if stage is not None:
            self.hooks.stage_end(stage)
        if self.hooks.stop_requested and not last:
            self.close()
            self.hooks.stop_if_requested()

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.finish()
            except Exception as e:
                log.warning("tracker %s did not finish cleanly: %s", tracker.name, e)
        self.trackers = []


def tracked(progress: Progress, label: str, total: int):
    """A new task ``label`` of ``total`` items on ``progress``; returns ``advance(n)``. The task stays on screen
    when complete, so every phase of a run is visible at its end."""
    task = progress.add_task(label, total=max(total, 1), loss="-", tps="-")
    return lambda n: progress.update(task, advance=n)


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
