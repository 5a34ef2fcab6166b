"""In-memory weight interpolation with fused multi-tensor ops.

**Convention** (the same in all of :mod:`tandem.merging`)::

    theta = (1 - alpha) * theta_0 + alpha * theta_1          per tensor

``theta_0`` = weights *before* preference training, ``theta_1`` = weights *after*. ``alpha = 1`` gives the
tuned model, ``alpha = 0`` the starting model. Other tools (and some papers) weight the *starting* model by
alpha; convert with ``alpha_here = 1 - alpha_there``.

A :class:`Merger` holds ``theta_0`` and ``theta_1`` once (same dtype, on CPU or on the model's device) and
writes a merge into an existing model in place, so one model object is reused for every candidate
(no reload from disk). Tensors that share an alpha are merged with one ``torch._foreach_lerp_`` call
(``torch.lerp`` returns ``theta_0`` exactly at alpha 0 and ``theta_1`` exactly at alpha 1).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch
from torch import nn

from tandem.merging.groups import check_alphas

Alphas = float | Mapping[str, float]


def merge_names(model: nn.Module) -> list[str]:
    """Names of the tensors that get merged: floating-point parameters, each tied tensor once
    (``named_parameters`` lists a tied LM head under the embedding's name only)."""
    return [n for n, p in model.named_parameters() if p.is_floating_point()]


class Merger:
    """Holds ``theta_0`` / ``theta_1`` and merges them into a model in place.

    Args:
        theta0, theta1: state dicts (``name -> tensor``) with at least the names to merge; extra keys
            (e.g. a tied ``lm_head.weight`` alias, buffers) are ignored.
        names: tensors to merge; default: every floating-point tensor of ``theta1`` (all must be in ``theta0``).
        device, dtype: where/how to store the two copies. Store them on the model's device with the model's
            dtype for the fast path; otherwise each merge also copies/casts.
        clone: copy the tensors (default). Pass ``False`` only when neither dict aliases the tensors of the
            model you merge into (``merge_into`` overwrites the model's parameters).
    """

    def __init__(
        self,
        theta0: Mapping[str, torch.Tensor],
        theta1: Mapping[str, torch.Tensor],
        names: list[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        clone: bool = True,
    ):
        if names is None:
            names = [n for n, t in theta1.items() if t.is_floating_point()]
        missing0 = [n for n in names if n not in theta0]
        missing1 = [n for n in names if n not in theta1]
        if missing0 or missing1:
            raise KeyError(
                "tensors missing: "
                + (f"theta0 lacks {missing0[:5]}{'…' if len(missing0) > 5 else ''} " if missing0 else "")
                + (f"theta1 lacks {missing1[:5]}{'…' if len(missing1) > 5 else ''}" if missing1 else "")
            )
        bad = [(n, tuple(theta0[n].shape), tuple(theta1[n].shape)) for n in names if theta0[n].shape != theta1[n].shape]
        if bad:
            raise ValueError(f"theta0 and theta1 differ in shape: {bad[:3]} (name, theta0 shape, theta1 shape)")
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}

        def prep(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            out = t.to(device=device if device is not None else t.device, dtype=dtype or t.dtype)
            return out.clone() if (clone and out.data_ptr() == t.data_ptr()) else out

        self.theta0 = [prep(theta0[n]) for n in self.names]
        self.theta1 = [prep(theta1[n]) for n in self.names]
        dt0 = {t.dtype for t in self.theta0}
        dt1 = {t.dtype for t in self.theta1}
        if dtype is None and dt0 != dt1:
            raise ValueError(f"theta0 dtypes {dt0} differ from theta1 dtypes {dt1}; pass dtype= to cast both")

    @classmethod
    def from_models(cls, model0: nn.Module, model1: nn.Module, **kw) -> "Merger":
        """Snapshot two models with the same architecture (tensors are cloned)."""
        names = merge_names(model1)
        p0, p1 = dict(model0.named_parameters()), dict(model1.named_parameters())
        return cls(p0, p1, names=names, **kw)

    @property
    def nbytes(self) -> int:
        """Bytes of one model's merged tensors (the 'weights processed' per merge)."""
        return sum(t.numel() * t.element_size() for t in self.theta1)

    def _alpha_list(self, alphas: Alphas) -> list[float]:
        """One finite alpha per merged tensor (``ValueError`` naming a NaN/inf value and its tensor)."""
        if isinstance(alphas, (int, float)):
            return check_alphas([alphas], "alpha") * len(self.names)
        missing = [n for n in self.names if n not in alphas]
        if missing:
            raise KeyError(f"alphas has no value for {len(missing)} tensors, e.g. {missing[:5]}")
        return [check_alphas([alphas[n]], f"alpha of {n}")[0] for n in self.names]

    def _buckets(self, alphas: Alphas) -> dict[float, list[int]]:
        buckets: dict[float, list[int]] = defaultdict(list)
        for i, a in enumerate(self._alpha_list(alphas)):
            buckets[a].append(i)
        return buckets

    @torch.no_grad()
    def merge_into(self, model: nn.Module, alphas: Alphas) -> nn.Module:
        """Write ``(1 - a) * theta_0 + a * theta_1`` into ``model``'s parameters in place.

        ``alphas``: one float (global, Wise-FT style) or ``{name: alpha}`` for every merged tensor
        (see :func:`tandem.merging.groups.tensor_alphas`). Returns ``model``.
        """
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"model has no parameters {missing[:5]} (architecture differs from the merger's)")
        for a, idx in self._buckets(alphas).items():
            dst = [params[self.names[i]] for i in idx]
            t0 = [self.theta0[i] for i in idx]
            t1 = [self.theta1[i] for i in idx]
            fast = all(d.dtype == s.dtype and d.device == s.device for d, s in zip(dst, t0))
            if fast:
                torch._foreach_copy_(dst, t0)
                torch._foreach_lerp_(dst, t1, a)
            else:
                torch._foreach_copy_(dst, torch._foreach_lerp(t0, t1, a))
        return model

    @torch.no_grad()
    def merged_state_dict(self, alphas: Alphas) -> dict[str, torch.Tensor]:
        """The merged tensors as a new state dict (same dtype/device as the stored copies)."""
        out: list[torch.Tensor | None] = [None] * len(self.names)
        for a, idx in self._buckets(alphas).items():
            res = torch._foreach_lerp([self.theta0[i] for i in idx], [self.theta1[i] for i in idx], a)
            for i, r in zip(idx, res):
                out[i] = r
        return dict(zip(self.names, out))  # type: ignore[arg-type]


def merge_into(model: nn.Module, merger: Merger, alphas: Alphas) -> nn.Module:
    """Function form of :meth:`Merger.merge_into`."""
    return merger.merge_into(model, alphas)
