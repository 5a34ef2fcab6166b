"""Shared pieces of the regularizers: the ``Regularizer`` protocol, ``StageData``, trainable-tensor lookup and
weight snapshots.

Conventions used by every regularizer in this package:

- Only trainable tensors (``requires_grad``) are considered, keyed by their ``model.named_parameters()`` name.
  With LoRA these are the adapter tensors only.
- ``grad_term(model)`` runs after ``backward`` and before clipping / the optimizer step. It adds the gradient of
  the penalty to ``.grad`` in place with fused ``torch._foreach_*`` ops (one launch per op per group of tensors that
  share a device and dtype); it builds no autograd graph. A trainable tensor whose ``.grad`` is ``None`` (unused in
  the forward pass) gets a zero gradient first, so the penalty still pulls it.
- ``last_penalty`` (float) is the penalty value of the latest ``grad_term`` call; it is evaluated lazily, so a
  caller that never reads it pays no device synchronisation.
- ``after_stage(model, stage, data)`` gets the stage's :class:`StageData` (only Fisher EWC reads it).
- ``report()`` is the regularizer's per-tensor record (the engine writes it to ``stages/NN/importance.json``), or
  ``None`` when it has none.
- ``state_dict()`` holds only tensors, strings, numbers, lists and dicts, so it loads with
  ``torch.load(..., weights_only=True)``.
- Sharded parameters (FSDP2 ``DTensor``): snapshots hold this process's slice only (memory per process falls with
  the number of processes), elementwise terms are computed on the local slices, and per-tensor sums (``C_i``,
  norms, penalties) are reduced over the shards with ``tandem.distributed.tensors.whole_sums``; nothing is
  gathered. ``state_dict()`` then holds this process's slices (a checkpoint keeps one file per process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, runtime_checkable

import torch

from tandem.distributed.tensors import local

KINDS = ("ifa", "hpa")


@runtime_checkable
class StageLike(Protocol):
    """What a regularizer reads from a stage (``tandem.schedules.stages.Stage`` satisfies it)."""

    index: int
    name: str
    kind: str


@dataclass(frozen=True)
class StageInfo:
    """Minimal stage description: ``kind`` is ``"ifa"`` (instruction following) or ``"hpa"`` (preference)."""

    index: int
    name: str
    kind: str


@dataclass(frozen=True)
class StageData:
    """The data of a finished stage, as a regularizer may need it.

    ``single_batches(n)`` returns up to ``n`` one-example batches in the SFT layout (``input_ids``, ``labels``,
    ``position_ids``, ``seq_ids``; labels on the response: the chosen response for preference data), on the
    model's device, so that ``sequence_logps(model, batch)[0]`` is ``log p(y|x)`` of that example.

    ``weights``: the trainable parameters' values at the end of the stage as training holds them, by name (the
    optimizer's fp32 master weights of bf16 parameters, ``tandem.optim.trained_values``); ``None``: the model's
    parameters are those values. Change tracking reads them: a bf16 weight rounds away a change its master keeps.
    """

    single_batches: Callable[[int], list[dict]]
    weights: Mapping[str, torch.Tensor] | None = None

    @classmethod
    def of(cls, features: list[dict], batch_fn: Callable[[list[dict]], dict],
           weights: Mapping[str, torch.Tensor] | None = None) -> "StageData":
        """From a stage's encoded features (SFT or preference layout), the run's collate-to-device function and
        the trained values of the weights (``weights`` above)."""

        def single_batches(n: int) -> list[dict]:
            single = [{"input_ids": f["input_ids"], "labels": f["labels"]} if "input_ids" in f  # SFT; KTO: no KL pair
                      else {"input_ids": f["chosen_input_ids"], "labels": f["chosen_labels"]} for f in features[:n]]
            return [batch_fn([f]) for f in single]

        return cls(single_batches, weights)


def _no_batches(n: int) -> list[dict]:
    return []


NO_DATA = StageData(_no_batches)  # for regularizers that ignore the data, and for tests


@runtime_checkable
class Regularizer(Protocol):
    """What the engine calls on a regularizer (every class of this package implements all of it)."""

    def before_stage(self, model, stage: StageLike) -> None: ...

    def grad_term(self, model) -> None: ...

    def after_stage(self, model, stage: StageLike, data: StageData) -> None: ...

    @property
    def last_penalty(self) -> float: ...

    def report(self) -> dict | None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def stage_kind(stage: StageLike) -> str:
    kind = stage.kind
    if kind not in KINDS:
        raise ValueError(f"stage {stage.name!r}: field 'kind' is {kind!r}; a regularizer needs 'ifa' or 'hpa'")
    return kind


def other_kind(kind: str) -> str:
    return "hpa" if kind == "ifa" else "ifa"


def stage_record(stage: StageLike) -> dict:
    return {"index": int(stage.index), "name": str(stage.name), "kind": stage_kind(stage)}


def trainable(model) -> dict[str, torch.nn.Parameter]:
    """``name -> parameter`` for the parameters with ``requires_grad``, in ``named_parameters()`` order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def lookup(model, names: Iterable[str]) -> dict[str, torch.nn.Parameter]:
    """Parameters by name; a clear error if the model no longer has one of them."""
    params = dict(model.named_parameters())
    names = list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(
            f"regularizer: the model has no parameter(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            "its state was recorded on a model with different parameter names"
        )
    return {n: params[n] for n in names}


def ensure_grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter (its local slice for a sharded parameter), creating zeros where it is
    ``None``; in-place ops on the result change the gradient."""
    out = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        out.append(local(p.grad))
    return out


class Snapshot:
    """A copy of named tensors, stored as one flat buffer per (device, dtype) group; of a sharded tensor (DTensor)
    only this process's slice is copied, and its views have the slice's shape.

    ``storage="same"`` keeps each buffer on its tensors' device; ``"cpu"`` keeps it in host memory (pinned when
    CUDA is available) and :meth:`groups` copies each buffer to the device in **one** transfer per group per call,
    i.e. one host-to-device copy of the tracked weights per training step when used as an EWC anchor.
    """

    def __init__(self, groups: list[dict]):
        # each group: {"names": [str], "shapes": [[int]], "device": str, "flat": Tensor}
        self._groups = groups
        self._cache: dict[int, torch.Tensor] = {}

    @classmethod
    def take(cls, params: dict[str, torch.Tensor], storage: str = "same", dtype: torch.dtype | None = None) -> "Snapshot":
        if storage not in ("same", "cpu"):
            raise ValueError(f"anchor_device: {storage!r} is not 'same' or 'cpu'")
        params = {n: local(p) for n, p in params.items()}
        by_key: dict[tuple[str, torch.dtype], list[str]] = {}
        for n, p in params.items():
            by_key.setdefault((str(p.device), p.dtype), []).append(n)
        groups = []
        with torch.no_grad():
            for (device, _), names in by_key.items():
                flat = torch.cat([params[n].detach().reshape(-1) for n in names])
                if dtype is not None:
                    flat = flat.to(dtype)
                if storage == "cpu" and flat.device.type != "cpu":
                    host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=torch.cuda.is_available())
                    host.copy_(flat)
                    flat = host
                groups.append({"names": names, "shapes": [list(params[n].shape) for n in names], "device": device, "flat": flat})
        return cls(groups)

    @classmethod
    def zeros_like(cls, params: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> "Snapshot":
        snap = cls.take(params, dtype=dtype)
        for g in snap._groups:
            g["flat"].zero_()
        return snap

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (this process's slices for sharded tensors)."""
        return sum(g["flat"].numel() * g["flat"].element_size() for g in self._groups)

    @property
    def names(self) -> list[str]:
        return [n for g in self._groups for n in g["names"]]

    def groups(self) -> list[tuple[list[str], list[torch.Tensor]]]:
        """``[(names, tensors)]`` per group, the tensors being views on the group's original device."""
        out = []
        for i, g in enumerate(self._groups):
            flat = g["flat"]
            if str(flat.device) != g["device"]:
                if g["device"] != "cpu" and flat.device.type == "cpu" and not flat.is_pinned() and torch.cuda.is_available():
                    flat = g["flat"] = flat.pin_memory()
                flat = flat.to(g["device"], non_blocking=True)
            numels = [int(torch.Size(s).numel()) for s in g["shapes"]]
            views = [v.view(s) for v, s in zip(flat.split(numels), g["shapes"])]
            out.append((g["names"], views))
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: t for names, views in self.groups() for n, t in zip(names, views)}

    def state_dict(self) -> dict:
        return {"groups": [dict(g) for g in self._groups]}

    @classmethod
    def from_state(cls, state: dict) -> "Snapshot":
        return cls([dict(g) for g in state["groups"]])


def norms(tensors: list[torch.Tensor], ord: float = 2, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stacked per-tensor norms (fused), accumulated in ``dtype``; by default float32, or float64 for float64
    tensors."""
    wide = dtype or (torch.float64 if tensors[0].dtype == torch.float64 else torch.float32)
    return torch.stack(torch._foreach_norm(tensors, ord, dtype=wide))


def lazy_sum(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """Sum of 0-d tensors (possibly on several devices) without a host sync; ``None`` for an empty list."""
    if not parts:
        return None
    total = parts[0].detach().to(torch.float64)
    for t in parts[1:]:
        total = total + t.detach().to(device=total.device, dtype=torch.float64)
    return total


class PenaltyValue:
    """Mixin: ``last_penalty`` as a float computed on first read from the tensor stored by ``grad_term``."""

    _last: torch.Tensor | float | None = None

    @property
    def last_penalty(self) -> float:
        v = self._last
        if v is None:
            return 0.0
        if isinstance(v, torch.Tensor):
            v = self._last = float(v)
        return v
