"""What ``python -m comfy_kiwi edit`` does differently for the toy model (kept here, so the edit
command stays one path): which folder is the toy model, loading it, snapping lossy toy-video frames
back onto the palette, and the toy judge's scores when the video is a toy video with a sidecar."""

from __future__ import annotations

from pathlib import Path

import torch

from .release import DEFAULT_MODEL_DIR, is_toy_release, load_toy_pipeline


def toy_model_folder(model) -> Path | None:
    """The toy model to use: the embedded default when ``--model`` is absent, the given folder when it
    is a toy model, else None (a real Kiwi-Edit release)."""
    if model is None:
        return DEFAULT_MODEL_DIR
    path = Path(model).expanduser()
    return path if is_toy_release(path) else None


def load_pipeline(folder: Path, device, dtype):
    return load_toy_pipeline(folder, device=device, dtype=dtype)


def prepare_frames(frames: torch.Tensor) -> torch.Tensor:
    from .examples import snap_to_palette
    return snap_to_palette(frames)


def judge_report(video, instruction: str, references, edited: torch.Tensor) -> dict:
    """``{"toy_judge": scores}`` for a toy video with a sidecar (``{}`` otherwise, or when the
    instruction is not one of the toy templates: then ``{"toy_judge_skipped": reason}``)."""
    from ..errors import InputError
    from .examples import judge_file_edit
    try:
        scores = judge_file_edit(video, instruction, edited, references)
    except InputError as e:
        return {"toy_judge_skipped": str(e)}
    return {} if scores is None else {"toy_judge": {k: round(v, 4) for k, v in scores.items()}}
