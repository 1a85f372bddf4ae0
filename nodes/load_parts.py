"""Loaders for each part alone: DiT (models/diffusion_models), VAE (models/vae), MLLM (models/text_encoders).

Every loader also lists the matching part of each release in models/kiwi/ ("kiwi release: <name>").
Loads go through the model cache (path + file stamp + dtype + device + attention), and inside
ComfyUI its model management is asked to make room first.
"""

from __future__ import annotations

from pathlib import Path

from comfy_kiwi import errors
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.comfyui import model_cache, model_folders, placement

from .common import (ATTENTION, CATEGORY_LOADERS, DEVICE_TIP, DEVICES, DIT_DTYPES, DTYPE_TIP, DTYPES, KIWI_DIT,
                     KIWI_MLLM, KIWI_VAE, files_fingerprint, tip, torch_dtype)

NO_CHECKPOINT = "none"


# --- cached loads (shared with the release loader) ---------------------------------------------------

def _weights_bytes(path: Path, release_parts: tuple[str, ...]) -> int:
    """Size of what will be loaded: only the part's folders when ``path`` is a whole release."""
    if model_folders.is_release_folder(path):
        return sum(placement.weights_bytes(path / p) for p in release_parts if (path / p).exists())
    return placement.weights_bytes(path)


def load_dit_cached(path: Path, dtype: str, device: str, attention: str):
    from comfy_kiwi.loading.dit_loader import load_dit
    from comfy_kiwi.models.dit_lora import DiTHandle
    home, td = placement.home_device(device, "dit"), torch_dtype(dtype)

    def load():
        placement.make_room(_weights_bytes(path, ("transformer", "source_embedder", "ref_embedder")), home)
        return load_dit(path, dtype=td, device=home, attention=attention)

    model = model_cache.cached_load("dit", path, load, dtype=td, device=home, attention=attention)
    return DiTHandle(model)


def load_vae_cached(path: Path, dtype: str, device: str):
    from comfy_kiwi.loading.vae_loader import load_vae
    home, td = placement.home_device(device, "vae"), torch_dtype(dtype)

    def load():
        placement.make_room(placement.weights_bytes(path), home)
        return load_vae(path, dtype=td, device=home)

    return model_cache.cached_load("vae", path, load, dtype=td, device=home)


def load_mllm_cached(path: Path, checkpoint: Path | None, dtype: str, device: str):
    from comfy_kiwi.mllm.loader import load_mllm_encoder
    home, td = placement.home_device(device, "mllm"), torch_dtype(dtype)

    def load():
        placement.make_room(_weights_bytes(path, ("mllm_encoder",)), home)
        if checkpoint is None:
            return load_mllm_encoder(path, dtype=td, device=home)
        return load_mllm_encoder(checkpoint, base=path, dtype=td, device=home)

    key_path = path if checkpoint is None else checkpoint
    return model_cache.cached_load("mllm", key_path, load, dtype=td, device=home, base=str(path))


def _validated(kind: str, name: str) -> str | bool:
    """VALIDATE_INPUTS body: the model exists and is of the right kind (headers only)."""
    try:
        model_folders.check_kind(model_folders.resolve(kind, name), kind, name)
    except errors.KiwiError as e:
        return str(e)
    return True


# --- nodes ----------------------------------------------------------------------------------------------

class KiwiDiTLoader:
    DESCRIPTION = ("Load a Wan video DiT alone: a file from models/diffusion_models/ (original Wan, ComfyUI or "
                   "diffusers layout, or a Kiwi-Edit training checkpoint with its source/reference embedders), "
                   "or the transformer of a release in models/kiwi/. Editing needs a DiT with the Kiwi source "
                   "embedder (a Kiwi release or checkpoint).")
    CATEGORY = CATEGORY_LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_DIT,)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The DiT, for Kiwi LoRA Loader or Kiwi Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit_name": (model_folders.choices("dit"),
                         tip("The DiT file (models/diffusion_models/) or a release's transformer.")),
            "dtype": (DIT_DTYPES, tip(DTYPE_TIP + " fp8_e4m3fn stores the block weights in 8 bits (half the memory "
                                      "of bf16) and computes in bf16.", default="auto")),
            "device": (DEVICES, tip(DEVICE_TIP, default="auto")),
            "attention": (ATTENTION, tip("Attention kernel. auto picks the fastest installed one.", default="auto")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, dit_name):
        return _validated("dit", dit_name)

    @classmethod
    def IS_CHANGED(cls, dit_name, **_):
        return files_fingerprint("dit", dit_name)

    def load(self, dit_name, dtype, device, attention):
        return (load_dit_cached(model_folders.resolve("dit", dit_name), dtype, device, attention),)


class KiwiVAELoader:
    DESCRIPTION = ("Load a Wan VAE alone: a file from models/vae/ (e.g. wan2.2_vae.safetensors for the 5B Kiwi-Edit "
                   "models, wan_2.1_vae.safetensors for Wan2.1 DiTs) or the vae/ of a release in models/kiwi/.")
    CATEGORY = CATEGORY_LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_VAE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The VAE, for Kiwi Encode Source and Kiwi VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (model_folders.choices("vae"), tip("The VAE file (models/vae/) or a release's vae/.")),
            "dtype": (DTYPES, tip(DTYPE_TIP, default="auto")),
            "device": (DEVICES, tip(DEVICE_TIP, default="auto")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, vae_name):
        return _validated("vae", vae_name)

    @classmethod
    def IS_CHANGED(cls, vae_name, **_):
        return files_fingerprint("vae", vae_name)

    def load(self, vae_name, dtype, device):
        path = model_folders.resolve("vae", vae_name)
        if model_folders.is_release_folder(path):
            path = path / "vae"
        return (load_vae_cached(path, dtype, device),)


class KiwiMLLMLoader:
    DESCRIPTION = ("Load the Qwen2.5-VL instruction encoder alone: a release's MLLM (from models/kiwi/, or a folder "
                   "in models/text_encoders/ holding mllm_encoder/ and processor/), or a stock Qwen2.5-VL folder "
                   "plus a Kiwi-Edit training checkpoint holding the learnable queries, connectors and LoRA.")
    CATEGORY = CATEGORY_LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_MLLM,)
    RETURN_NAMES = ("mllm",)
    OUTPUT_TOOLTIPS = ("The instruction encoder, for Kiwi MLLM Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mllm_name": (model_folders.choices("mllm"),
                          tip("A folder in models/text_encoders/ (Qwen2.5-VL, or mllm_encoder/ + processor/) or a "
                              "release's MLLM.")),
            "kiwi_checkpoint": ([NO_CHECKPOINT] + comfy_adapter.model_files("diffusion_models"),
                                tip("Only with a stock Qwen2.5-VL folder: a Kiwi-Edit training checkpoint "
                                    "(models/diffusion_models/) whose mllm.* tensors (queries, connectors, LoRA) "
                                    "complete it. 'none' for a release.", default=NO_CHECKPOINT)),
            "dtype": (DTYPES, tip(DTYPE_TIP, default="auto")),
            "device": (DEVICES, tip("Where the weights wait between runs. auto: in RAM, moved to the GPU only "
                                    "while encoding (the encoder runs once per edit). cpu: also encode on the CPU "
                                    "when ComfyUI runs with --cpu.", default="auto")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, mllm_name, kiwi_checkpoint):
        ok = _validated("mllm", mllm_name)
        if ok is not True or kiwi_checkpoint == NO_CHECKPOINT:
            return ok
        try:
            model_folders.resolve("dit", kiwi_checkpoint)
        except errors.KiwiError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, mllm_name, kiwi_checkpoint, **_):
        ckpt = "" if kiwi_checkpoint == NO_CHECKPOINT else files_fingerprint("dit", kiwi_checkpoint)
        return files_fingerprint("mllm", mllm_name) + ckpt

    def load(self, mllm_name, kiwi_checkpoint, dtype, device):
        path = model_folders.resolve("mllm", mllm_name)
        ckpt = None if kiwi_checkpoint == NO_CHECKPOINT else model_folders.resolve("dit", kiwi_checkpoint)
        return (load_mllm_cached(path, ckpt, dtype, device),)


NODE_CLASS_MAPPINGS = {"KiwiDiTLoader": KiwiDiTLoader, "KiwiVAELoader": KiwiVAELoader,
                       "KiwiMLLMLoader": KiwiMLLMLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiDiTLoader": "Kiwi DiT Loader", "KiwiVAELoader": "Kiwi VAE Loader",
                              "KiwiMLLMLoader": "Kiwi MLLM Loader"}
