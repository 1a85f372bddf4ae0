"""Flow-matching sigma schedules (rectified flow, x_t = (1-σ)·x0 + σ·ε, velocity = ε - x0).

Inference (Kiwi-Edit / Wan): s = linspace(s_max, σ_min, N+1)[:-1], σ = shift·s / (1 + (shift-1)·s),
timestep t = 1000·σ, and the Euler step goes to σ = 0 after the last step. Two released variants
differ only in σ_min:

- ``kiwi``       σ_min = 0             (the Kiwi-Edit training/benchmark code, diffsynth)
- ``diffusers``  σ_min = 0.003/1.002   (the Kiwi-Edit diffusers pipeline)

``denoise`` < 1 starts part-way: s_max = σ_min + (1 - σ_min)·denoise (as the released code does),
and sampling starts from (1-σ_0)·x_init + σ_0·ε instead of pure noise.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError

SCHEDULES = {"kiwi": 0.0, "diffusers": 0.003 / 1.002}
DEFAULT_SCHEDULE = "kiwi"
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor:
    """The time shift of Wan/SD3: σ = shift·s / (1 + (shift-1)·s)."""
    return shift * s / (1 + (shift - 1) * s)


MAX_STEPS = 1000        # the flow models' 1000 training timesteps; more steps resolve nothing new


def flow_sigmas(steps: int, shift: float = 5.0, schedule: str | float = DEFAULT_SCHEDULE,
                denoise: float = 1.0) -> torch.Tensor:
    """The ``steps`` sigmas of one sampling run, float64, descending. The step after the last goes to 0."""
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}.")
    if not (math.isfinite(shift) and shift > 0):
        raise InputError(f"shift must be a finite number > 0, got {shift!r}.")
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1], got {denoise!r}.")
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        sigma_min = SCHEDULES[schedule]
    else:
        sigma_min = float(schedule)
    s_max = sigma_min + (1.0 - sigma_min) * denoise
    s = torch.linspace(s_max, sigma_min, steps + 1, dtype=torch.float64)[:-1]
    return shift_sigmas(s, shift)


def sigma_to_timestep(sigma, batch: int = 1, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The DiT's timestep for noise level ``sigma``: t = 1000·σ, one rule for every sampler and trainer.

    ``sigma`` is a number (one sampling step: a ``[batch]`` tensor of it is returned) or a tensor of per-sample
    noise levels (training draws: multiplied in its own dtype). Rounding: t is computed in float32 and then
    rounded to ``dtype``, the DiT's compute dtype — exact for fp32 models; for bf16/fp16 models the nearest
    value of that dtype, as the released Kiwi-Edit code feeds its time embedding (t = 950.4 → 952 in bf16)."""
    if torch.is_tensor(sigma):
        t = sigma.float() * NUM_TRAIN_TIMESTEPS
    else:
        t = torch.full((batch,), NUM_TRAIN_TIMESTEPS * float(sigma))
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def training_sigmas(shift: float = 5.0, num: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The 1000-entry schedule training draws from: s = linspace(1, 0, num+1)[:-1], shifted."""
    return shift_sigmas(torch.linspace(1.0, 0.0, num + 1, dtype=torch.float64)[:-1], shift)


def noise_like(shape, seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Seeded Gaussian noise drawn on the CPU in float32 (identical on every machine), then moved."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
