"""InstructX: the one entry point of its nodes, command line and trainer evaluation.

InstructX is Kiwi-Edit's model family with another MLLM setting and long videos:

- loading: a release folder as Kiwi-Edit's (``kiwi_edit.load``); the MLLM encoder under the ``INSTRUCTX`` preset
  (``comfy_kiwi/mllm/config.py``: no reference queries or connector, 13 MLLM frames; a reference image joins the
  MLLM prompt after the source video and the video queries read both) — ``load``. The nodes and ``edit`` load with
  Kiwi-Edit's loaders: the release's ``mllm_encoder/config.json`` over Kiwi-Edit's defaults. The trainer's export of
  an InstructX run records ``"reference_without_branch": "video"`` there, so those loaders give the same encoder
  and take a reference; ``load`` also reads a file without the key (an older export) as InstructX;
- encoding: ``kiwi_edit.encode`` (the encoder's preset decides where a reference goes);
- sampling: Kiwi-Edit's sampler (``kiwi_edit.sample``: σ-scaled source, reference latents as tokens) on each
  window of ``edit`` below — the one sampling entry point of the Kiwi Long Video Edit node and
  ``python -m comfy_kiwi edit --window``; training is the trainer's ``kiwi`` method with
  ``model.mllm_preset = "instructx"`` (presets ``instructx-align/full/quality``), whose evaluation samples one
  window through ``kiwi_edit.sample``.

Long videos: edit a video longer than the model's window in overlapping windows.

Windows. ``window`` = 4k+1 frames (81 for Wan: 21 latent frames). Consecutive windows overlap by
exactly one frame: window j covers prepared source frames ``[j·(window−1), j·(window−1) + window)``.
With a prepared length of N = 4m+1 frames the remainder after the full windows is a multiple of 4,
so the last window is itself 4k+1 frames long (shorter than ``window`` when the video does not
divide evenly) and the windows tile the video exactly.

Hand-over. The last edited frame of window j becomes the *first source frame* of window j+1: it
replaces that (shared) source frame before the VAE encodes the window's source, so the DiT sees the
already-edited look at the boundary and continues it. The MLLM still encodes the window's original
source frames (the instruction describes a change of the original). In the output, the shared frame
is the one edited by window j (window j+1's re-edit of it is dropped), so the result has exactly N
frames: all of window 0, then frames 1… of every later window.

Each window is sampled with the same ``settings`` (and seed), so the noise pattern is consistent
across windows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from ..mllm.config import INSTRUCTX
from ..pipeline import EditPipeline, EditSettings
from . import kiwi_edit

PRESET = INSTRUCTX


def load(folder, dtype: torch.dtype | None = torch.bfloat16, device=None, attention: str = "auto",
         dit_device=None, offload: bool | None = None) -> EditPipeline:
    """An InstructX release folder: ``kiwi_edit.load`` with the MLLM encoder under the InstructX preset (the
    release's ``mllm_encoder/config.json`` values over it)."""
    return kiwi_edit.load(folder, dtype=dtype, device=device, attention=attention, dit_device=dit_device,
                          offload=offload, mllm_preset=PRESET)


def window_starts(num_frames: int, window: int) -> list[tuple[int, int]]:
    """``[(start, length), …]`` of the windows over ``num_frames`` (4m+1) frames."""
    if not isinstance(window, int) or window < 5 or (window - 1) % 4:
        raise InputError(f"window must be 4k+1 frames with k ≥ 1 (5, 9, …, 81), got {window!r}.")
    if num_frames < 1 or (num_frames - 1) % 4:
        raise InputError(f"the video must have 4k+1 frames after preparation, got {num_frames}.")
    if num_frames <= window:
        return [(0, num_frames)]
    out, start = [], 0
    while start < num_frames - 1:
        length = min(window, num_frames - start)
        out.append((start, length))
        start += length - 1
    return out


def edit(pipeline, frames: torch.Tensor, instruction: str, reference=None, settings: EditSettings | None = None,
         window: int = 81, on_window: Callable[[int, int, int], None] | None = None) -> torch.Tensor:
    """Edit ``frames`` [F, H, W, 3] (0..1) window by window; returns the edited frames [N, H, W, 3].

    ``settings.num_frames`` limits how many source frames are used (None = all); frames are prepared
    once for the whole video (size, 4k+1 count). ``on_window(index, start, length)`` reports progress.
    """
    s = settings or EditSettings()
    prepared = pipeline.prepare(frames, s)
    spans = window_starts(prepared.shape[0], window)
    edited: list[torch.Tensor] = []
    handover = None                                   # last edited frame of the previous window
    for j, (start, length) in enumerate(spans):
        if on_window is not None:
            on_window(j, start, length)
        original = prepared[start:start + length]
        source_frames = original if handover is None else torch.cat([handover[None].to(original), original[1:]])
        cond = pipeline.encode_instruction(instruction, original, reference, with_negative=s.cfg != 1.0)
        source = pipeline.encode_source(source_frames, reference, tiled=s.vae_tiled)
        latents = kiwi_edit.sample(pipeline.dit, cond, source, s, device=pipeline.device)
        out = pipeline.decode(latents, tiled=s.vae_tiled)
        if out.shape[0] != length:
            raise InputError(f"window {j} decoded to {out.shape[0]} frames instead of {length}; the VAE and "
                             "window length do not fit (windows must be 4k+1 frames).")
        edited.append(out if handover is None else out[1:])
        handover = out[-1]
    return torch.cat(edited)
