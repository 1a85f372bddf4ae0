"""Kiwi Latent ↔ LATENT: hand Kiwi latents to ComfyUI's own VAE Decode, Save Latent and latent tools, and back."""

from __future__ import annotations

from comfy_kiwi.comfyui import latent as comfy_latent

from .common import CATEGORY_LATENT, KIWI_LATENT, KIWI_VAE, tip

_VAE_TIP = "The Kiwi VAE of the latents (its per-channel statistics convert between the two scales)."


class KiwiLatentToLATENT:
    DESCRIPTION = ("Turn a Kiwi latent into ComfyUI's LATENT (the Wan VAE's raw latents, as ComfyUI's VAE Encode makes "
                   "them). Then ComfyUI's own VAE Decode (with the same Wan VAE file loaded by Load VAE), Save "
                   "Latent and latent math nodes work on Kiwi edits.")
    CATEGORY = CATEGORY_LATENT
    FUNCTION = "convert"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("ComfyUI LATENT {'samples': [B, C, T, h, w]} in the VAE's raw scale.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": (KIWI_VAE, tip(_VAE_TIP)),
                             "kiwi_latent": (KIWI_LATENT, tip("Latents from a Kiwi sampler."))}}

    def convert(self, vae, kiwi_latent):
        return (comfy_latent.to_comfy(kiwi_latent, vae),)


class KiwiLatentFromLATENT:
    DESCRIPTION = ("Turn ComfyUI's LATENT of a Wan VAE (VAE Encode, Load Latent, latent math) into a Kiwi latent for "
                   "Kiwi VAE Decode.")
    CATEGORY = CATEGORY_LATENT
    FUNCTION = "convert"
    RETURN_TYPES = (KIWI_LATENT,)
    RETURN_NAMES = ("kiwi_latent",)
    OUTPUT_TOOLTIPS = ("Normalised Wan latents, as the Kiwi nodes use them.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": (KIWI_VAE, tip(_VAE_TIP)),
                             "latent": ("LATENT", tip("A Wan video LATENT (16 channels for Wan2.1, 48 for 2.2)."))}}

    def convert(self, vae, latent):
        return (comfy_latent.from_comfy(latent, vae),)


NODE_CLASS_MAPPINGS = {"KiwiLatentToLATENT": KiwiLatentToLATENT, "KiwiLatentFromLATENT": KiwiLatentFromLATENT}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiLatentToLATENT": "Kiwi Latent → LATENT",
                              "KiwiLatentFromLATENT": "LATENT → Kiwi Latent"}
