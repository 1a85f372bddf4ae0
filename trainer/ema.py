"""Exponential moving average (EMA) of the trained weights.

``optimizer.ema_decay`` > 0 keeps an fp32 shadow copy of every trainable parameter, updated after each
optimiser step as ``shadow ← d·shadow + (1 − d)·param`` with the warm-up ``d = min(decay, (1+n)/(10+n))``
(n = updates so far), so the average is not dominated by the initial weights in short runs. The shadow is
saved in each checkpoint (``ema.safetensors``, the method's own keys), restored on resume, and is what the
run's final file, ``init_from`` of a later stage and ``trainer export`` use; ``trainable.safetensors`` keeps
the raw weights that resume continues from.

The shadow lives beside the parameters (same device): it costs one fp32 copy of the trainable weights.
"""

from __future__ import annotations

import contextlib

import torch


class WeightEMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, updates: int = 0):
        self.params, self.decay, self.updates = params, decay, updates
        self.shadow = [p.detach().float().clone() for p in params]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def reset_from_params(self) -> None:
        """Take the parameters' current values as the shadow (used when loading a saved EMA)."""
        for s, p in zip(self.shadow, self.params):
            s.copy_(p.detach().float())

    def state(self, method, module) -> dict[str, torch.Tensor]:
        """The EMA weights under the method's trainable keys (CPU copies)."""
        with self.swapped_in():
            return {k: v.detach().cpu().clone() for k, v in method.trainable_state_dict(module).items()}

    @contextlib.contextmanager
    def swapped_in(self):
        """The shadow weights in the parameters for the duration of the block (the raw ones restored after)."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for r, p in zip(raw, self.params):
                    p.copy_(r)
