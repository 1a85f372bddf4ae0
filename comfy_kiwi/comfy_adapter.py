"""The one place that talks to ComfyUI, and only when ComfyUI is present.

Everything here degrades to a no-op outside ComfyUI, so the library, the command line and the
trainer run without it. Nothing is imported from ComfyUI at module import time.
"""

from __future__ import annotations

import importlib
import sys


def comfy_present() -> bool:
    """True when running inside ComfyUI (its ``comfy`` package has been imported)."""
    return "comfy.model_management" in sys.modules or "comfy.utils" in sys.modules


def _comfy(module: str):
    if not comfy_present():
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def progress_bar(total: int):
    """ComfyUI's ProgressBar for ``total`` steps, or None outside ComfyUI."""
    utils = _comfy("comfy.utils")
    return utils.ProgressBar(total) if utils is not None else None


def raise_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user cancelled the queue item."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def free_memory(bytes_needed: int, device) -> None:
    """Ask ComfyUI to unload its own models until ``bytes_needed`` are free on ``device``."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.free_memory(bytes_needed, device)


def soft_empty_cache() -> None:
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    else:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def compute_device():
    """ComfyUI's torch device when inside ComfyUI, else CUDA when available, else CPU."""
    import torch
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
