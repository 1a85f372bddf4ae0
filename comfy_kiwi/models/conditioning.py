"""Kiwi-Edit latent conditioning: the source and reference embedders.

Each is one Conv3d with the DiT's patch geometry (``patch_embedding.{weight,bias}``, as in the
release's ``source_embedder/`` and ``ref_embedder/`` folders). Zero-initialised by default, so a
freshly attached embedder leaves the DiT's output unchanged until it is trained.
"""

from __future__ import annotations

import torch
from torch import nn


class ConditionEmbedder(nn.Module):
    def __init__(self, in_dim: int, dim: int, patch_size=(1, 2, 2), zero_init: bool = True):
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=tuple(patch_size), stride=tuple(patch_size))
        if zero_init:
            nn.init.zeros_(self.patch_embedding.weight)
            nn.init.zeros_(self.patch_embedding.bias)

    @property
    def in_dim(self) -> int:
        return self.patch_embedding.in_channels

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, F, H, W] → tokens [B, F·H/ph·W/pw, dim] (frame-major, like the DiT's)."""
        w = self.patch_embedding.weight
        return self.patch_embedding(latents.to(w.dtype)).flatten(2).transpose(1, 2)
