"""Loss scaling for fp16 training, with the unscale where tandem needs it.

fp16 gradients underflow without a scaled loss, so ``backward`` runs on ``scale * loss``. Everything that reads
the gradients must see them unscaled: the regularizer's gradient term (EWC/anchor/Fisher add ``lam * F * (theta -
theta*)`` to ``.grad``, which must not be divided by the scale afterwards) and gradient clipping (the threshold is in
true gradient units). So a step is

    loss -> scaling.scale(loss) -> backward -> scaling.unscale_(optimizer) -> regularizer term, clipping
         -> scaling.step(optimizer)        # skipped when a gradient is inf/NaN, then the scale is updated

``GradScaling(enabled=False)`` (every precision but fp16) makes each call the identity or a plain ``step``.
Built on ``torch.amp.GradScaler`` (CPU and CUDA).
"""

from __future__ import annotations

import torch

__all__ = ["GradScaling"]


class GradScaling:
    def __init__(self, enabled: bool = False, device: str = "cpu", init_scale: float = 2.0**16):
        self.enabled = enabled
        self.scaler = torch.amp.GradScaler(device, init_scale=init_scale, enabled=enabled)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.enabled else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the scale (once per step; later calls are no-ops)."""
        if self.enabled and not self._unscaled(optimizer):
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (skipped when the unscaled gradients hold an inf/NaN), then the scale update."""
        if not self.enabled:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def _unscaled(self, optimizer) -> bool:
        from torch.amp.grad_scaler import OptState

        return self.scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.UNSCALED

    def get_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.enabled else 1.0

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.enabled else {}

    def load_state_dict(self, state: dict) -> None:
        if self.enabled and state:
            self.scaler.load_state_dict(state)
