"""A lossless patch codec for the toy world, in place of the Wan VAE.

The Wan2.2 VAE compresses 16× in space, which leaves a 32×32 toy frame with 2×2 latents — too few for
a DiT to edit 8-pixel shapes — and training a real VAE on a CPU would take most of the toy budget.
This codec only rearranges pixels: space-to-depth by 2 and time-to-depth by 4, exactly the latent
*shape* contract of the Wan2.2 VAE with 48 channels, ``[B, 3, 4k+1, H, W] → [B, 48, k+1, H/2, W/2]``:

- latent frame 0 holds frame 0 (repeated four times, as the causal Wan VAE encodes frame 0 alone);
- latent frame i ≥ 1 holds frames 4i−3 … 4i;
- channel index ((t·2 + p)·2 + q)·3 + c for frame-in-group t, pixel row p, column q, colour c;
- the values are the pixels in [−1, 1] unchanged (no normalisation: the palette is already centred).

Decoding inverts this exactly (frame 0 = the mean of its four copies), so encode → decode is the
identity on any frame stack; it is only a sensible codec for this synthetic world, whose images have
no texture to compress. The interface is the one ``EditPipeline`` uses from ``WanVAE``
(``encode``/``decode`` with ``tiled``, ``z_dim``, ``spatial_factor``, ``temporal_factor``, ``dtype``,
``device``). A release folder marks it with ``vae/config.json`` = ``{"_class_name": "KiwiToyPatchCodec"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError

CODEC_CLASS_NAME = "KiwiToyPatchCodec"
TEMPORAL = 4
SPATIAL = 2
Z_DIM = 3 * TEMPORAL * SPATIAL * SPATIAL   # 48, the Wan2.2 latent width


@dataclass(frozen=True)
class ToyCodecConfig:
    """The facts the nodes read from ``vae.config`` (as from ``WanVAEConfig``)."""

    version: str = "toy"
    z_dim: int = Z_DIM
    patch_size: int = SPATIAL
    spatial_factor: int = SPATIAL


class ToyPatchCodec(nn.Module):
    """Lossless space/time-to-depth codec with the Wan VAE's latent shape contract (see module doc)."""

    version = "toy"
    z_dim = Z_DIM
    spatial_factor = SPATIAL
    temporal_factor = TEMPORAL
    config = ToyCodecConfig()

    def __init__(self):
        super().__init__()
        # No weights; this buffer only carries the device and dtype the pipeline asks for.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        self.check_frames_shape((1, 3, frames, height, width))
        return Z_DIM, (frames - 1) // TEMPORAL + 1, height // SPATIAL, width // SPATIAL

    def check_frames_shape(self, shape) -> None:
        if len(shape) != 5 or shape[1] != 3:
            raise InputError(f"toy codec encode expects frames [B, 3, F, H, W] in [-1, 1], got {list(shape)}.")
        f, h, w = shape[2:]
        if f < 1 or (f - 1) % TEMPORAL:
            raise InputError(f"the toy codec needs 4k+1 frames (1, 5, 9, ...), got {f}.")
        if h % SPATIAL or w % SPATIAL or h == 0 or w == 0:
            raise InputError(f"frame size {h}x{w} is not a multiple of {SPATIAL} (the toy codec's patch).")

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, tiled: bool = False, **_) -> torch.Tensor:
        """Frames [B, 3, 4k+1, H, W] in [−1, 1] → latents [B, 48, k+1, H/2, W/2] (float32)."""
        self.check_frames_shape(tuple(frames.shape))
        x = frames.float()
        x = torch.cat([x[:, :, :1].expand(-1, -1, TEMPORAL, -1, -1), x[:, :, 1:]], dim=2)   # frame 0 ×4
        b, c, f, h, w = x.shape
        x = x.reshape(b, c, f // TEMPORAL, TEMPORAL, h // SPATIAL, SPATIAL, w // SPATIAL, SPATIAL)
        # → [B, t, p, q, c, k, h', w'] then merge (t, p, q, c) into channels
        x = x.permute(0, 3, 5, 7, 1, 2, 4, 6)
        return x.reshape(b, Z_DIM, f // TEMPORAL, h // SPATIAL, w // SPATIAL).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiled: bool = False, **_) -> torch.Tensor:
        """Latents [B, 48, k+1, h, w] → frames [B, 3, 4k+1, 2h, 2w] in [−1, 1] (float32)."""
        if latents.ndim != 5 or latents.shape[1] != Z_DIM:
            raise InputError(f"toy codec decode expects latents [B, {Z_DIM}, T, h, w], got {list(latents.shape)}.")
        b, _, k, h, w = latents.shape
        x = latents.float().reshape(b, TEMPORAL, SPATIAL, SPATIAL, 3, k, h, w)
        x = x.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, 3, k * TEMPORAL, h * SPATIAL, w * SPATIAL)
        first = x[:, :, :TEMPORAL].mean(dim=2, keepdim=True)
        return torch.cat([first, x[:, :, TEMPORAL:]], dim=2).clamp(-1.0, 1.0)


def codec_config() -> dict:
    return {"_class_name": CODEC_CLASS_NAME, "z_dim": Z_DIM, "spatial_factor": SPATIAL,
            "temporal_factor": TEMPORAL, "note": "lossless space/time-to-depth codec of the toy world; no weights"}


def write_codec_folder(folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(codec_config(), indent=2))
    return folder


def is_codec_folder(folder) -> bool:
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == CODEC_CLASS_NAME
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_codec(folder, device=None) -> ToyPatchCodec:
    if not is_codec_folder(folder):
        raise CheckpointError(f"{folder}: not a toy codec folder (expected config.json with "
                              f'"_class_name": "{CODEC_CLASS_NAME}").')
    return ToyPatchCodec().to(device or "cpu")
