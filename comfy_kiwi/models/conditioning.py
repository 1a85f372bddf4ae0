"""Kiwi-Edit latent conditioning: the source and reference embedders, and the paper's γ(t) source scale.

Each embedder is one Conv3d with the DiT's patch geometry (``patch_embedding.{weight,bias}``, as in the
release's ``source_embedder/`` and ``ref_embedder/`` folders). Zero-initialised by default, so a
freshly attached embedder leaves the DiT's output unchanged until it is trained.

Source scale: the release adds ``E_s(x_src)·σ`` (fixed σ of the sample, the default; the released weights
were trained with it). The paper's Eq. 1 scales by a learnable γ(t) instead: ``attach_gamma()`` gives the
source embedder a :class:`SourceGamma` (key ``gamma.table``: ``source_embedder.gamma.table`` in a DiT,
``vae_condition.gamma.table`` in a Kiwi training checkpoint), which the DiT then applies in place of σ.
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
        self.register_module("gamma", None)        # SourceGamma when the paper's γ(t) is used (source only)

    def attach_gamma(self) -> "ConditionEmbedder":
        """Use the paper's learnable γ(t) for this (source) embedder; it starts equal to σ."""
        if self.gamma is None:
            w = self.patch_embedding.weight
            self.gamma = SourceGamma().to(w.device)
        return self

    @property
    def in_dim(self) -> int:
        return self.patch_embedding.in_channels

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, F, H, W] → tokens [B, F·H/ph·W/pw, dim] (frame-major, like the DiT's)."""
        w = self.patch_embedding.weight
        return self.patch_embedding(latents.to(w.dtype)).flatten(2).transpose(1, 2)


class SourceGamma(nn.Module):
    """γ(t) of Kiwi-Edit's Eq. 1: one learnable scale per integer timestep t = 0 … 1000 (``table`` [1001],
    fp32), linear between them. Initialised to t / 1000, i.e. the release's σ, so switching it on starts
    from the released behaviour and training moves it from there."""

    KNOTS = 1001

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.arange(self.KNOTS, dtype=torch.float32) / (self.KNOTS - 1))

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        """Timesteps [B] in [0, 1000] (Wan's 1000·σ) → γ [B] fp32."""
        t = timestep.float().clamp(0, self.KNOTS - 1)
        lo = t.floor().long().clamp(max=self.KNOTS - 2)
        frac = t - lo
        table = self.table.float()
        return table[lo] * (1 - frac) + table[lo + 1] * frac
