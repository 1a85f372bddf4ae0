"""Filling a hole in an image from the colours around it (background references).

Two built-in fills, both deterministic, pure torch, and exact outside the hole (the result is
composited so every pixel outside the hole is the input's own value):

``pyramid`` (push-pull)
    Push: halve the image repeatedly with weighted averages (weights = known pixels), until every
    coarse cell has some known colour. Pull: from the coarsest level back down, each level's known
    average is blended with the bilinearly upsampled coarser result in proportion to how much of the
    cell is known. Holes get smooth colours spreading inward from their border, in O(pixels).
``diffuse``
    The pyramid fill refined by ``iterations`` Jacobi sweeps of the discrete Laplace equation inside
    the hole (each hole pixel becomes the mean of its 4 neighbours, known pixels fixed): the harmonic
    interpolation of the border colours, smoother and free of block structure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["FILL_METHODS", "pyramid_fill", "diffusion_fill", "fill_hole"]

FILL_METHODS = ("pyramid", "diffuse")


def _check(image: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.dim() != 3 or image.shape[-1] != 3:
        raise InputError(f"fill: image must be [H, W, 3]; got {tuple(image.shape)}.")
    if tuple(hole.shape) != tuple(image.shape[:2]):
        raise InputError(f"fill: hole mask {tuple(hole.shape)} does not match the image {tuple(image.shape[:2])}.")
    hole = hole.bool()
    if bool(hole.all()):
        raise InputError("fill: the mask covers the whole image, so there is no colour to fill from.")
    return image.float(), hole


def pyramid_fill(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """Push-pull fill of ``hole`` ([H, W] bool) in ``image`` ([H, W, 3]); returns [H, W, 3]."""
    image, hole = _check(image, hole)
    if not bool(hole.any()):
        return image.clone()
    weight = (~hole).float()[None, None]
    color = image.permute(2, 0, 1)[None] * weight
    levels = [(color, weight)]
    while not bool((weight > 0).all()):
        h, w = weight.shape[-2:]
        if h == 1 and w == 1:
            break
        k = (2 if h > 1 else 1, 2 if w > 1 else 1)
        color = F.avg_pool2d(color, k, k, ceil_mode=True)
        weight = F.avg_pool2d(weight, k, k, ceil_mode=True)
        levels.append((color, weight))
    color, weight = levels[-1]
    result = color / weight.clamp_min(1e-12)
    for color, weight in reversed(levels[:-1]):
        up = F.interpolate(result, size=color.shape[-2:], mode="bilinear", align_corners=False)
        alpha = weight.clamp(0.0, 1.0)
        result = alpha * (color / weight.clamp_min(1e-12)) + (1.0 - alpha) * up
    filled = result[0].permute(1, 2, 0)
    return torch.where(hole[..., None], filled, image)


def diffusion_fill(image: torch.Tensor, hole: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Pyramid fill refined by ``iterations`` Jacobi sweeps of the Laplace equation inside ``hole``."""
    if not isinstance(iterations, int) or iterations < 0:
        raise InputError(f"fill iterations must be a non-negative integer; got {iterations!r}.")
    image, hole = _check(image, hole)
    out = pyramid_fill(image, hole)
    if not bool(hole.any()) or iterations == 0:
        return out
    x = out.permute(2, 0, 1)[None]
    fixed = image.permute(2, 0, 1)[None]
    m = hole[None, None].expand_as(x)
    for _ in range(iterations):
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        avg = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) * 0.25
        x = torch.where(m, avg, fixed)
    return x[0].permute(1, 2, 0).contiguous()


def fill_hole(image: torch.Tensor, hole: torch.Tensor, method: str = "pyramid", iterations: int = 200) -> torch.Tensor:
    """Dispatch to :func:`pyramid_fill` or :func:`diffusion_fill`."""
    if method == "pyramid":
        return pyramid_fill(image, hole)
    if method == "diffuse":
        return diffusion_fill(image, hole, iterations)
    raise InputError(f"unknown fill method {method!r}; built in: {', '.join(FILL_METHODS)} (or give a fill image).")
