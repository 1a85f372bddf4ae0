"""Kiwi VAE Decode: edited Wan latents → IMAGE frames."""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import placement

from .common import CATEGORY_LATENT, KIWI_LATENT, KIWI_VAE, tip


class KiwiVAEDecode:
    DESCRIPTION = ("Decode the edited latents from Kiwi Sampler into frames (an IMAGE batch): connect it to Create "
                   "Video → Save Video, or to Save Image for a one-frame edit.")
    CATEGORY = CATEGORY_LATENT
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The edited frames, 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (KIWI_VAE, tip("The VAE that encoded the source (Kiwi Release Loader or Kiwi VAE Loader).")),
            "latent": (KIWI_LATENT, tip("Edited latents from Kiwi Sampler.")),
            "tiled": ("BOOLEAN", tip("Decode in overlapping tiles: much less memory for large videos, "
                                     "slightly slower.", default=False)),
        }}

    def decode(self, vae, latent, tiled):
        import torch
        if not isinstance(latent, torch.Tensor) or latent.ndim != 5:
            raise errors.InputError(f"latent must be a [B, C, F, H, W] tensor from a Kiwi sampler; got "
                                    f"{tuple(getattr(latent, 'shape', ())) or type(latent).__name__}.")
        if not torch.isfinite(latent).all():
            raise errors.InputError("the latent holds NaN or infinite values; sample it again (check the "
                                    "sampler's inputs).")
        channels = latent.shape[1]
        if channels != vae.config.z_dim:
            raise errors.InputError(
                f"the latents have {channels} channels but this VAE decodes {vae.config.z_dim}; use the VAE that "
                "belongs to the DiT (the one that encoded the source).")
        from comfy_kiwi import pipeline
        with placement.on_device(vae) as device:
            frames = pipeline.EditPipeline(None, vae, None, device=device).decode(latent, tiled=bool(tiled))
        return (frames,)


NODE_CLASS_MAPPINGS = {"KiwiVAEDecode": KiwiVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiVAEDecode": "Kiwi VAE Decode"}
