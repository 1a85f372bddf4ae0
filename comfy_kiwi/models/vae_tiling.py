"""Spatially tiled VAE encode/decode: bounded memory for large frames.

The frame is cut into overlapping tiles (the whole time axis per tile, so the causal stream is
untouched); each tile is encoded/decoded on its own and the results are blended with linear ramps
over the overlaps, then normalised by the summed weights. Tile placement and ramps follow the Kiwi
release (diffsynth): tiles start at 0, stride, 2·stride, … until one reaches the edge (the last may
be cut by the edge); a tile ramps up over the overlap on every side that is not a frame edge, and
the 2D weight is the minimum of the row and column ramps.

Memory: one tile's activations plus the output buffer (3 channels for decode), independent of how
many tiles there are. When a tile covers the whole frame the result equals the untiled call exactly.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .wan_vae import WanVAE

# Kiwi release defaults (diffsynth): decode in latent units, encode in pixels (= the same tiles ×16).
DECODE_TILE = (30, 52)
DECODE_STRIDE = (15, 26)
ENCODE_TILE = (480, 832)
ENCODE_STRIDE = (240, 416)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets along one axis: 0, stride, … until a tile reaches ``size``."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + stride)
    return starts


def ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """1D blend weights ``[length]``: (i+1)/overlap rising at the start, mirrored at the end, else 1."""
    w = torch.ones(length)
    if overlap > 0:
        i = torch.arange(length, dtype=torch.float32)
        if rise:
            w = torch.minimum(w, (i + 1) / overlap)
        if fall:
            w = torch.minimum(w, (length - i) / overlap)
    return w


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise InputError(f"{name} must be a positive int or an (height, width) pair of ints, got {value!r}.")
    return pair


def _check(tile, stride, multiple: int, unit: str) -> tuple[tuple[int, int], tuple[int, int]]:
    tile, stride = _pair(tile, "tile"), _pair(stride, "stride")
    for t, s in zip(tile, stride):
        if s > t:
            raise InputError(f"tile stride {stride} is larger than the tile {tile} ({unit}); tiles would "
                             "leave gaps. Use a stride ≤ the tile size (half the tile is usual).")
        if t % multiple or s % multiple:
            raise InputError(f"tile {tile} and stride {stride} ({unit}) must be multiples of {multiple}, the "
                             "VAE's spatial factor, so tiles fall on whole latent pixels.")
    return tile, stride


def _blend(run_tile, src: torch.Tensor, out_shape, tile, stride, scale: int, overlap_div: int,
           out_device) -> torch.Tensor:
    """Shared tiling loop. ``src`` is cut in tiles of ``tile`` (src units); ``run_tile`` maps a tile to
    an output tile ``scale`` times larger (or 1/``overlap_div`` as large) in H and W."""
    _, _, _, h, w = src.shape
    out = torch.zeros(out_shape, dtype=torch.float32, device=out_device)        # [B, C, T, H', W']
    weight = torch.zeros(out_shape[-2:], dtype=torch.float32, device=out_device)  # [H', W']
    ov_h = (tile[0] - stride[0]) * scale // overlap_div
    ov_w = (tile[1] - stride[1]) * scale // overlap_div
    for y0 in tile_starts(h, tile[0], stride[0]):
        y1 = min(y0 + tile[0], h)
        for x0 in tile_starts(w, tile[1], stride[1]):
            x1 = min(x0 + tile[1], w)
            part = run_tile(src[:, :, :, y0:y1, x0:x1])                         # [B, C, T, th', tw']
            th, tw = part.shape[-2:]
            oy, ox = y0 * scale // overlap_div, x0 * scale // overlap_div
            mask = torch.minimum(ramp(th, ov_h, y0 > 0, y1 < h)[:, None],
                                 ramp(tw, ov_w, x0 > 0, x1 < w)[None, :]).to(out_device)
            out[..., oy:oy + th, ox:ox + tw].addcmul_(part, mask)
            weight[oy:oy + th, ox:ox + tw] += mask
            del part
    return out.div_(weight)


def tiled_decode(vae: WanVAE, latents: torch.Tensor, tile=DECODE_TILE, stride=DECODE_STRIDE) -> torch.Tensor:
    """Decode normalised latents ``[B, z, T, h, w]`` tile by tile → frames ``[B, 3, 4(T−1)+1, h·s, w·s]``.

    ``tile``/``stride`` are in latent pixels (Kiwi default 30×52, stride 15×26). The result is
    clamped to [−1, 1], fp32, on the device of ``latents``.
    """
    vae.check_latents_shape(tuple(latents.shape))
    tile, stride = _check(tile, stride, 1, "latent pixels")
    b, _, t, h, w = latents.shape
    s = vae.spatial_factor
    shape = (b, 3, 1 + vae.temporal_factor * (t - 1), h * s, w * s)
    out = _blend(lambda z: vae.decode_raw(z, out_device=latents.device), latents, shape, tile, stride,
                 scale=s, overlap_div=1, out_device=latents.device)
    return out.clamp_(-1.0, 1.0)


def tiled_encode(vae: WanVAE, frames: torch.Tensor, tile=ENCODE_TILE, stride=ENCODE_STRIDE) -> torch.Tensor:
    """Encode frames ``[B, 3, 4k+1, H, W]`` tile by tile → normalised latents ``[B, z, k+1, H/s, W/s]``.

    ``tile``/``stride`` are in pixels and must be multiples of the spatial factor (Kiwi default
    480×832, stride 240×416). fp32 result on the device of ``frames``.
    """
    vae.check_frames_shape(tuple(frames.shape))
    s = vae.spatial_factor
    tile, stride = _check(tile, stride, s, "pixels")
    b, _, f, h, w = frames.shape
    shape = (b, vae.z_dim, (f - 1) // vae.temporal_factor + 1, h // s, w // s)
    return _blend(vae.encode_untiled, frames, shape, tile, stride, scale=1, overlap_div=s,
                  out_device=frames.device)
