"""Tiny random Wan VAEs for tests: the model, its diffusers twin, and files in every layout we load.

Every parameter is randomised (RMSNorm gains included), so numerical comparisons are sensitive to
any wiring mistake; weights are scaled so decoded pixels mostly stay inside (−1, 1) and the final
clamp does not hide differences.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loading.vae_keys import original_to_diffusers
from ..models.wan_vae import WanVAE, WanVAEConfig, tiny_config


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with seeded random values: gains around 1, weights ~ 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


def tiny_vae(version: str = "2.1", seed: int = 0, dim: int = 8, decoder_dim: int | None = None,
             config: WanVAEConfig | None = None) -> WanVAE:
    """A randomised WanVAE of the given version (structure and z_dim as released, tiny widths)."""
    cfg = config or tiny_config(version, dim=dim, decoder_dim=decoder_dim)
    return randomize_(WanVAE(cfg), seed).eval()


def diffusers_kwargs(cfg: WanVAEConfig) -> dict:
    """``AutoencoderKLWan(**kwargs)`` arguments for the same architecture."""
    kw = dict(base_dim=cfg.dim, decoder_base_dim=cfg.decoder_dim, z_dim=cfg.z_dim,
              dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks, attn_scales=[],
              temperal_downsample=list(cfg.temporal_downsample), dropout=0.0,
              latents_mean=list(cfg.latents_mean), latents_std=list(cfg.latents_std))
    if cfg.version == "2.2":
        kw.update(is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                  scale_factor_spatial=cfg.spatial_factor)
    return kw


def original_state_dict(vae: WanVAE, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype else v).detach().clone().contiguous() for k, v in vae.state_dict().items()}


def diffusers_state_dict(vae: WanVAE) -> dict[str, torch.Tensor]:
    sd = original_state_dict(vae)
    names = original_to_diffusers(sd)
    return {names[k]: v for k, v in sd.items()}


def diffusers_twin(vae: WanVAE):
    """The diffusers ``AutoencoderKLWan`` holding the same weights (fp32, eval)."""
    from diffusers import AutoencoderKLWan

    ref = AutoencoderKLWan(**diffusers_kwargs(vae.config))
    ref.load_state_dict(diffusers_state_dict(vae), strict=True)
    return ref.eval()


def write_original_file(vae: WanVAE, path, prefix: str = "", dtype: torch.dtype | None = None) -> Path:
    """A single safetensors file in the original Wan layout (``wan_2.1_vae.safetensors`` style)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v for k, v in original_state_dict(vae, dtype).items()}, str(path))
    return path


def kiwi_vae_config(cfg: WanVAEConfig) -> dict:
    """The ``vae/config.json`` of a Kiwi-Edit release (its custom ``VAE`` class)."""
    return {"_class_name": "VAE", "z_dim": cfg.z_dim, "dim": cfg.dim, "dim_mult": list(cfg.dim_mult),
            "num_res_blocks": cfg.num_res_blocks, "attn_scales": [],
            "temperal_downsample": list(cfg.temporal_downsample), "dropout": 0.0,
            "latents_mean": list(cfg.latents_mean), "latents_std": list(cfg.latents_std),
            "vae_pth": "Wan2.2_VAE.pth"}


def write_kiwi_vae_folder(vae: WanVAE, folder, dtype: torch.dtype | None = None) -> Path:
    """A Kiwi release ``vae/`` folder: config.json + diffusion_pytorch_model.safetensors (original keys)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(kiwi_vae_config(vae.config), indent=2))
    write_original_file(vae, folder / "diffusion_pytorch_model.safetensors", dtype=dtype)
    return folder


def write_diffusers_folder(vae: WanVAE, folder) -> Path:
    """A diffusers ``AutoencoderKLWan`` folder written by diffusers itself (``save_pretrained``)."""
    folder = Path(folder)
    diffusers_twin(vae).save_pretrained(str(folder), safe_serialization=True)
    return folder


def random_frames(frames: int, height: int, width: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Smooth-ish random video ``[B, 3, F, H, W]`` in [−1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1).clamp_(-1, 1)
