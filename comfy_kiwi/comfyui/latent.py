"""Kiwi latents ↔ ComfyUI's LATENT, so ComfyUI's own VAE decode/encode and latent tools work on them.

The two hold the same Wan latents in different scales:

- a Kiwi latent is *normalised*: ``(mu − latents_mean) / latents_std`` per channel, as the DiT reads it
  (:meth:`comfy_kiwi.models.wan_vae.WanVAE.encode`);
- ComfyUI's ``LATENT`` for Wan holds the VAE's *raw* posterior mean: its VAE encode returns ``mu`` as is and
  its Wan21 / Wan22 latent formats apply the same per-channel mean/std only inside the model
  (``process_in`` before sampling, ``process_out`` after).

So ``raw = kiwi · std + mean`` and back, with the statistics of the VAE that made the latents (the published
Wan2.1 16-channel or Wan2.2 48-channel values for released VAEs).
"""

from __future__ import annotations

import torch

from ..errors import InputError


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
    return mean, std


def _check(latents, vae, what: str) -> torch.Tensor:
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
        shape = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(f"{what} must be video latents [B, C, T, h, w]; got {shape}. Image-model latents (4-D, "
                         "e.g. from an SD/Flux VAE) cannot be used with a Wan VAE.")
    z = vae.config.z_dim
    if latents.shape[1] != z:
        raise InputError(f"{what} has {latents.shape[1]} channels but this VAE's latents have {z} (Wan "
                         f"{vae.config.version}); use the VAE of the same Wan version (Wan2.1: 16, Wan2.2: 48).")
    return latents


def to_comfy(latents: torch.Tensor, vae) -> dict:
    """A Kiwi latent ``[B, C, T, h, w]`` → ComfyUI ``LATENT`` ``{"samples": raw latents}`` (fp32, CPU)."""
    latents = _check(latents, vae, "the Kiwi latent").float().cpu()
    mean, std = _stats(vae, latents)
    return {"samples": latents * std + mean}


def from_comfy(latent: dict, vae) -> torch.Tensor:
    """ComfyUI ``LATENT`` (a dict with ``samples``) → a normalised Kiwi latent (fp32, CPU)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise InputError(f"expected a ComfyUI LATENT (a dict with 'samples'), got {type(latent).__name__}.")
    raw = _check(latent["samples"], vae, "the LATENT").float().cpu()
    mean, std = _stats(vae, raw)
    return (raw - mean) / std
