"""Uniform distance-to-start penalties (registry names ``l2_anchor`` and ``l1_anchor``).

The anchor ``theta^0`` is a copy of the trainable weights taken at the first ``before_stage`` (the start of
training) and never moved. In every stage:

- ``l2``: penalty ``(lambda / 2) * ||theta - theta^0||^2``, gradient ``lambda * (theta - theta^0)``;
- ``l1``: penalty ``lambda * ||theta - theta^0||_1``, (sub)gradient ``lambda * sign(theta - theta^0)``.

Memory: one copy of the trainable weights (``anchor_device="cpu"`` keeps it in host memory at the cost of one
host-to-device copy per ``grad_term``).
"""

from __future__ import annotations

import torch

from tandem.regularizers.base import PenaltyValue, Snapshot, ensure_grads, lazy_sum, lookup, norms, trainable


class Anchor(PenaltyValue):
    def __init__(self, lam: float = 1.0, norm: str = "l2", anchor_device: str = "same"):
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm: {norm!r} is not 'l1' or 'l2'")
        if not lam >= 0:
            raise ValueError(f"lam: must be >= 0, got {lam}")
        if anchor_device not in ("same", "cpu"):
            raise ValueError(f"anchor_device: {anchor_device!r} is not 'same' or 'cpu'")
        self.lam, self.norm, self.anchor_device = float(lam), norm, anchor_device
        self.anchor: Snapshot | None = None
        self._last = None

    def before_stage(self, model, stage) -> None:
        if self.anchor is None:
            self.anchor = Snapshot.take(trainable(model), storage=self.anchor_device)

    def after_stage(self, model, stage) -> None:
        pass

    def _terms(self, model):
        if self.anchor is None:
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
                diff = torch._foreach_sub([p.detach() for p in ps], anchors)
                if self.norm == "l2":
                    sq = norms(diff, 2) ** 2
                    parts.append(0.5 * self.lam * sq.sum())
                else:
                    parts.append(self.lam * norms(diff, 1).sum())
                    torch._foreach_sign_(diff)
                torch._foreach_add_(ensure_grads(ps), diff, alpha=self.lam)
        self._last = lazy_sum(parts)

    def penalty(self, model) -> float:
        total = 0.0
        with torch.no_grad():
            for ps, anchors in self._terms(model):
                diff = torch._foreach_sub([p.detach() for p in ps], anchors)
                if self.norm == "l2":
                    total += 0.5 * self.lam * sum(x * x for x in norms(diff, 2).double().cpu().tolist())
                else:
                    total += self.lam * sum(norms(diff, 1).double().cpu().tolist())
        return total

    def state_dict(self) -> dict:
        return {"version": 1, "lam": self.lam, "norm": self.norm,
                "anchor": None if self.anchor is None else self.anchor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = None if state["anchor"] is None else Snapshot.from_state(state["anchor"])
