"""Kiwi LoRA Loader: add a DiT LoRA (models/loras/) with a strength, without changing the loaded model."""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import model_cache, model_folders

from .common import CATEGORY_LOADERS, KIWI_DIT, files_fingerprint, log, tip

NO_LORA = "none"


def _load_lora(path):
    """Parsed LoRA tensors, cached like the models (a LoRA is re-read only when its file changes)."""
    from comfy_kiwi.models.dit_lora import load_dit_lora
    return model_cache.cached_load("lora", path, lambda: load_dit_lora(path))


class KiwiLoraLoader:
    DESCRIPTION = ("Apply a LoRA to the DiT while it samples. Takes ComfyUI LoraLoader-style Wan LoRA files "
                   "(diffusion_model.blocks.N.self_attn.q.lora_A/lora_B/alpha, also lora_down/lora_up and "
                   "diffusers names). The loaded DiT itself is never modified, so other nodes using it are not "
                   "affected; chain several loaders to stack LoRAs.")
    CATEGORY = CATEGORY_LOADERS
    FUNCTION = "apply"
    RETURN_TYPES = (KIWI_DIT,)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The same DiT with this LoRA added to its list.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": (KIWI_DIT, tip("The DiT from a Kiwi loader (or another Kiwi LoRA Loader).")),
            "lora_name": ([NO_LORA] + model_folders.choices("lora"),
                          tip("The LoRA file in models/loras/. 'none' passes the DiT through unchanged.",
                              default=NO_LORA)),
            "strength": ("FLOAT", tip("LoRA strength: 1.0 = as trained, 0 = off, negative values invert it.",
                                      default=1.0, min=-10.0, max=10.0, step=0.01)),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        if lora_name == NO_LORA:
            return True
        try:
            model_folders.check_kind(model_folders.resolve("lora", lora_name), "lora", lora_name)
        except errors.KiwiError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, lora_name, **_):
        return "none" if lora_name == NO_LORA else files_fingerprint("lora", lora_name)

    def apply(self, dit, lora_name, strength):
        if lora_name == NO_LORA or strength == 0:
            return (dit,)
        lora = _load_lora(model_folders.resolve("lora", lora_name))
        pairs, unmatched = lora.match(dit.model)
        if not pairs:
            raise errors.CheckpointError(
                f"LoRA '{lora_name}' fits none of this DiT's layers (it was trained for another model?). "
                f"First mismatches: {'; '.join(unmatched[:3])}.")
        if unmatched:
            log.warning("LoRA %s: %d of %d layers fit no DiT layer and are skipped: %s", lora_name, len(unmatched),
                        len(lora.layers), "; ".join(unmatched[:5]))
        return (dit.with_lora(lora, strength),)


NODE_CLASS_MAPPINGS = {"KiwiLoraLoader": KiwiLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiLoraLoader": "Kiwi LoRA Loader"}
