"""Modified EWC of Hybrid Alignment Training (HBAT): a per-tensor importance from how much each tensor moved.

Training alternates stages of two kinds, ``ifa`` (instruction following, e.g. SFT) and ``hpa`` (human preference,
e.g. DPO). For tensor ``i`` (a trainable parameter, by ``named_parameters()`` name):

- change in a stage:  ``C_i = mean over the elements of tensor i of (theta_before - theta_after)^2``, with
  ``theta_before`` snapshot in ``before_stage`` and ``theta_after`` read in ``after_stage`` (the sum of squares is
  accumulated in float64);
- accumulated change per kind:  ``AC_i^IFA = sum of C_i over the IFA stages so far`` (likewise ``AC_i^HPA``);
- importance:  ``F_i = F_max * softmax_i(normalise(AC)_i / temperature)`` across the tensors, with
  ``normalise`` one of

  ===========  =====================================================================================
  ``none``     ``AC`` as is
  ``mean``     ``AC / mean(AC)`` (all zeros if the mean is 0)
  ``zscore``   ``(AC - mean(AC)) / std(AC)``, population std (all zeros if the std is 0)
  ``scale``    ``AC * scale`` (``scale=1e20`` in the authors' code)
  ===========  =====================================================================================

- penalty in a stage of kind ``k`` once the other kind ``o`` has finished at least one stage::

      (lambda / 2) * sum_i F_i^o * ||theta_i - theta_i^o||^2

  with ``theta^o`` the weights at the end of the latest stage of kind ``o``. So an HPA stage is pulled towards
  the end of the latest IFA stage with ``F^IFA``, an IFA stage towards the end of the latest HPA stage with
  ``F^HPA``, and the first IFA stage has no penalty. With a sequential schedule (all IFA then all HPA) the same
  rule is sequential EWC: only the second kind is penalised (``mode="sequential"`` records that intent; the rule
  is the same).

  Its gradient, added by :meth:`ModifiedEWC.grad_term`, is ``lambda * F_i^o * (theta_i - theta_i^o)``.

Choice of the default normalisation (``python benchmarks/importance_normalisation.py``: 30 tensors with ``C_i``
log-uniform in 1e-12..1e-9, the spread of real per-stage changes; uniform entropy is log 30 = 3.40):

===========  ====  ==============  =======  ===========
normalise    temp  max/min of F    entropy  top-1 share
===========  ====  ==============  =======  ===========
none         1     1.000000        3.401    0.033
mean         1     ~460            1.57     0.53
zscore       1     ~51             2.37     0.35
scale 1e20   1     inf (one-hot)   0.000    1.000
===========  ====  ==============  =======  ===========

Without normalisation the softmax inputs are all ~0, so ``F`` is uniform: the importance carries no information.
Multiplying by 1e20 makes the inputs ~1e8..1e11 and the softmax one-hot: one tensor gets all of ``F_max``, every
other tensor is unpenalised, and which one wins hangs on a single noisy change. ``mean`` and ``zscore`` are both
scale free (a run with a 10x larger learning rate gets the same ``F``) and keep the order of the tensors, but
``AC / mean`` lets the one largest change take half of ``F_max`` on heavy-tailed changes, while the z-score keeps
a 50x contrast between the most and least changed tensors with most of the entropy (and is bounded by
``sqrt(N - 1)``). The default is therefore ``normalise="zscore", temperature=1.0``; lower the temperature to
sharpen ``F``. If all changes are equal the z-score is undefined and ``F`` is uniform.

Memory: during a stage we hold the ``theta_before`` snapshot and the other kind's anchor (two copies of the
trainable weights; the anchor of the stage's own kind is dropped at ``before_stage`` since it is replaced at
``after_stage``). ``anchor_device="cpu"`` keeps both in host memory; then every ``grad_term`` copies the anchor to
the device in one transfer per (device, dtype) group, i.e. one copy of the trainable weights per optimizer step
(negligible for LoRA adapters, about 14 GB per step for a fully trained 7B model in bf16).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Mapping

import torch

from tandem.distributed.tensors import local, whole_sums
from tandem.regularizers.base import (
    KINDS,
    PenaltyValue,
    Snapshot,
    StageData,
    StageInfo,
    ensure_grads,
    lazy_sum,
    lookup,
    norms,
    other_kind,
    stage_kind,
    stage_record,
    trainable,
)

NORMALISATIONS = ("none", "mean", "zscore", "scale")
MODES = ("hybrid", "sequential")


def tensor_change(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``C_i = mean((before_i - after_i)^2)`` for every name of ``before``.

    The difference is taken in the parameter dtype and its sum of squares accumulated in float64: a float32 sum
    over a tensor of 1.5M elements is off by about 4e-5 relative, which the z-score normalisation amplifies.
    A sharded ``after_i`` (DTensor) pairs with ``before_i`` holding this process's slice: the local sums of squares
    are summed over the shards and divided by the whole tensor's size (a collective: every process calls it)."""
    missing = [n for n in before if n not in after]
    if missing:
        raise KeyError(f"tensor_change: 'after' lacks tensor(s) {missing[:5]}")
    out: dict[str, float] = {}
    groups: dict[tuple, list[str]] = {}
    for n, b in before.items():
        a = after[n]
        if local(a).shape != b.shape:
            raise ValueError(f"tensor_change: tensor {n!r} has shape {tuple(b.shape)} before and {tuple(a.shape)} after")
        groups.setdefault((str(local(a).device), a.dtype), []).append(n)
    with torch.no_grad():
        for names in groups.values():
            dev = local(after[names[0]]).device
            aft = [local(after[n]).detach() for n in names]
            bef = [before[n].detach().to(device=dev, dtype=after[n].dtype) for n in names]
            diff = torch._foreach_sub(aft, bef)
            sq = whole_sums([after[n] for n in names], norms(diff, 2, dtype=torch.float64) ** 2).cpu().tolist()
            for n, s in zip(names, sq):
                out[n] = s / max(after[n].numel(), 1)
    return {n: out[n] for n in before}


def importance(
    ac: Mapping[str, float],
    f_max: float = 1.0,
    normalise: str = "zscore",
    temperature: float = 1.0,
    scale: float = 1e20,
) -> dict[str, float]:
    """``F_i = f_max * softmax_i(normalise(ac)_i / temperature)`` (see the module docstring)."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise: {normalise!r} is not one of {list(NORMALISATIONS)}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    names = list(ac)
    if not names:
        return {}
    x = [float(ac[n]) for n in names]
    n = len(x)
    if normalise == "none":
        z = x
    elif normalise == "mean":
        m = sum(x) / n
        z = [v / m for v in x] if m > 0 else [0.0] * n
    elif normalise == "zscore":
        m = sum(x) / n
        sd = math.sqrt(sum((v - m) ** 2 for v in x) / n)
        z = [(v - m) / sd for v in x] if sd > 0 else [0.0] * n
    else:
        z = [v * scale for v in x]
    z = [v / temperature for v in z]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    s = sum(e)
    return {k: f_max * v / s for k, v in zip(names, e)}


class ChangeTracker:
    """Records ``C`` of every stage, accumulates ``AC`` per kind and derives ``F`` (shared by EWC and freezing)."""

    def __init__(self, f_max=1.0, normalise="zscore", temperature=1.0, scale=1e20, anchor_device="same"):
        importance({"x": 1.0}, f_max, normalise, temperature, scale)  # validates the settings
        if anchor_device not in ("same", "cpu"):
            raise ValueError(f"anchor_device: {anchor_device!r} is not 'same' or 'cpu'")
        self.cfg = {"f_max": float(f_max), "normalise": normalise, "temperature": float(temperature), "scale": float(scale)}
        self.anchor_device = anchor_device
        self.stages: list[dict] = []  # {"index", "name", "kind", "change": {name: C}}
        self.ac: dict[str, dict[str, float]] = {k: {} for k in KINDS}
        self.n_stages = {k: 0 for k in KINDS}
        self.before: Snapshot | None = None
        self.current: dict | None = None
        self._f_cache: dict[str, dict[str, float]] = {}

    # -- stage hooks ---------------------------------------------------------------------------------------------
    def begin(self, model, stage) -> None:
        self.current = stage_record(stage)
        self.before = Snapshot.take(trainable(model), storage=self.anchor_device)

    def end(self, model, stage) -> dict[str, float]:
        if self.before is None:
            raise RuntimeError(f"regularizer: after_stage({stage.name!r}) without before_stage")
        rec = stage_record(stage)
        names = self.before.names
        change = tensor_change(self.before.tensors(), {n: p.detach() for n, p in lookup(model, names).items()})
        self.record(rec, change)
        self.before, self.current = None, None
        return change

    def record(self, rec: dict, change: Mapping[str, float]) -> None:
        kind = rec["kind"]
        self.stages.append({**rec, "change": dict(change)})
        acc = self.ac[kind]
        for n, c in change.items():
            acc[n] = acc.get(n, 0.0) + float(c)
        self.n_stages[kind] += 1
        self._f_cache.pop(kind, None)

    # -- importance ----------------------------------------------------------------------------------------------
    def importance(self, kind: str) -> dict[str, float] | None:
        """``F^kind`` or ``None`` before the first stage of that kind has finished."""
        if self.n_stages[kind] == 0:
            return None
        if kind not in self._f_cache:
            self._f_cache[kind] = importance(self.ac[kind], **self.cfg)
        return self._f_cache[kind]

    def report(self, extra: dict | None = None) -> dict:
        """Per tensor: ``C`` of each stage (by stage name), ``AC^IFA``, ``AC^HPA``, ``F^IFA``, ``F^HPA``."""
        names: list[str] = []
        for s in self.stages:
            names += [n for n in s["change"] if n not in names]
        f = {k: self.importance(k) or {} for k in KINDS}
        tensors = {
            n: {
                "change": {s["name"]: s["change"].get(n) for s in self.stages},
                "ac_ifa": self.ac["ifa"].get(n, 0.0),
                "ac_hpa": self.ac["hpa"].get(n, 0.0),
                "f_ifa": f["ifa"].get(n),
                "f_hpa": f["hpa"].get(n),
            }
            for n in names
        }
        stages = [{k: s[k] for k in ("index", "name", "kind")} for s in self.stages]
        return {"config": {**self.cfg, **(extra or {})}, "stages": stages, "tensors": tensors}

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "cfg": dict(self.cfg),
            "stages": [dict(s, change=dict(s["change"])) for s in self.stages],
            "before": None if self.before is None else self.before.state_dict(),
            "current": None if self.current is None else dict(self.current),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("cfg") != self.cfg:
            warnings.warn(f"regularizer: loading state saved with {state.get('cfg')} into one configured with {self.cfg}")
        self.stages, self.ac, self.n_stages, self._f_cache = [], {k: {} for k in KINDS}, {k: 0 for k in KINDS}, {}
        for s in state["stages"]:
            self.record({k: s[k] for k in ("index", "name", "kind")}, s["change"])
        self.before = None if state["before"] is None else Snapshot.from_state(state["before"])
        self.current = None if state["current"] is None else dict(state["current"])


def recompute_importance(
    stage_checkpoints: Iterable[tuple[str, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]],
    f_max: float = 1.0,
    normalise: str = "zscore",
    temperature: float = 1.0,
    scale: float = 1e20,
    names: Iterable[str] | None = None,
) -> dict:
    """The importance report from checkpoints alone: ``[(kind, before_state_dict, after_state_dict), ...]``.

    Every floating-point tensor of ``before_state_dict`` (or only ``names``) is used, so the tensor names are the
    state-dict keys (with LoRA, those of the saved adapter). Stages are named ``stage-0``, ``stage-1``, ...
    """
    tracker = ChangeTracker(f_max, normalise, temperature, scale)
    for i, (kind, before, after) in enumerate(stage_checkpoints):
        keep = list(names) if names is not None else [k for k, v in before.items() if torch.is_floating_point(v)]
        change = tensor_change({k: before[k] for k in keep}, after)
        tracker.record(stage_record(StageInfo(i, f"stage-{i}", kind)), change)
    return tracker.report()


class ModifiedEWC(PenaltyValue):
    """HBAT's modified EWC; registry name ``modified_ewc`` (``sequential_ewc`` sets ``mode="sequential"``).

    Args:
        lam: penalty weight ``lambda``.
        f_max: total importance ``F_max`` (the ``F_i`` of one kind sum to it, so the mean ``F_i`` is ``F_max / N``
            for ``N`` tracked tensors: tune ``lam * f_max`` with ``N`` in mind; the defaults 1.0 are placeholders).
        normalise, temperature, scale: how ``AC`` becomes ``F`` (module docstring).
        anchor_device: ``"same"`` (anchors next to the weights) or ``"cpu"`` (host memory, one copy per step).
        mode: ``"hybrid"`` or ``"sequential"``; a label only, the switching rule is the same.
    """

    def __init__(self, lam: float = 1.0, f_max: float = 1.0, normalise: str = "zscore", temperature: float = 1.0,
                 scale: float = 1e20, anchor_device: str = "same", mode: str = "hybrid"):
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not one of {list(MODES)}")
        if not lam >= 0:
            raise ValueError(f"lam: must be >= 0, got {lam}")
        self.lam = float(lam)
        self.mode = mode
        self.tracker = ChangeTracker(f_max, normalise, temperature, scale, anchor_device)
        self.anchors: dict[str, Snapshot] = {}
        self._last = None

    # -- stage hooks ---------------------------------------------------------------------------------------------
    def before_stage(self, model, stage) -> None:
        kind = stage_kind(stage)
        self.tracker.begin(model, stage)
        self.anchors.pop(kind, None)  # replaced at after_stage and unused meanwhile

    def after_stage(self, model, stage, data: StageData) -> None:
        """Records ``C`` of the stage and anchors its kind at the current weights (``data`` is not used)."""
        kind = stage_kind(stage)
        names = self.tracker.before.names if self.tracker.before is not None else None
        self.tracker.end(model, stage)
        self.anchors[kind] = Snapshot.take(lookup(model, names), storage=self.tracker.anchor_device)

    # -- penalty -------------------------------------------------------------------------------------------------
    def active(self) -> str | None:
        """The kind whose anchor and importance apply now, or ``None`` (no stage running / no other kind yet)."""
        cur = self.tracker.current
        if cur is None:
            return None
        o = other_kind(cur["kind"])
        return o if o in self.anchors and self.tracker.importance(o) is not None else None

    def _terms(self, model):
        """Yields ``(params, anchors, F)`` per (device, dtype) group of the tensors the penalty covers."""
        o = self.active()
        if o is None:
            return
        f = self.tracker.importance(o)
        groups = self.anchors[o].groups()
        params = lookup(model, [n for names, _ in groups for n in names])
        for names, anchors in groups:
            keep = [i for i, n in enumerate(names) if params[n].requires_grad]
            if keep:
                yield ([params[names[i]] for i in keep], [anchors[i] for i in keep], [f[names[i]] for i in keep])

    def grad_term(self, model) -> None:
        """``grad_i += lambda * F_i^o * (theta_i - theta_i^o)`` (fused); stores the penalty for ``last_penalty``."""
        parts = []
        with torch.no_grad():
            for ps, anchors, f in self._terms(model):
                diff = torch._foreach_sub([local(p).detach() for p in ps], anchors)
                sq = whole_sums(ps, norms(diff, 2) ** 2)
                parts.append(0.5 * self.lam * (sq * torch.tensor(f, dtype=sq.dtype, device=sq.device)).sum())
                torch._foreach_mul_(diff, [self.lam * x for x in f])
                torch._foreach_add_(ensure_grads(ps), diff)
        self._last = lazy_sum(parts)

    def penalty(self, model) -> float:
        """``(lambda/2) * sum_i F_i^o ||theta_i - theta_i^o||^2`` now (0 when no penalty applies)."""
        total = 0.0
        with torch.no_grad():
            for ps, anchors, f in self._terms(model):
                diff = torch._foreach_sub([local(p).detach() for p in ps], anchors)
                sq = whole_sums(ps, norms(diff, 2).double() ** 2).cpu().tolist()
                total += 0.5 * self.lam * sum(fi * s for fi, s in zip(f, sq))
        return total

    def report(self) -> dict:
        """Per tensor: ``C`` of each stage, ``AC^IFA``, ``AC^HPA``, ``F^IFA``, ``F^HPA`` (importance.json)."""
        return self.tracker.report({"lam": self.lam, "mode": self.mode})

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 1,
            "lam": self.lam,
            "tracker": self.tracker.state_dict(),
            "anchors": {k: a.state_dict() for k, a in self.anchors.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("lam") != self.lam:
            warnings.warn(f"modified_ewc: loading state saved with lam={state.get('lam')} into lam={self.lam}")
        self.tracker.load_state_dict(state["tracker"])
        self.anchors = {k: Snapshot.from_state(a) for k, a in state["anchors"].items()}
