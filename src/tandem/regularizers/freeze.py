"""``hbat-freeze``: instead of a penalty, freeze the tensors the other objective found most important.

Importance is HBAT's (``tandem.regularizers.ewc``): ``F^o = F_max * softmax(normalise(AC^o) / temperature)``
from the accumulated per-tensor change ``AC^o`` of the other kind ``o``. Before a stage of kind ``k`` whose other
kind has finished at least one stage, the top ``percent`` % of the tracked tensors by ``F^o`` (that is,
``round(N * percent / 100)`` tensors, ties broken by parameter order) are frozen for that stage. The first stage
freezes nothing.

Freezing does not touch ``requires_grad``: ``grad_term`` (after ``backward``, before clipping and the step) sets
``.grad = None`` on the frozen tensors, and optimizers skip a parameter without a gradient (no update, no weight
decay). So the frozen tensors stay in the optimizer's parameter groups and in every checkpoint, a mid-stage resume
rebuilds the same optimizer, and the frozen set (in ``state_dict``) keeps being enforced.
"""

from __future__ import annotations

from tandem.regularizers.base import StageData, lookup, other_kind, stage_kind
from tandem.regularizers.ewc import ChangeTracker


class Freeze:
    last_penalty = 0.0

    def __init__(self, percent: float = 20.0, f_max: float = 1.0, normalise: str = "zscore",
                 temperature: float = 1.0, scale: float = 1e20, anchor_device: str = "same"):
        if not 0 <= percent <= 100:
            raise ValueError(f"percent: must be in [0, 100], got {percent}")
        self.percent = float(percent)
        self.tracker = ChangeTracker(f_max, normalise, temperature, scale, anchor_device)
        self.frozen: list[str] = []

    def choose(self, kind: str) -> list[str]:
        """Names to freeze in a stage of ``kind``: the top ``percent`` % by ``F`` of the other kind."""
        f = self.tracker.importance(other_kind(kind))
        if not f:
            return []
        k = int(round(len(f) * self.percent / 100.0))
        order = sorted(f, key=lambda n: -f[n])  # stable sort: ties keep parameter order
        return order[:k]

    def before_stage(self, model, stage) -> None:
        kind = stage_kind(stage)
        self.tracker.begin(model, stage)
        self.frozen = self.choose(kind)
        lookup(model, self.frozen)  # a clear error if a name is gone

    def grad_term(self, model) -> None:
        for p in lookup(model, self.frozen).values():
            p.grad = None

    def after_stage(self, model, stage, data: StageData) -> None:
        """Records ``C`` of the stage (from ``data.weights`` where given) and releases the frozen tensors."""
        self.tracker.end(model, stage, data.weights)
        self.frozen = []

    def penalty(self, model) -> float:
        return 0.0

    def report(self) -> dict:
        """Per tensor: ``C`` of each stage, ``AC`` and ``F`` per kind (importance.json)."""
        return self.tracker.report({"percent": self.percent})

    def state_dict(self) -> dict:
        return {"version": 1, "percent": self.percent, "tracker": self.tracker.state_dict(), "frozen": list(self.frozen)}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.frozen = list(state["frozen"])
