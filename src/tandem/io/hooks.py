"""Callbacks of a run: ``on_step(row)``, ``on_validate(row)``, ``on_stage_end(stage)``; ``"stop"`` ends the run.

:class:`Callback` is the base class a user subclasses (every method is optional). The engine's metrics log
(:class:`tandem.io.metrics.MetricsLog`) hands each row it writes to :class:`RunHooks`: a training row (every
``logging.every`` steps) to ``on_step``, a validation row to ``on_validate``; the engine calls
:meth:`RunHooks.stage_end` with a stage's ``stage.json`` content after its end checkpoint. A callback that returns
``"stop"`` asks the run to stop: the engine writes a checkpoint at the current step (mid-stage; at a stage end, the
stage's end checkpoint is already written) and raises :class:`RunStopped`; ``tandem train --resume`` (or
``tandem.train(..., resume=True)``) continues from there to the same final weights as a run never stopped. In a PPO
stage the stop happens at the stage end. Callbacks run on the main process.
"""

from __future__ import annotations

from typing import Iterable, Literal

STOP = "stop"


class RunStopped(Exception):
    """A callback stopped the run; its state is in the last checkpoint (continue with resume)."""

    def __init__(self, global_step: int | None = None):
        super().__init__(f"stopped by a callback after step {global_step}; resume continues the run")
        self.global_step = global_step


class Callback:
    """Subclass and override what you need; return ``"stop"`` to end the run cleanly with a checkpoint."""

    def on_step(self, row: dict) -> Literal["stop"] | None:
        """A training row (``split: train``; step, loss, lr, ...), every ``logging.every`` optimizer steps."""
        return None

    def on_validate(self, row: dict) -> Literal["stop"] | None:
        """A validation row (``split: val``), inside a stage (``logging.val_every``) and at its end."""
        return None

    def on_stage_end(self, stage: dict) -> Literal["stop"] | None:
        """A finished stage: its ``stage.json`` (name, role, steps, examples, ``val``: its validation metrics)."""
        return None


class RunHooks:
    """The callbacks of one run, and whether one of them asked it to stop."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks: {type(cb).__name__} is not a tandem.Callback; subclass tandem.Callback "
                                "and override on_step, on_validate or on_stage_end")
        self.stop_requested = False
        self.last_step: int | None = None

    def _note(self, answers: list) -> None:
        bad = [a for a in answers if a not in (None, STOP)]
        if bad:
            raise ValueError(f"a callback returned {bad[0]!r}; return None or 'stop'")
        self.stop_requested = self.stop_requested or STOP in answers

    def row(self, row: dict) -> None:
        """A metrics row as written: ``on_step`` for training rows, ``on_validate`` for validation rows."""
        self.last_step = row.get("step", self.last_step)
        val = row.get("split") == "val"
        self._note([(cb.on_validate if val else cb.on_step)(dict(row)) for cb in self.callbacks])

    def stage_end(self, info: dict) -> None:
        self._note([cb.on_stage_end(dict(info)) for cb in self.callbacks])

    def stop_if_requested(self, last: bool = False) -> None:
        """Raise :class:`RunStopped` when a callback asked to stop (``last``: nothing is left to run, no stop)."""
        if self.stop_requested and not last:
            raise RunStopped(self.last_step)


__all__ = ["STOP", "Callback", "RunHooks", "RunStopped"]
