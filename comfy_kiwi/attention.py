"""One attention function, several kernels.

``attention(q, k, v, backend=...)`` takes and returns ``[B, L, H, D]`` tensors (the Wan layout).
Backends:

- ``sdpa``     torch.nn.functional.scaled_dot_product_attention (everywhere; on CPU and CUDA it uses
               memory-efficient / flash kernels that never build the full L×L matrix)
- ``xformers`` xformers.ops.memory_efficient_attention (CUDA only)
- ``flash``    flash-attn 2/3 (CUDA only)
- ``sage``     sageattention (CUDA only)
- ``auto``     the first of sage, flash, xformers that can run on the tensors' device, else sdpa

Asking for a backend that cannot run raises :class:`BackendUnavailableError` naming what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

import torch
import torch.nn.functional as F

from .errors import BackendUnavailableError, InputError

BACKENDS = ("auto", "sdpa", "xformers", "flash", "sage")
_PACKAGES = {"xformers": "xformers", "flash": "flash_attn", "sage": "sageattention"}
_INSTALL = {
    "xformers": "pip install xformers (a build matching your torch and CUDA), or pip install -e \".[cuda]\"",
    "flash": "pip install flash-attn --no-build-isolation",
    "sage": "pip install sageattention",
}


@lru_cache(maxsize=None)
def _has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` with what is installed."""
    device = torch.device(device)
    out = ["sdpa"]
    if device.type == "cuda":
        out += [b for b, pkg in _PACKAGES.items() if _has_package(pkg)]
    return out


def check_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """Validate a backend name for a device; return the concrete backend ``auto`` resolves to."""
    if backend not in BACKENDS:
        raise InputError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    device = torch.device(device)
    avail = available_backends(device)
    if backend == "auto":
        for b in ("sage", "flash", "xformers"):
            if b in avail:
                return b
        return "sdpa"
    if backend not in avail:
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"attention backend {backend!r} needs a CUDA GPU, but the model runs on {device}. "
                "Use 'sdpa' or 'auto' on this device.")
        raise BackendUnavailableError(
            f"attention backend {backend!r} is not installed. Install it with: {_INSTALL[backend]}")
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Scaled dot-product attention, non-causal, no mask. q [B,Lq,H,D], k/v [B,Lk,H,D] → [B,Lq,H,D]."""
    if backend == "auto":
        backend = check_backend("auto", q.device)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend == "xformers":
        xops = importlib.import_module("xformers.ops")
        return xops.memory_efficient_attention(q, k, v)
    if backend == "flash":
        fa = importlib.import_module("flash_attn")
        half = q.dtype in (torch.float16, torch.bfloat16)
        dt = q.dtype if half else torch.bfloat16  # flash-attn only runs in 16-bit
        out = fa.flash_attn_func(q.to(dt), k.to(dt), v.to(dt))
        return out.to(q.dtype)
    if backend == "sage":
        sage = importlib.import_module("sageattention")
        return sage.sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    raise InputError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
