"""AdamW on fp32 master copies of low-precision (bf16/fp16) parameters.

The model computes with its bf16 weights; the optimizer keeps an fp32 copy of each of them (the master weights)
and fp32 state (``exp_avg``, ``exp_avg_sq``). A step copies the bf16 gradients into fp32 buffers (allocated for the
step only, so they never add to the backward pass's peak memory), runs torch's AdamW on the masters (``fused`` on
CPU/CUDA, else ``foreach``: no per-tensor Python arithmetic), then copies the masters back into the bf16 weights. Both copies are ``torch._foreach_copy_`` calls. So an update
smaller than bf16's resolution (8 bits of mantissa: lr 1e-6 on a weight of 0.02) accumulates in the master and
reaches the bf16 weight once it is large enough; a plain bf16 AdamW would round it away at every step.

fp32 parameters in the same list are their own masters (no copy). ``state_dict`` carries the masters, so a resumed
run continues from the same fp32 values (the checkpoint's weights are their bf16 rounding).
"""

from __future__ import annotations

import torch

__all__ = ["MasterAdamW", "is_low_precision", "trained_values"]

LOW = (torch.bfloat16, torch.float16)


def is_low_precision(p: torch.Tensor) -> bool:
    return p.dtype in LOW


class MasterAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (fused) over fp32 masters of ``params``; ``step`` writes them back (module docstring)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.model_params: list[torch.nn.Parameter] = list(params)
        self._low = [p for p in self.model_params if is_low_precision(p)]
        with torch.no_grad():
            self._masters = [p.detach().to(torch.float32, copy=True) for p in self._low]
        it = iter(self._masters)
        masters = [next(it) if is_low_precision(p) else p for p in self.model_params]
        from tandem.optim.kernels import kernel

        super().__init__(masters, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kernel(self.model_params))

    @torch.no_grad()
    def step(self, closure=None):
        have = [i for i, p in enumerate(self._low) if p.grad is not None]
        for i in have:  # fp32 gradient buffers for this step only: they do not add to the backward's peak memory
            self._masters[i].grad = torch.empty_like(self._masters[i])
        if have:
            torch._foreach_copy_([self._masters[i].grad for i in have], [self._low[i].grad for i in have])
        loss = super().step(closure)
        for i in have:
            self._masters[i].grad = None
        if have:
            torch._foreach_copy_([self._low[i] for i in have], [self._masters[i] for i in have])
        return loss

    def master_of(self) -> dict[int, torch.Tensor]:
        """``id(parameter) -> its fp32 master`` for the low-precision parameters (the values training holds)."""
        return {id(p): m for p, m in zip(self._low, self._masters)}

    def zero_grad(self, set_to_none: bool = True) -> None:
        grads = [p.grad for p in self.model_params if p.grad is not None]
        if set_to_none:
            for p in self.model_params:
                p.grad = None
        elif grads:
            torch._foreach_zero_(grads)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "master_weights": [m.clone() for m in self._masters]}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        masters = state_dict.pop("master_weights", None)
        super().load_state_dict(state_dict)
        with torch.no_grad():
            if masters is not None and len(masters) == len(self._masters):
                torch._foreach_copy_(self._masters, [m.to(torch.float32) for m in masters])
            else:  # a checkpoint without masters (e.g. written by a plain AdamW): start them from the weights
                torch._foreach_copy_(self._masters, self._low)


def trained_values(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``name -> value`` of every trainable parameter as training holds it: the fp32 master of a bf16/fp16 parameter
    that ``optimizer`` keeps one for (a change below bf16's resolution is there, not in the weight), else the
    parameter itself. Detached; the masters are the optimizer's own tensors (read, do not write)."""
    masters = optimizer.master_of() if isinstance(optimizer, MasterAdamW) else {}
    return {n: masters.get(id(p), p).detach() for n, p in model.named_parameters() if p.requires_grad}
