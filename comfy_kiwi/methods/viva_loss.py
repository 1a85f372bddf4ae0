"""VIVA's masked flow-matching loss: up-weight the edited region.

    L_mask = mean over (b, c, f, h, w) of (1 + w_m · M) · (v_θ − (ε − x0))²

``M`` ∈ [0, 1] marks the edited region (1 = edited). With M = 0 this is the plain flow-matching
MSE. ``M`` may come at three sizes and is brought onto the latent grid:

- ``[B, 1, F, H, W]`` or ``[B, F, H, W]`` at latent size: used as is;
- at pixel size (Wan VAE: 4k+1 frames → k+1 latent frames, H and W integer multiples of the
  latent size): frames are grouped like the causal VAE groups them (frame 0 alone, then groups of
  4) and space is pooled by the integer factor.

Pooling is ``max`` by default (chosen here): a latent cell touched by any edited pixel counts as
edited, so thin or small edits are not diluted away; ``avg`` gives soft coverage weights.

``w_m``: the VIVA paper introduces the weight without a value we could confirm; the default
``DEFAULT_W_M = 1.0`` (edited region weighted 2×) is our choice — set it from the paper/preset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

DEFAULT_W_M = 1.0
POOLS = ("max", "avg")


def mask_to_latent_grid(mask: torch.Tensor, latent_shape, pool: str = "max",
                        temporal_stride: int = 4) -> torch.Tensor:
    """A mask [B, 1|-, F', H', W'] (latent or pixel size) → [B, 1, F, H, W] float on the latent grid."""
    if pool not in POOLS:
        raise InputError(f"mask pool must be one of {', '.join(POOLS)}, got {pool!r}.")
    b, _, f, h, w = latent_shape
    m = mask.unsqueeze(1) if mask.ndim == 4 else mask
    if m.ndim != 5 or m.shape[1] != 1 or m.shape[0] not in (1, b):
        raise InputError(f"edit mask must be [B, 1, F, H, W] or [B, F, H, W] with B = {b} (or 1), "
                         f"got {tuple(mask.shape)}.")
    m = m.float()
    if bool((m < 0).any()) or bool((m > 1).any()):
        raise InputError("edit mask values must lie in [0, 1] (1 = edited region).")
    mf, mh, mw = m.shape[2:]
    reduce = torch.amax if pool == "max" else torch.mean
    if mf != f:
        if mf != temporal_stride * (f - 1) + 1:
            raise InputError(f"edit mask has {mf} frames; the latents have {f}: give {f} (latent) or "
                             f"{temporal_stride * (f - 1) + 1} (pixel frames, {temporal_stride}k+1).")
        first, rest = m[:, :, :1], m[:, :, 1:]                      # causal VAE: frame 0 alone, then groups
        rest = reduce(rest.unflatten(2, (f - 1, temporal_stride)), dim=3) if f > 1 else rest[:, :, :0]
        m = torch.cat([first, rest], dim=2)
    if (mh, mw) != (h, w):
        if mh % h or mw % w or mh // h != mw // w:
            raise InputError(f"edit mask size {mh}×{mw} is neither the latent size {h}×{w} nor an integer "
                             "multiple of it (same factor on both axes).")
        k = (1, mh // h, mw // w)
        m = F.max_pool3d(m, k) if pool == "max" else F.avg_pool3d(m, k)
    return m.expand(b, -1, -1, -1, -1)


def masked_flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                              w_m: float = DEFAULT_W_M, pool: str = "max",
                              sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss: mean of (1 + w_m·M)·(pred − target)² over every element of [B, C, F, H, W].

    ``sample_weight`` [B] (e.g. Kiwi's timestep weighting) multiplies each sample's mean before
    the batch mean.
    """
    if pred.shape != target.shape:
        raise InputError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    if pred.ndim != 5:
        raise InputError(f"the masked loss takes video latents [B, C, F, H, W], got {tuple(pred.shape)}.")
    if w_m < 0:
        raise InputError(f"w_m must be ≥ 0 (it up-weights the edited region), got {w_m}.")
    err = (pred.float() - target.float()).pow(2)
    if mask is not None:
        err = err * (1 + w_m * mask_to_latent_grid(mask.to(err.device), pred.shape, pool))
    per_sample = err.flatten(1).mean(1)                                          # [B]
    if sample_weight is not None:
        sw = torch.as_tensor(sample_weight, dtype=per_sample.dtype, device=per_sample.device).reshape(-1)
        if sw.numel() not in (1, per_sample.numel()):
            raise InputError(f"sample_weight must be a number or [B] = [{per_sample.numel()}], got {tuple(sw.shape)}.")
        per_sample = per_sample * sw
    return per_sample.mean()
