"""Original EWC with the diagonal empirical Fisher (registry name ``fisher``, alias ``fisher_ewc``), a baseline
for HBAT.

After a stage of kind ``k`` we estimate, elementwise for every trainable tensor,

    F = (1 / n) * sum_{j=1..n} (d log p(y_j | x_j) / d theta)^2

at the weights ``theta^k`` reached at the end of the stage, over ``n = min(samples, available)`` single-example
batches (one forward and one backward per example, so per-example gradients are exact; cost: ``n`` extra
forward/backward passes at every stage end). The squared gradients are summed in float64 (a transient buffer of
8 bytes per trainable element), then ``F`` is stored in the parameter dtype.

- ``accumulate: false`` (default, Kirkpatrick et al. 2017 as usually run between two tasks): ``F^k = F`` and
  ``theta^k`` replace those of the previous stage of kind ``k``.
- ``accumulate: true``: ``F^k = sum of F over every stage of kind k so far`` (the sum is taken in float64),
  like the modified EWC's accumulated change ``AC^k``; the anchor ``theta^k`` is the end of the latest stage of
  kind ``k``. Use it to compare the two importances like for like.

In a stage of kind ``k`` once the other kind ``o`` has finished a stage, the penalty is

    (lambda / 2) * sum F^o * (theta - theta^o)^2        gradient: lambda * F^o * (theta - theta^o)

(the same switching rule as the modified EWC). Memory: the Fisher is elementwise, so each finished kind holds an
anchor and a Fisher of the size of the trainable weights: two extra copies per kind, up to four copies plus the
float64 sum while estimating.

Data: ``after_stage(model, stage, data)`` draws ``data.single_batches(samples)`` (one example each, SFT layout:
for preference data the chosen response). ``logp_fn(model, batch) -> scalar tensor`` is ``log p(y|x)`` of the one
example in ``batch``; by default the sum of ``tandem.objectives.logprobs.sequence_logps``.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Callable, Iterable

import torch

from tandem.distributed.tensors import local, whole_sums
from tandem.regularizers.base import (
    PenaltyValue,
    Snapshot,
    StageData,
    ensure_grads,
    lazy_sum,
    lookup,
    other_kind,
    stage_kind,
    stage_record,
    trainable,
)


def _default_logp(model, batch) -> torch.Tensor:
    from tandem.objectives.logprobs import sequence_logps

    return sequence_logps(model, batch)[0].sum()


def empirical_fisher(model, batches: Iterable, logp_fn: Callable, samples: int, names: list[str]) -> tuple[dict, int]:
    """``({name: mean of squared per-example gradients (float64)}, n examples used)``; leaves ``.grad`` as None.

    Sharded parameters: every process runs the same examples (so the averaged gradient of each backward is the
    example's own) and keeps the Fisher of its slice."""
    params = lookup(model, names)
    plist = [params[n] for n in names]
    acc = [torch.zeros_like(local(p), dtype=torch.float64) for p in plist]
    was_training = model.training
    model.eval()
    n = 0
    try:
        for batch in itertools.islice(batches, samples):
            for p in plist:
                p.grad = None
            logp = logp_fn(model, batch)
            if logp.dim() != 0:
                raise ValueError(f"fisher: logp_fn must return a scalar (one example), got shape {tuple(logp.shape)}")
            logp.backward()
            grads = [local(p.grad).to(torch.float64) if p.grad is not None else torch.zeros_like(a)
                     for p, a in zip(plist, acc)]
            torch._foreach_addcmul_(acc, grads, grads)
            n += 1
    finally:
        for p in plist:
            p.grad = None
        model.train(was_training)
    if n == 0:
        return {}, 0
    torch._foreach_div_(acc, float(n))
    return dict(zip(names, acc)), n


class FisherEWC(PenaltyValue):
    """EWC with the diagonal empirical Fisher; ``samples`` caps the examples used per estimate, ``accumulate``
    sums the estimates of the stages of a kind (module docstring)."""

    def __init__(self, lam: float = 1.0, samples: int = 200, accumulate: bool = False, anchor_device: str = "same",
                 logp_fn: Callable | None = None):
        if not lam >= 0:
            raise ValueError(f"lam: must be >= 0, got {lam}")
        if int(samples) < 1:
            raise ValueError(f"samples: must be >= 1, got {samples}")
        if anchor_device not in ("same", "cpu"):
            raise ValueError(f"anchor_device: {anchor_device!r} is not 'same' or 'cpu'")
        if not isinstance(accumulate, bool):
            raise ValueError(f"accumulate: must be true or false, got {accumulate!r}")
        self.lam, self.samples, self.accumulate, self.anchor_device = float(lam), int(samples), accumulate, anchor_device
        self.logp_fn = logp_fn or _default_logp
        self.anchors: dict[str, Snapshot] = {}
        self.fisher: dict[str, Snapshot] = {}
        self.names: list[str] | None = None
        self.current: dict | None = None
        self.stages: list[dict] = []
        self._last = None

    def before_stage(self, model, stage) -> None:
        self.current = stage_record(stage)
        if self.names is None:
            self.names = list(trainable(model))

    def after_stage(self, model, stage, data: StageData) -> None:
        """Estimates the Fisher on ``data.single_batches(samples)`` and anchors the stage's kind at the current
        weights (replacing, or with ``accumulate`` adding to, the Fisher of earlier stages of that kind)."""
        kind = stage_kind(stage)
        names = self.names if self.names is not None else list(trainable(model))
        fisher, n = empirical_fisher(model, iter(data.single_batches(self.samples)), self.logp_fn, self.samples, names)
        if n == 0:
            raise ValueError(f"fisher: after_stage({stage.name!r}) needs example batches to estimate the Fisher, and "
                             "the stage's data gave none (no examples)")
        params = lookup(model, names)
        if self.accumulate and kind in self.fisher:
            before = self.fisher[kind].tensors()
            fisher = {k: fisher[k] + before[k].to(device=fisher[k].device, dtype=torch.float64) for k in names}
        self.anchors[kind] = Snapshot.take(params, storage=self.anchor_device)
        # stored in each parameter's dtype, same grouping as the anchor
        self.fisher[kind] = Snapshot.take({k: fisher[k].to(params[k].dtype) for k in names}, storage=self.anchor_device)
        self.stages.append({**stage_record(stage), "examples": n})
        self.current = None

    def active(self) -> str | None:
        if self.current is None:
            return None
        o = other_kind(self.current["kind"])
        return o if o in self.anchors else None

    def _terms(self, model):
        o = self.active()
        if o is None:
            return
        a_groups = self.anchors[o].groups()
        f_all = self.fisher[o].tensors()
        params = lookup(model, [n for names, _ in a_groups for n in names])
        for names, anchors in a_groups:
            keep = [i for i, n in enumerate(names) if params[n].requires_grad]
            if keep:
                yield ([params[names[i]] for i in keep], [anchors[i] for i in keep],
                       [f_all[names[i]].to(local(params[names[i]]).device) for i in keep])

    def grad_term(self, model) -> None:
        """``grad += lambda * F^o * (theta - theta^o)`` (fused); stores the penalty for ``last_penalty``."""
        parts = []
        with torch.no_grad():
            for ps, anchors, f in self._terms(model):
                diff = torch._foreach_sub([local(p).detach() for p in ps], anchors)
                fd = torch._foreach_mul(diff, f)
                sums = torch._foreach_mul(fd, diff)
                parts.append(0.5 * self.lam * whole_sums(ps, torch.stack([s.float().sum() for s in sums])).sum())
                torch._foreach_add_(ensure_grads(ps), fd, alpha=self.lam)
        self._last = lazy_sum(parts)

    def penalty(self, model) -> float:
        total = 0.0
        with torch.no_grad():
            for ps, anchors, f in self._terms(model):
                local_sums = []
                for p, a, fi in zip(ps, anchors, f):
                    d = local(p).detach().double() - a.double()
                    local_sums.append((fi.double() * d * d).sum())
                total += 0.5 * self.lam * float(whole_sums(ps, torch.stack(local_sums)).sum())
        return total

    def report(self) -> None:
        """No importance.json: the elementwise Fisher and the examples used per stage are in ``state_dict()``
        (the run's ``regularizer.pt`` checkpoints)."""
        return None

    def state_dict(self) -> dict:
        return {
            "version": 2,
            "lam": self.lam,
            "accumulate": self.accumulate,
            "names": self.names,
            "current": self.current,
            "stages": [dict(s) for s in self.stages],
            "anchors": {k: a.state_dict() for k, a in self.anchors.items()},
            "fisher": {k: f.state_dict() for k, f in self.fisher.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("lam") != self.lam:
            warnings.warn(f"fisher: loading state saved with lam={state.get('lam')} into lam={self.lam}")
        if state.get("accumulate", False) != self.accumulate:
            warnings.warn(f"fisher: loading state saved with accumulate={state.get('accumulate', False)} into "
                          f"accumulate={self.accumulate}")
        self.names = None if state["names"] is None else list(state["names"])
        self.current = None if state["current"] is None else dict(state["current"])
        self.stages = [dict(s) for s in state["stages"]]
        self.anchors = {k: Snapshot.from_state(a) for k, a in state["anchors"].items()}
        self.fisher = {k: Snapshot.from_state(f) for k, f in state["fisher"].items()}
