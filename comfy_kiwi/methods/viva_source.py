"""VIVA's source conditioning: source and noisy latents patchified separately, channel-concatenated,
projected back to the DiT width (VIVA eq. 2):

    z = P( [ E_x(x_t) ; E_s(x_src) ] )          E_x, E_s: Conv3d patch embeddings, P: Linear 2·dim → dim

``E_x`` is the DiT's own ``patch_embedding`` (its output arrives here as ``noisy_tokens``), ``E_s``
is this module's Conv3d with the same geometry, ``P`` is this module's projector.

Initialisation (chosen here so a base DiT is unchanged at step 0):

- ``P = [I | 0]`` and bias 0, so z = E_x(x_t): exactly the base patch embedding of the noisy latents;
- ``E_s`` copies the DiT's ``patch_embedding`` (``from_dit``) or is randomly initialised — it must
  *not* be zero: with both the right half of P and E_s at zero neither would ever get a gradient.
  The right half of P gets the gradient ∂L/∂z · E_s(x_src)ᵀ from the first step on.

This replaces Kiwi-Edit's ``patch_embedding(x_t) + source_embedder(x_src)·σ``: :data:`CHANNEL_CONCAT` is
the ``WanDiT`` source strategy (``comfy_kiwi/models/source_strategy.py``) named "concat", registered when
this module is imported; ``dit.attach_source_strategy(CHANNEL_CONCAT)`` puts the embedder in the DiT's
``source_mixer`` slot (keys ``source_mixer.patch_embedding.*`` / ``source_mixer.projector.*``) and
``WanDiT.embed_inputs`` calls ``forward(x, source_latents)`` on the patch-embedded tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..models.source_strategy import register_source_strategy


class ChannelConcatSourceEmbedder(nn.Module):
    """``forward(noisy_tokens [B, L, dim], source_latents [B, C, F, H, W]) → [B, L, dim]``."""

    def __init__(self, in_dim: int, dim: int, patch_size=(1, 2, 2)):
        super().__init__()
        self.dim = dim
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=tuple(patch_size), stride=tuple(patch_size))
        self.projector = nn.Linear(2 * dim, dim)
        self.reset_projector()

    @classmethod
    def from_dit(cls, model) -> "ChannelConcatSourceEmbedder":
        """An embedder for a ``WanDiT`` whose source Conv3d starts as a copy of the DiT's patch embedding."""
        c, pe = model.config, model.patch_embedding
        emb = cls(c.in_dim, c.dim, c.patch_size).to(device=pe.weight.device, dtype=pe.weight.dtype)
        with torch.no_grad():
            emb.patch_embedding.weight.copy_(pe.weight)
            emb.patch_embedding.bias.copy_(pe.bias)
        return emb

    def reset_projector(self) -> None:
        """P = [I | 0], bias 0: the output is the noisy tokens unchanged."""
        with torch.no_grad():
            self.projector.weight.zero_()
            self.projector.weight[:, :self.dim].copy_(torch.eye(self.dim))
            self.projector.bias.zero_()

    def source_tokens(self, source_latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] → [B, f·h·w, dim], frame-major like the DiT's tokens."""
        conv = self.patch_embedding
        ok = torch.is_tensor(source_latents) and source_latents.ndim == 5
        if not ok or source_latents.shape[1] != conv.in_channels:
            shape = tuple(source_latents.shape) if torch.is_tensor(source_latents) else type(source_latents).__name__
            raise InputError(f"source latents must be [B, {conv.in_channels}, F, H, W], got {shape}.")
        for n, p, axis in zip(source_latents.shape[2:], conv.kernel_size, ("frames", "height", "width")):
            if n % p:
                raise InputError(f"source latent {axis} {n} is not a multiple of the patch size {p}.")
        return conv(source_latents.to(conv.weight.dtype)).flatten(2).transpose(1, 2)

    def forward(self, noisy_tokens: torch.Tensor, source_latents: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(noisy_tokens) or noisy_tokens.ndim != 3 or noisy_tokens.shape[-1] != self.dim:
            shape = tuple(noisy_tokens.shape) if torch.is_tensor(noisy_tokens) else type(noisy_tokens).__name__
            raise InputError(f"noisy tokens must be [B, L, {self.dim}] (the DiT's patch embedding), got {shape}.")
        src = self.source_tokens(source_latents)                                   # [B', L', dim]
        b, length = noisy_tokens.shape[:2]
        if src.shape[1] != length or src.shape[0] not in (1, b):
            raise InputError(f"source latents give {src.shape[0]}×{src.shape[1]} tokens but the noisy latents "
                             f"have {b}×{length}; encode the source video at the edit's size and frame count.")
        src = src.expand(b, -1, -1).to(noisy_tokens.dtype)
        w = self.projector.weight
        return self.projector(torch.cat([noisy_tokens.to(w.dtype), src.to(w.dtype)], dim=-1)).to(noisy_tokens.dtype)


class ChannelConcatSource:
    """The ``WanDiT`` source strategy of VIVA eq. 2 (``source_mode`` "concat"): the DiT's ``source_mixer``
    (a :class:`ChannelConcatSourceEmbedder`) mixes the source into the noisy tokens; no σ scale."""

    name = "concat"

    def attach(self, dit) -> None:
        """Add the embedder, initialised so the DiT's output equals the base model's (P = [I | 0])."""
        if dit.source_mixer is None:
            dit.source_mixer = ChannelConcatSourceEmbedder.from_dit(dit)

    def scale(self, dit, scale, t, source, latents):
        if dit.source_mixer is None:
            raise InputError("source_mode is 'concat' but this DiT has no source_mixer; call "
                             "attach_source_strategy(CHANNEL_CONCAT) (comfy_kiwi.methods.viva_source).")
        return None                     # the channel-concat path has no σ scale

    def embed(self, dit, x: torch.Tensor, source: torch.Tensor, scale) -> torch.Tensor:
        return dit.source_mixer(x, source)


CHANNEL_CONCAT = register_source_strategy(ChannelConcatSource())
