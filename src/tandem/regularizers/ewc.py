"""Modified EWC of Hybrid Alignment Training (HBAT): a per-tensor importance from how much each tensor moved.

Training alternates stages of two kinds, ``ifa`` (instruction following, e.g. SFT) and ``hpa`` (human preference,
e.g. DPO). For tensor ``i`` (a trainable parameter, by ``named_parameters()`` name):

- change in a stage:  ``C_i = mean over the elements of tensor i of (theta_before - theta_after)^2``, with
  ``theta_before`` snapshot in ``before_stage`` and ``theta_after`` read in ``after_stage`` (the sum of squares is
  accumulated in float64). With bf16 weights ``theta_after`` is the optimizer's fp32 master (``StageData.weights``):
  a stage's change below bf16's resolution (norm vectors at lr 1e-5) would read as zero on the bf16 weights;
  ``theta_before`` is exact either way, a stage's masters start from its bf16 weights;
- accumulated change per kind:  ``AC_i^IFA = sum of C_i over the IFA stages so far`` (likewise ``AC_i^HPA``);
- importance:  ``F_i = F_max * softmax_i(normalise(AC)_i / temperature)`` across the tensors, with ``normalise``
  one of :data:`tandem.regularizers.importance.NORMALISATIONS` (``none``, ``scale``, ``mean``, ``zscore``, ``log``,
  ``rank``, ``relative``; formulas and degenerate cases in :mod:`tandem.regularizers.importance`). ``relative``
  divides ``AC_i`` by ``M_i``, the mean square of tensor ``i`` at the end of the latest stage of that kind (the
  anchor), which the tracker records next to ``C_i`` for every stage (``magnitude_ifa`` / ``magnitude_hpa`` in
  the report);
- penalty in a stage of kind ``k`` once the other kind ``o`` has finished at least one stage::

      (lambda / 2) * sum_i F_i^o * ||theta_i - theta_i^o||^2

  with ``theta^o`` the weights at the end of the latest stage of kind ``o``. So an HPA stage is pulled towards
  the end of the latest IFA stage with ``F^IFA``, an IFA stage towards the end of the latest HPA stage with
  ``F^HPA``, and the first IFA stage has no penalty. With a sequential schedule (all IFA then all HPA) the same
  rule is sequential EWC: only the second kind is penalised (``mode="sequential"`` records that intent; the rule
  is the same).

  Its gradient, added by :meth:`ModifiedEWC.grad_term`, is ``lambda * F_i^o * (theta_i - theta_i^o)``.

Choice of the default normalisation: ``python benchmarks/importance_normalisation.py`` (synthetic changes),
``benchmarks/importance_real.py`` (SmolLM2-135M after real SFT and DPO stages) and ``benchmarks/ewc_sweep.py``
(lambda x F_max on the CPU testbed); the evidence and the choice are in docs/methods.md. The paper's raw softmax
(``none``) is uniform on real changes (``AC ~ 1e-9``: every softmax input ~0), the authors' ``scale=1e20`` is
one-hot (one tensor takes all of ``F_max`` on a single noisy change).

Memory: during a stage we hold the ``theta_before`` snapshot and the other kind's anchor (two copies of the
trainable weights; the anchor of the stage's own kind is dropped at ``before_stage`` since it is replaced at
``after_stage``). ``anchor_device="cpu"`` keeps both in host memory; then every ``grad_term`` copies the anchor to
the device in one transfer per (device, dtype) group, i.e. one copy of the trainable weights per optimizer step
(negligible for LoRA adapters, about 14 GB per step for a fully trained 7B model in bf16).
"""

from __future__ import annotations

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
from tandem.regularizers.importance import NORMALISATIONS, importance  # noqa: F401 - re-exported

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


def tensor_magnitude(tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``M_i = mean(theta_i^2)`` for every tensor (float64 sums; a sharded tensor's whole mean, a collective)."""
    out: dict[str, float] = {}
    groups: dict[tuple, list[str]] = {}
    for n, t in tensors.items():
        groups.setdefault((str(local(t).device), t.dtype), []).append(n)
    with torch.no_grad():
        for names in groups.values():
            ts = [tensors[n] for n in names]
            sq = whole_sums(ts, norms([local(t).detach() for t in ts], 2, dtype=torch.float64) ** 2).cpu().tolist()
            for n, s in zip(names, sq):
                out[n] = s / max(tensors[n].numel(), 1)
    return {n: out[n] for n in tensors}


class ChangeTracker:
    """Records ``C`` of every stage, accumulates ``AC`` per kind and derives ``F`` (shared by EWC and freezing)."""

    def __init__(self, f_max=1.0, normalise="zscore", temperature=1.0, scale=1e20, anchor_device="same"):
        importance({"x": 1.0}, f_max, normalise, temperature, scale, magnitude={"x": 1.0})  # validates the settings
        if anchor_device not in ("same", "cpu"):
            raise ValueError(f"anchor_device: {anchor_device!r} is not 'same' or 'cpu'")
        self.cfg = {"f_max": float(f_max), "normalise": normalise, "temperature": float(temperature), "scale": float(scale)}
        self.anchor_device = anchor_device
        self.stages: list[dict] = []  # {"index", "name", "kind", "change": {name: C}, "magnitude": {name: M}}
        self.ac: dict[str, dict[str, float]] = {k: {} for k in KINDS}
        self.magnitude: dict[str, dict[str, float]] = {k: {} for k in KINDS}  # M at the end of the latest stage
        self.n_stages = {k: 0 for k in KINDS}
        self.before: Snapshot | None = None
        self.current: dict | None = None
        self._f_cache: dict[str, dict[str, float]] = {}

    # -- stage hooks ---------------------------------------------------------------------------------------------
    def begin(self, model, stage) -> None:
        self.current = stage_record(stage)
        self.before = Snapshot.take(trainable(model), storage=self.anchor_device)

    def end(self, model, stage, weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Records the stage's ``C`` and ``M`` from ``weights`` (the values training holds, e.g. the fp32 masters
        of bf16 weights: :class:`StageData`), else from the model's parameters."""
        if self.before is None:
            raise RuntimeError(f"regularizer: after_stage({stage.name!r}) without before_stage")
        rec = stage_record(stage)
        names = self.before.names
        if weights is None:
            after = {n: p.detach() for n, p in lookup(model, names).items()}
        else:
            missing = [n for n in names if n not in weights]
            if missing:
                raise KeyError(f"regularizer: the stage's trained weights lack tensor(s) {missing[:5]}")
            after = {n: weights[n] for n in names}
        change = tensor_change(self.before.tensors(), after)
        self.record(rec, change, tensor_magnitude(after))
        self.before, self.current = None, None
        return change

    def record(self, rec: dict, change: Mapping[str, float], magnitude: Mapping[str, float] | None = None) -> None:
        """Adds a finished stage: ``C`` per tensor and ``M``, the tensors' mean square at its end (``None``: not
        known, e.g. a state saved before ``M`` was recorded; ``normalise="relative"`` then refuses)."""
        kind = rec["kind"]
        self.stages.append({**rec, "change": dict(change), "magnitude": None if magnitude is None else dict(magnitude)})
        self.magnitude[kind] = {} if magnitude is None else {n: float(m) for n, m in magnitude.items()}
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
            mag = self.magnitude[kind] if self.cfg["normalise"] == "relative" else None
            self._f_cache[kind] = importance(self.ac[kind], **self.cfg, magnitude=mag)
        return self._f_cache[kind]

    def report(self, extra: dict | None = None) -> dict:
        """Per tensor: ``C`` of each stage (by stage name), ``AC^IFA``, ``AC^HPA``, ``F^IFA``, ``F^HPA`` and the
        magnitude ``M`` at the end of the latest stage of each kind (enough to recompute ``F`` for any
        normalisation offline)."""
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
                "magnitude_ifa": self.magnitude["ifa"].get(n),
                "magnitude_hpa": self.magnitude["hpa"].get(n),
            }
            for n in names
        }
        stages = [{k: s[k] for k in ("index", "name", "kind")} for s in self.stages]
        return {"config": {**self.cfg, **(extra or {})}, "stages": stages, "tensors": tensors}

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "cfg": dict(self.cfg),
            "stages": [dict(s, change=dict(s["change"]), magnitude=s["magnitude"] and dict(s["magnitude"]))
                       for s in self.stages],
            "before": None if self.before is None else self.before.state_dict(),
            "current": None if self.current is None else dict(self.current),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("cfg") != self.cfg:
            warnings.warn(f"regularizer: loading state saved with {state.get('cfg')} into one configured with {self.cfg}")
        self.stages, self.ac, self.n_stages, self._f_cache = [], {k: {} for k in KINDS}, {k: 0 for k in KINDS}, {}
        self.magnitude = {k: {} for k in KINDS}
        for s in state["stages"]:
            self.record({k: s[k] for k in ("index", "name", "kind")}, s["change"], s.get("magnitude"))
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
        magnitude = tensor_magnitude({k: after[k] for k in keep})
        tracker.record(stage_record(StageInfo(i, f"stage-{i}", kind)), change, magnitude)
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
        """Records ``C`` of the stage (from ``data.weights``: the fp32 masters of bf16 weights) and anchors its kind
        at the model's current weights (the point the next stages start from)."""
        kind = stage_kind(stage)
        names = self.tracker.before.names if self.tracker.before is not None else None
        self.tracker.end(model, stage, data.weights)
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
