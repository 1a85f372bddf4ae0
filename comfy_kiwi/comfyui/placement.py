"""Where model weights live between stages, and moving them for one stage.

Each model has a *home* device chosen when it is loaded: the compute device (GPU when there is
one) or the CPU ("offloaded": kept in RAM, moved to the compute device only while it runs, which
trades speed for VRAM). :func:`on_device` runs one stage on the compute device and sends the model
home afterwards. Inside ComfyUI, ComfyUI is first asked to unload its own models until the weights
fit, and its cache is emptied after a model leaves the GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from . import adapter as comfy_adapter

_WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt")


def module_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer (what moving the module to a device costs)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def weights_bytes(path) -> int:
    """Size on disk of the weight files at ``path`` (a file, or every weight file under a folder)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix.lower() in _WEIGHT_SUFFIXES)


def module_device(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def parse_device(name: str | None, option: str = "--device") -> torch.device:
    """A device name from a command line, checked against this machine: None/"auto" → cuda when
    available, else the CPU. A name torch does not know, or a device this machine or this PyTorch
    build lacks, is an error that says what exists (not torch's assertion deep inside a load)."""
    from ..errors import BackendUnavailableError, InputError
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"{option} {name!r} is not a device name; use cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this PyTorch is a CPU build" if torch.version.cuda is None and torch.version.hip is None
                   else "no CUDA GPU is visible")
            raise BackendUnavailableError(f"{option} {name}: {why} (torch {torch.__version__}); use {option} cpu, "
                                          "or install the PyTorch build for your GPU.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BackendUnavailableError(f"{option} {name}: this machine has {count} CUDA device(s), "
                                          f"cuda:0 … cuda:{count - 1}.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise BackendUnavailableError(f"{option} {name}: Apple's MPS backend is not available here; "
                                          f"use {option} cpu.")
    elif device.type != "cpu":
        raise InputError(f"{option} {name}: {device.type} devices are not supported; use cpu, cuda, cuda:N or mps.")
    return device


def home_device(choice: str, kind: str = "dit") -> torch.device:
    """The device a model is loaded to. ``choice`` "cpu" keeps it in RAM (offloaded); "auto" keeps
    DiT and VAE on the compute device and the MLLM in RAM (it runs once per edit, see DESIGN)."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice != "auto":
        return torch.device(choice)
    compute = comfy_adapter.compute_device()
    return torch.device("cpu") if kind == "mllm" and compute.type != "cpu" else torch.device(compute)


def make_room(nbytes: int, device) -> None:
    """Before putting ``nbytes`` of weights on ``device``: let ComfyUI unload what it holds there."""
    device = torch.device(device)
    if device.type != "cpu":
        comfy_adapter.free_memory(int(nbytes * 1.1), device)


@contextlib.contextmanager
def on_device(module: nn.Module, device=None) -> Iterator[torch.device]:
    """Run a stage with ``module`` on ``device`` (default: the compute device), then move it home."""
    device = torch.device(device) if device is not None else torch.device(comfy_adapter.compute_device())
    home = module_device(module)
    moved = home != device and not (home.type == device.type == "cuda" and device.index is None)
    if moved:
        make_room(module_bytes(module), device)
        module.to(device)
    try:
        yield device if moved else home
    finally:
        if moved:
            module.to(home)
            comfy_adapter.soft_empty_cache()
