"""Dtype names shared by the command lines, the trainer's configs and the nodes."""

from __future__ import annotations

import torch

from .errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp8_e4m3fn": torch.float8_e4m3fn}
COMPUTE_DTYPES = ("bf16", "fp16", "fp32")      # what a model can compute in (fp8 is storage only)


def default_dtype(device) -> torch.dtype:
    """fp32 on the CPU; bf16 on GPUs that support it, else fp16."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def parse_dtype(name: str | None, device=None) -> torch.dtype | None:
    """A dtype name → torch dtype. ``None``/"auto" → ``default_dtype(device)``, or None without a device."""
    if name in (None, "auto"):
        return None if device is None else default_dtype(device)
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}.")
    return DTYPES[name]
