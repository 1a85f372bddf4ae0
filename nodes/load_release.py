"""Kiwi Release Loader: a whole Kiwi-Edit release folder from models/kiwi/ → DiT, VAE and MLLM."""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import model_folders

from .common import (ATTENTION, CATEGORY_LOADERS, DEVICE_TIP, DEVICES, DTYPE_TIP, DTYPES, KIWI_DIT, KIWI_MLLM,
                     KIWI_VAE, files_fingerprint, tip)
from .load_parts import load_dit_cached, load_mllm_cached, load_vae_cached


class KiwiReleaseLoader:
    DESCRIPTION = ("Load a Kiwi-Edit release folder (a Hugging Face repo such as "
                   "linyq/kiwi-edit-5b-instruct-reference-diffusers downloaded into models/kiwi/): the video DiT "
                   "with its source/reference embedders, the Wan2.2 VAE and the Qwen2.5-VL instruction encoder. "
                   "Loaded models are reused by later runs with the same settings.")
    CATEGORY = CATEGORY_LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_DIT, KIWI_VAE, KIWI_MLLM)
    RETURN_NAMES = ("dit", "vae", "mllm")
    OUTPUT_TOOLTIPS = ("The video DiT (with the Kiwi source/reference embedders).", "The Wan2.2 VAE.",
                       "The Qwen2.5-VL instruction encoder with its learnable queries.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "release": (model_folders.release_names(),
                        tip("A release folder in models/kiwi/ (transformer/, vae/, mllm_encoder/, processor/, "
                            "source_embedder/, ref_embedder/).")),
            "dtype": (DTYPES, tip(DTYPE_TIP, default="auto")),
            "device": (DEVICES, tip(DEVICE_TIP + " The MLLM always waits in RAM on 'auto' and only visits the "
                                    "GPU while encoding.", default="auto")),
            "attention": (ATTENTION, tip("Attention kernel of the DiT. auto picks the fastest installed one "
                                         "(sage, flash, xformers, else PyTorch sdpa).", default="auto")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, release):
        try:
            model_folders.check_release(model_folders.resolve("kiwi-release", release), release)
        except errors.KiwiError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, release, **_):
        return files_fingerprint("kiwi-release", release)

    def load(self, release, dtype, device, attention):
        root = model_folders.resolve("kiwi-release", release)
        model_folders.check_release(root, release)
        dit = load_dit_cached(root, dtype, device, attention)
        vae = load_vae_cached(root / "vae", dtype, device)
        mllm = load_mllm_cached(root, None, dtype, device)
        return (dit, vae, mllm)


NODE_CLASS_MAPPINGS = {"KiwiReleaseLoader": KiwiReleaseLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiReleaseLoader": "Kiwi Release Loader"}
