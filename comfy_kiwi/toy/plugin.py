"""The toy world's entry in the folder-kind registry (``comfy_kiwi/loading/registry.py``): how a toy
model folder is recognised, loaded and described, its codec "VAE" folder, the embedded default model
``python -m comfy_kiwi edit`` runs without --model, snapping lossy toy-video frames back onto the
palette, the toy judge's scores for a toy video with a sidecar, and the ``toy-data`` / ``toy-init``
verbs. Imported by the registry on first use; nothing on the real paths names the toy world."""

from __future__ import annotations

from pathlib import Path

import torch

from ..loading.registry import EditHooks, FolderKind, register
from .codec import is_codec_folder, load_codec
from .command import add_toy_data_parser
from .release import DEFAULT_MODEL_DIR, describe_toy_release, is_toy_release, load_toy_pipeline


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


TOY_KIND = register(FolderKind(
    name="kiwi-toy",
    is_model_folder=is_toy_release,
    load_pipeline=load_pipeline,
    describe=describe_toy_release,
    is_vae_folder=is_codec_folder,
    load_vae=load_codec,
    default_model=DEFAULT_MODEL_DIR,
    edit=EditHooks(check_default_input=check_default_model_input, prepare_frames=prepare_frames,
                   report=judge_report),
    add_verbs=add_toy_data_parser,
))
