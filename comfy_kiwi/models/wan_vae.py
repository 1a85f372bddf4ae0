"""The Wan video VAE (Wan2.1 and Wan2.2), in the original Wan key layout.

- Wan2.1: z_dim 16, ×8 spatial, ×4 temporal, base dim 96.
- Wan2.2: z_dim 48, a 2×2 pixel patchify (3 → 12 channels) around a ×8 network, so ×16 spatial;
  encoder dim 160, decoder dim 256, residual shortcuts (AvgDown3D / DupUp3D) around each stage.

Both are causal in time: 4k+1 frames ↔ k+1 latent frames. ``encode`` returns the posterior mean
normalised per channel, ``(mu − mean) / std``; ``decode`` un-normalises, decodes and clamps to [−1, 1].
Parameter names are the original ones (``encoder.*``, ``decoder.*``, ``conv1.*``, ``conv2.*``), the
layout of ``wan_2.1_vae.safetensors``, ``wan2.2_vae.safetensors`` and the Kiwi release ``vae/`` folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..errors import InputError
from ..progress import Progress
from .wan_vae_blocks import (AttentionBlock, CausalConv3d, DownBlock22, Resample, ResidualBlock, RMSNorm,
                             StreamCache, UpBlock22)

# Published per-channel latent statistics (Wan2.1: diffusers AutoencoderKLWan defaults;
# Wan2.2: the Wan2.2 VAE / Wan2.2-TI2V-5B diffusers config).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

VERSIONS = ("2.1", "2.2")
TEMPORAL_FACTOR = 4  # the chunking (frame 0, then groups of 4) is built around ×4 in time


def published_latent_stats(version: str, z_dim: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The released (mean, std) for a version, or None when ``z_dim`` is not the released one."""
    if version == "2.1" and z_dim == 16:
        return WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
    if version == "2.2" and z_dim == 48:
        return WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    return None


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture and latent statistics of a Wan VAE.

    ``version`` "2.1" (plain stages, ×8) or "2.2" (2×2 patchify, residual stages, ×16).
    ``dim``/``decoder_dim`` are the base widths; stage widths are ``dim · dim_mult[i]``.
    ``temporal_downsample[i]`` says whether encoder stage i also halves time (the decoder mirrors it).
    """

    version: str = "2.1"
    z_dim: int = 16
    dim: int = 96
    decoder_dim: int = 96
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        for name in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.version not in VERSIONS:
            raise InputError(f"Wan VAE version {self.version!r} is not supported; use one of {VERSIONS}.")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise InputError(f"latents_mean/latents_std need {self.z_dim} values each (z_dim), got "
                             f"{len(self.latents_mean)} and {len(self.latents_std)}.")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise InputError(f"temporal_downsample needs {len(self.dim_mult) - 1} flags (one per "
                             f"downsampling stage), got {len(self.temporal_downsample)}.")
        if sum(self.temporal_downsample) != 2:
            raise InputError("exactly two stages must downsample time (the Wan VAE compresses time ×4), "
                             f"got temporal_downsample={list(self.temporal_downsample)}.")

    @property
    def patch_size(self) -> int:
        return 2 if self.version == "2.2" else 1

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            d[k] = list(d[k])
        return d


WAN21_VAE = WanVAEConfig()
WAN22_VAE = WanVAEConfig(version="2.2", z_dim=48, dim=160, decoder_dim=256,
                         latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)


def tiny_config(version: str = "2.1", dim: int = 8, decoder_dim: int | None = None) -> WanVAEConfig:
    """A tiny config (a few hundred thousand parameters) with the released structure and z_dim, for tests.

    Stage widths ``dim · (1, 2, 2, 2)`` and one residual block per encoder stage keep it fast.
    """
    base = WAN22_VAE if version == "2.2" else WAN21_VAE
    if decoder_dim is None:
        decoder_dim = dim + dim // 2 if version == "2.2" else dim   # 2.2 keeps encoder ≠ decoder width
    return replace(base, dim=dim, decoder_dim=decoder_dim, dim_mult=(1, 2, 2, 2), num_res_blocks=1)


# --------------------------------------------------------------------------------------------------
# encoder / decoder
# --------------------------------------------------------------------------------------------------

def _head(dim: int, out_dim: int) -> nn.Sequential:
    # original: Sequential(RMS_norm, SiLU, CausalConv3d) → keys head.0.gamma, head.2.*
    return nn.Sequential(RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


class WanVAEEncoder(nn.Module):
    """Pixels (patchified for 2.2) ``[B, 3·p², T, H, W]`` → ``[B, 2·z_dim, T', H/8, W/8]`` (mu ‖ logvar)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(3 * cfg.patch_size ** 2, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            down_time = i < last and cfg.temporal_downsample[i]
            if cfg.version == "2.2":
                layers.append(DownBlock22(din, dout, cfg.num_res_blocks, down_time, down_space=i < last))
                continue
            for _ in range(cfg.num_res_blocks):   # 2.1: one flat Sequential of blocks
                layers.append(ResidualBlock(din, dout))
                din = dout
            if i < last:
                layers.append(Resample(dout, "downsample3d" if down_time else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], cfg.z_dim * 2)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.conv1.stream(x, cache)
        for layer in self.downsamples:
            x = layer(x, cache)
        x = self.middle[0](x, cache)
        x = self.middle[1](x)
        x = self.middle[2](x, cache)
        x = torch.nn.functional.silu(self.head[0](x), inplace=not torch.is_grad_enabled())
        return self.head[2].stream(x, cache)


class WanVAEDecoder(nn.Module):
    """``[B, z_dim, T, h, w]`` → pixels (patchified for 2.2) ``[B, 3·p², T'', 8h, 8w]``."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        mults = (cfg.dim_mult[-1], *reversed(cfg.dim_mult))
        dims = [cfg.decoder_dim * m for m in mults]
        up_time_flags = tuple(reversed(cfg.temporal_downsample))
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        layers: list[nn.Module] = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            up_time = i < last and up_time_flags[i]
            if cfg.version == "2.2":
                layers.append(UpBlock22(din, dout, cfg.num_res_blocks, up_time, up_space=i < last))
                continue
            if i > 0:
                din //= 2   # 2.1: the previous stage's upsample conv halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(din, dout))
                din = dout
            if i < last:
                layers.append(Resample(dout, "upsample3d" if up_time else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3 * cfg.patch_size ** 2)

    def forward(self, x: torch.Tensor, cache: StreamCache, first_chunk: bool) -> torch.Tensor:
        x = self.conv1.stream(x, cache)
        x = self.middle[0](x, cache)
        x = self.middle[1](x)
        x = self.middle[2](x, cache)
        for layer in self.upsamples:
            x = layer(x, cache, first_chunk) if isinstance(layer, UpBlock22) else layer(x, cache)
        x = torch.nn.functional.silu(self.head[0](x), inplace=not torch.is_grad_enabled())
        return self.head[2].stream(x, cache)


# --------------------------------------------------------------------------------------------------
# patchify (Wan2.2): channel index = c·p² + dx·p + dy
# --------------------------------------------------------------------------------------------------

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` → ``[B, C·p², T, H/p, W/p]``."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p)             # dy at dim 4, dx at dim 6
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C·p², T, h, w]`` → ``[B, C, T, h·p, w·p]`` (inverse of :func:`patchify`)."""
    if p == 1:
        return x
    b, cp, t, h, w = x.shape
    x = x.reshape(b, cp // (p * p), p, p, t, h, w)            # (c, dx, dy)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cp // (p * p), t, h * p, w * p)


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------

class WanVAE(nn.Module):
    """Wan2.1 / Wan2.2 video VAE. See the module docstring for the maths and the key layout."""

    def __init__(self, config: WanVAEConfig = WAN21_VAE) -> None:
        super().__init__()
        self.config = config
        self.encoder = WanVAEEncoder(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)   # "quant_conv"
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)           # "post_quant_conv"
        self.decoder = WanVAEDecoder(config)

    # ---- facts ------------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.config.version

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return TEMPORAL_FACTOR

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(z_dim, T, h, w)`` of the latents of a ``frames × height × width`` video."""
        self.check_frames_shape((1, 3, frames, height, width))
        s = self.spatial_factor
        return self.z_dim, (frames - 1) // TEMPORAL_FACTOR + 1, height // s, width // s

    # ---- input checks ------------------------------------------------------------------------------
    def check_frames_shape(self, shape) -> None:
        if len(shape) != 5 or shape[1] != 3:
            raise InputError(f"VAE encode expects frames [B, 3, F, H, W] in [-1, 1], got shape {list(shape)}.")
        f, h, w = shape[2:]
        if f < 1 or (f - 1) % TEMPORAL_FACTOR:
            lo = max(1, (f - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1)
            raise InputError(f"the Wan VAE needs 4k+1 frames (1, 5, 9, ..., 81), got {f}; "
                             f"use {lo} or {lo + TEMPORAL_FACTOR} frames.")
        s = self.spatial_factor
        if h % s or w % s or h == 0 or w == 0:
            raise InputError(f"frame size {h}x{w} (HxW) is not a multiple of {s}, the Wan {self.version} "
                             f"VAE's spatial factor; resize or crop to e.g. {max(s, h // s * s)}x"
                             f"{max(s, w // s * s)}.")

    def check_latents_shape(self, shape) -> None:
        if len(shape) != 5 or shape[1] != self.z_dim or min(shape[2:]) < 1:
            raise InputError(f"VAE decode expects latents [B, {self.z_dim}, T, h, w] (z_dim {self.z_dim} "
                             f"for Wan {self.version}), got shape {list(shape)}.")

    # ---- encode / decode ---------------------------------------------------------------------------
    def _stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.config.latents_mean, dtype=torch.float32, device=device)
        std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, tiled: bool = False, tile=None, stride=None) -> torch.Tensor:
        """Frames ``[B, 3, 4k+1, H, W]`` in [−1, 1] → normalised latents ``[B, z, k+1, H/s, W/s]`` (fp32).

        Deterministic: the posterior mean only. ``tiled`` encodes overlapping spatial tiles
        (see :func:`comfy_kiwi.models.vae_tiling.tiled_encode` for ``tile``/``stride`` in pixels).
        The result is on the device of ``frames``.
        """
        self.check_frames_shape(tuple(frames.shape))
        if tiled:
            from .vae_tiling import tiled_encode   # tiling builds on this class
            return tiled_encode(self, frames, **_tile_args(tile, stride))
        return self.encode_untiled(frames)

    @torch.no_grad()
    def encode_untiled(self, frames: torch.Tensor) -> torch.Tensor:
        self.check_frames_shape(tuple(frames.shape))
        out_device = frames.device
        x = patchify(frames.to(self.device, self.dtype), self.config.patch_size)   # [B, 3p², F, H/p, W/p]
        cache = StreamCache()
        chunks = []
        starts = range(0, x.shape[2], TEMPORAL_FACTOR)
        # frame 0 alone, then groups of 4 frames: each chunk yields one latent frame
        with Progress(len(starts), "VAE encode", console=False) as bar:
            for start in starts:
                cache.start_chunk()
                lo = 0 if start == 0 else start - TEMPORAL_FACTOR + 1
                chunks.append(self.encoder(x[:, :, lo:start + 1], cache))       # [B, 2z, 1, h, w]
                bar.step()
        del cache, x
        moments = self.conv1(torch.cat(chunks, dim=2) if len(chunks) > 1 else chunks[0])
        mu = moments[:, :self.z_dim].float()
        mean, std = self._stats(mu.device)
        return ((mu - mean) / std).to(out_device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiled: bool = False, tile=None, stride=None) -> torch.Tensor:
        """Normalised latents ``[B, z, T, h, w]`` → frames ``[B, 3, 4(T−1)+1, h·s, w·s]`` in [−1, 1] (fp32).

        ``tiled`` decodes overlapping spatial tiles (``tile``/``stride`` in latent units, see
        :func:`comfy_kiwi.models.vae_tiling.tiled_decode`). The result is on the device of ``latents``.
        """
        self.check_latents_shape(tuple(latents.shape))
        if tiled:
            from .vae_tiling import tiled_decode
            return tiled_decode(self, latents, **_tile_args(tile, stride))
        return self.decode_raw(latents).clamp_(-1.0, 1.0)

    @torch.no_grad()
    def decode_raw(self, latents: torch.Tensor, out_device=None) -> torch.Tensor:
        """Like :meth:`decode` but without the final clamp (tiles are blended before clamping)."""
        self.check_latents_shape(tuple(latents.shape))
        out_device = latents.device if out_device is None else out_device
        mean, std = self._stats(self.device)
        z = latents.to(self.device, torch.float32) * std + mean
        z = self.conv2(z.to(self.dtype))
        b, _, t, h, w = z.shape
        p, s = self.config.patch_size, self.spatial_factor
        # preallocated output: the decoded chunks are written in place, never concatenated
        out = torch.empty(b, 3, 1 + TEMPORAL_FACTOR * (t - 1), h * s, w * s,
                          dtype=torch.float32, device=out_device)
        cache = StreamCache()
        pos = 0
        with Progress(t, "VAE decode", console=False) as bar:
            for i in range(t):   # one latent frame at a time: 1 pixel frame first, then 4 each
                cache.start_chunk()
                y = unpatchify(self.decoder(z[:, :, i:i + 1], cache, first_chunk=(i == 0)), p)
                out[:, :, pos:pos + y.shape[2]] = y
                pos += y.shape[2]
                del y
                bar.step()
        return out


def _tile_args(tile, stride) -> dict:
    return {k: v for k, v in (("tile", tile), ("stride", stride)) if v is not None}
