"""How the source video reaches the DiT — the ablation axis of the toy benchmark.

- ``sigma_add`` (Kiwi-Edit release): patch_embedding(x_t) + source_embedder(source) · σ
- ``plain_add``: the same without the σ scale (· 1)
- ``concat`` (VIVA, eq. 2): VIVA's WanDiT source strategy (``source_mode`` "concat"): x_t and the source are
  patch-embedded separately and their tokens concatenated and projected back to the DiT width
  (``source_mixer``; see ``comfy_kiwi/methods/viva_source.py``)
- ``none``: no source latents; the DiT only sees the source through the MLLM context

``sigma_add`` is exactly what ``EditPipeline``/``sample_edit`` run, so a toy model trained with it is a
normal Kiwi model for every loader, node and the command line.
"""

from __future__ import annotations

import torch

from ..errors import InputError

SOURCE_MODES = ("sigma_add", "plain_add", "concat", "none")


def check_source_mode(mode: str) -> str:
    if mode not in SOURCE_MODES:
        raise InputError(f"unknown source mode {mode!r}; choose one of {', '.join(SOURCE_MODES)}.")
    return mode


def prepare_dit(dit, mode: str):
    """Set ``dit`` up for ``mode``: the concat mode attaches VIVA's ``source_mixer``."""
    if check_source_mode(mode) == "concat":
        from ..methods.viva_source import CHANNEL_CONCAT
        dit.attach_source_strategy(CHANNEL_CONCAT)
    return dit


def dit_velocity(dit, x: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                 source: torch.Tensor | None, reference: torch.Tensor | None, mode: str) -> torch.Tensor:
    """One DiT call under a source mode; ``t`` and ``sigma`` are [B]."""
    if mode == "sigma_add":
        return dit(x, t, context, source_latents=source, source_scale=sigma, reference_latents=reference)
    if mode == "plain_add":
        return dit(x, t, context, source_latents=source, source_scale=torch.ones_like(sigma),
                   reference_latents=reference)
    if mode == "concat":
        return dit(x, t, context, source_latents=source, reference_latents=reference)
    if mode == "none":
        return dit(x, t, context, reference_latents=reference)
    raise InputError(f"unknown source mode {mode!r}; choose one of {', '.join(SOURCE_MODES)}.")
