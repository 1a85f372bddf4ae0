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


def check_default_model_input(frames: torch.Tensor, video) -> None:
    """Without ``--model`` the toy model runs; it edits only toy-world videos (32×32 frames). Any other
    video gets one line saying so and how to pass a real release, not an error from deep inside."""
    from ..errors import InputError
    from .world import FRAME_SIZE
    height, width = int(frames.shape[1]), int(frames.shape[2])
    if (height, width) != (FRAME_SIZE, FRAME_SIZE):
        raise InputError(f"no --model given, so the built-in toy model would edit {video}, but it only edits "
                         f"toy-world videos ({FRAME_SIZE}×{FRAME_SIZE} px, e.g. "
                         "comfy_kiwi/toy/examples/toy_scene.mp4) "
                         f"and this one is {width}×{height}; pass a Kiwi-Edit release folder, e.g. "
                         "--model /models/kiwi/kiwi-edit-5b-instruct-reference-diffusers.")


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
