"""Uniform distance-to-anchor penalties (registry names ``l2`` and ``l1``): the alignment-tax baseline.

With ``theta^0`` the anchor weights, in a stage where the penalty applies:

- ``l2``: penalty ``(lambda / 2) * ||theta - theta^0||^2``, gradient ``lambda * (theta - theta^0)``;
- ``l1``: penalty ``lambda * ||theta - theta^0||_1``, (sub)gradient ``lambda * sign(theta - theta^0)``.

Which anchor, and in which stages (Lin et al., "Mitigating the Alignment Tax of RLHF", arXiv 2309.06256: the
L1/L2 baselines penalise the distance to the pre-RLHF model while RLHF runs):

- ``anchor: preference_start, stages: preference`` (default): the anchor is taken at the start of every
  preference (``hpa``) stage and the penalty applies in ``hpa`` stages only. In a sequential schedule that anchor
  is the SFT model, the paper's pre-RLHF model; in an alternating schedule (SFT-1, pref-1, SFT-2, pref-2, ...)
  each preference stage is pulled towards the model it started from, i.e. the end of the SFT stage before it.
- ``anchor: initial, stages: all``: the older behaviour; the anchor is the weights before the first stage (before
  SFT) and the penalty applies in every stage.
- ``anchor: initial, stages: preference``: the anchor before the first stage, the penalty in ``hpa`` stages only.

``anchor: preference_start`` with ``stages: all`` is refused (an SFT stage before the first preference stage
would have no anchor). Memory: one copy of the trainable weights, held only while it can be used
(``anchor_device="cpu"`` keeps it in host memory at the cost of one host-to-device copy per ``grad_term``).
"""

from __future__ import annotations

import warnings

import torch

from tandem.distributed.tensors import local, whole_sums
from tandem.regularizers.base import (
    PenaltyValue,
    Snapshot,
    StageData,
    ensure_grads,
    lazy_sum,
    lookup,
    norms,
    stage_kind,
    trainable,
)

ANCHORS = ("preference_start", "initial")
STAGES = ("preference", "all")


class Anchor(PenaltyValue):
    def __init__(self, lam: float = 1.0, norm: str = "l2", anchor: str = "preference_start",
                 stages: str = "preference", anchor_device: str = "same"):
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm: {norm!r} is not 'l1' or 'l2'")
        if not lam >= 0:
            raise ValueError(f"lam: must be >= 0, got {lam}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor: {anchor!r} is not one of {list(ANCHORS)}")
        if stages not in STAGES:
            raise ValueError(f"stages: {stages!r} is not one of {list(STAGES)}")
        if anchor == "preference_start" and stages == "all":
            raise ValueError("stages: 'all' needs anchor: initial (with anchor: preference_start an SFT stage before "
                             "the first preference stage has no anchor); set anchor: initial or stages: preference")
        if anchor_device not in ("same", "cpu"):
            raise ValueError(f"anchor_device: {anchor_device!r} is not 'same' or 'cpu'")
        self.lam, self.norm, self.anchor_at, self.stages = float(lam), norm, anchor, stages
        self.anchor_device = anchor_device
        self.anchor: Snapshot | None = None
        self.current: str | None = None  # kind of the running stage
        self._last = None

    def before_stage(self, model, stage) -> None:
        kind = self.current = stage_kind(stage)
        if self.anchor_at == "initial":
            if self.anchor is None:
                self.anchor = Snapshot.take(trainable(model), storage=self.anchor_device)
        elif kind == "hpa":
            self.anchor = Snapshot.take(trainable(model), storage=self.anchor_device)
        else:
            self.anchor = None  # retaken at the next preference stage

    def after_stage(self, model, stage, data: StageData) -> None:
        """Ends the stage (``data`` is not used)."""
        self.current = None

    def active(self) -> bool:
        """Whether the penalty applies now."""
        return self.anchor is not None and (self.stages == "all" or self.current == "hpa")

    def _terms(self, model):
        if not self.active():
            return
        groups = self.anchor.groups()
        params = lookup(model, [n for names, _ in groups for n in names])
        for names, anchors in groups:
            keep = [i for i, n in enumerate(names) if params[n].requires_grad]
            if keep:
                yield [params[names[i]] for i in keep], [anchors[i] for i in keep]

    def grad_term(self, model) -> None:
        parts = []
        with torch.no_grad():
            for ps, anchors in self._terms(model):
                diff = torch._foreach_sub([local(p).detach() for p in ps], anchors)
                if self.norm == "l2":
                    sq = whole_sums(ps, norms(diff, 2) ** 2)
                    parts.append(0.5 * self.lam * sq.sum())
                else:
                    parts.append(self.lam * whole_sums(ps, norms(diff, 1)).sum())
                    torch._foreach_sign_(diff)
                torch._foreach_add_(ensure_grads(ps), diff, alpha=self.lam)
        self._last = lazy_sum(parts)

    def penalty(self, model) -> float:
        total = 0.0
        with torch.no_grad():
            for ps, anchors in self._terms(model):
                diff = torch._foreach_sub([local(p).detach() for p in ps], anchors)
                if self.norm == "l2":
                    total += 0.5 * self.lam * sum(whole_sums(ps, norms(diff, 2).double() ** 2).cpu().tolist())
                else:
                    total += self.lam * sum(whole_sums(ps, norms(diff, 1).double()).cpu().tolist())
        return total

    def report(self) -> None:
        """No per-tensor record: the anchor is uniform over tensors."""
        return None

    def state_dict(self) -> dict:
        return {"version": 2, "lam": self.lam, "norm": self.norm, "anchor_at": self.anchor_at, "stages": self.stages,
                "current": self.current, "anchor": None if self.anchor is None else self.anchor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Loads a state of version 2, or of version 1 (anchor before the first stage, penalty in every stage)."""
        if state["version"] >= 2:
            saved = (state["anchor_at"], state["stages"])
            self.current = state["current"]
        else:
            saved, self.current = ("initial", "all"), None
        if saved != (self.anchor_at, self.stages):
            warnings.warn(f"{self.norm}: loading state saved with anchor={saved[0]}, stages={saved[1]} into one "
                          f"configured with anchor={self.anchor_at}, stages={self.stages}")
        self.anchor = None if state["anchor"] is None else Snapshot.from_state(state["anchor"])
