"""Training checkpoints: written into a temporary folder and renamed into place, so a killed run never
leaves a half-written checkpoint; ``latest`` names the newest complete one.

A checkpoint folder ``checkpoints/step-00000010/`` holds ``trainable.safetensors`` (only the trained
weights, the method's own keys), ``ema.safetensors`` (the EMA of those weights, when ``optimizer.ema_decay``
is set; trainer/ema.py), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (torch / Python /
NumPy states of the main process) and ``state.json`` (step, data position, config name). ``.pt`` files
hold tensors and plain containers only and are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from comfy_kiwi.errors import CheckpointError

LATEST = "latest"


def rng_states() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_states(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((s["python_version"], tuple(s["python"]), s["python_gauss"]))
    np.random.set_state((s["numpy"][0], s["numpy"][1].numpy().astype(np.uint32), *s["numpy"][2:]))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(output_dir, step: int, trainable: dict, optimizer, scheduler, state: dict,
                    keep: int = 0, ema: dict | None = None) -> Path:
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, tensors in (("trainable", trainable), ("ema", ema)):
        if tensors is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_states(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / LATEST, final.name)
    if keep:
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(output_dir, resume: str | None) -> Path | None:
    """``resume``: None (fresh start), "auto" (the latest checkpoint, or none), or a checkpoint folder."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / "state.json").is_file():
            raise CheckpointError(f"--resume {path}: not a checkpoint folder (no state.json).")
        return path
    root = Path(output_dir) / "checkpoints"
    if (root / LATEST).is_file():
        path = root / (root / LATEST).read_text().strip()
        if (path / "state.json").is_file():
            return path
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def load_checkpoint(path) -> dict:
    path = Path(path)
    try:
        ema = path / "ema.safetensors"
        return {"trainable": load_file(str(path / "trainable.safetensors")),
                "ema": load_file(str(ema)) if ema.is_file() else None,
                "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
                "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
                "rng": torch.load(path / "rng.pt", weights_only=True),
                "state": json.loads((path / "state.json").read_text())}
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is incomplete or unreadable: {e}") from None


def load_init_state(path) -> dict:
    """Trainable weights to start from (``checkpoint.init_from``) or to export: a final ``<method>.safetensors``,
    a checkpoint folder (its ``ema.safetensors`` when the run kept an EMA, else ``trainable.safetensors``) or a
    run folder (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = find_checkpoint(path, "auto") if (path / "checkpoints").is_dir() else path
        if found is None or not (found / "trainable.safetensors").is_file():
            raise CheckpointError(f"checkpoint.init_from {path}: no trainable.safetensors (expected a checkpoint "
                                  "folder, a run folder with checkpoints/, or a .safetensors file).")
        path = found / "ema.safetensors" if (found / "ema.safetensors").is_file() else found / "trainable.safetensors"
    try:
        return load_file(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint.init_from {path}: not a readable safetensors file ({e}).") from None
