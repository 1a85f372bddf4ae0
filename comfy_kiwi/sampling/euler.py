"""The flow-matching Euler sampler: x ← x + v·(σ_next − σ), σ_next = 0 after the last step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from ..progress import Progress

# velocity_fn(x, sigma, step_index) -> velocity with x's shape
VelocityFn = Callable[[torch.Tensor, float, int], torch.Tensor]


def start_latents(noise: torch.Tensor, sigma0: float, init: torch.Tensor | None = None) -> torch.Tensor:
    """The latents sampling starts from: pure noise, or (1-σ0)·init + σ0·noise when denoising part-way."""
    if init is None:
        return noise
    if init.shape != noise.shape:
        raise InputError(f"initial latents have shape {tuple(init.shape)} but the noise has "
                         f"{tuple(noise.shape)}; they must match.")
    return ((1 - sigma0) * init.float() + sigma0 * noise.float()).to(noise.dtype)


def sample_euler(velocity_fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, *,
                 progress: bool = True, desc: str = "sampling",
                 on_step: Callable[[int, torch.Tensor], None] | None = None, step_cache=None) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` down to 0. The update runs in ``x``'s dtype, as the release does.

    ``step_cache`` (``sampling.step_cache.StepCache`` attached to the DiT, or None) is told where each
    step stands, so it never skips the first or the last one."""
    sig = [float(s) for s in sigmas] + [0.0]
    with torch.no_grad(), Progress(len(sig) - 1, desc, enabled=progress) as bar:
        for i in range(len(sig) - 1):
            if step_cache is not None:
                step_cache.begin_step(i, len(sig) - 1)
            v = velocity_fn(x, sig[i], i)
            if v.shape != x.shape:
                raise InputError(f"the model returned shape {tuple(v.shape)} for latents {tuple(x.shape)}.")
            x = x + v.to(x.dtype) * (sig[i + 1] - sig[i])
            if on_step is not None:
                on_step(i, x)
            bar.step()
    return x
