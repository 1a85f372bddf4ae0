"""VIVA nodes: trained refiner + channel-concat weights, the VLM-instructor encode, and the sampler (CFG 2.0 on the
instruction only by default, VIVA's preset).

Wiring: Kiwi DiT Loader ─→ Kiwi VIVA Loader ──────────────┐
        Kiwi MLLM Loader (Qwen2.5-VL) → Kiwi VIVA Encode ─┼→ Kiwi VIVA Sampler → Kiwi VAE Decode
        Kiwi VAE Loader → Kiwi Encode Source ─────────────┘

Custom type of this module: KIWI_VIVA = comfy_kiwi.methods.viva.VivaWeights (refiner + channel-concat embedder).
"""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.comfyui import model_cache, model_folders, placement

from .common import (KIWI_CONDITIONING, KIWI_DIT, KIWI_LATENT, KIWI_MLLM, KIWI_SOURCE, as_frames,
                     files_fingerprint, resolve_weights, seed_steps_shift_inputs, single_image, tip)
from .common import step_cache_input

KIWI_VIVA = "KIWI_VIVA"
CATEGORY_VIVA = "Kiwi Edit/VIVA"


class KiwiVIVALoader:
    DESCRIPTION = ("Load VIVA weights (viva.safetensors from `python -m trainer train` with a viva preset): the token "
                   "refiner between the Qwen2.5-VL instructor and the DiT, and the channel-concat source embedder. "
                   "They are hooked into the DiT only while Kiwi VIVA Sampler runs.")
    CATEGORY = CATEGORY_VIVA
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_VIVA,)
    RETURN_NAMES = ("viva",)
    OUTPUT_TOOLTIPS = ("VIVA's refiner and source embedder, for Kiwi VIVA Encode and Kiwi VIVA Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights_name": (model_folders.choices("viva"),
                             tip("The VIVA weights file (safetensors) in models/loras/.")),
            "dit": (KIWI_DIT, tip("The DiT the weights were trained with (its width and patch size must match).")),
        }}

    @classmethod
    def IS_CHANGED(cls, weights_name, **_):
        return files_fingerprint("lora", weights_name)

    def load(self, weights_name, dit):
        path = resolve_weights(weights_name)
        from comfy_kiwi.methods import viva as viva_method
        c = dit.model.config      # the weights are shaped for this DiT: its sizes key the cache entry
        return (model_cache.cached_load("viva", path, lambda: viva_method.read_viva(path, dit.model),
                                        dim=c.dim, in_dim=c.in_dim),)


class KiwiVIVAEncode:
    DESCRIPTION = ("VIVA's instructor: the last hidden states of Qwen2.5-VL reading a system prompt, the instruction, "
                   "the source's first frame and an optional reference image (no learnable queries). With "
                   "encode_negative the empty instruction (same frame and reference) is encoded too, so CFG guides "
                   "the instruction only.")
    CATEGORY = CATEGORY_VIVA
    FUNCTION = "encode"
    RETURN_TYPES = (KIWI_CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Instructor hidden states + the refiner, for Kiwi VIVA Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mllm": (KIWI_MLLM, tip("The Qwen2.5-VL encoder (Kiwi MLLM Loader); only its language model's hidden "
                                    "states are used.")),
            "viva": (KIWI_VIVA, tip("The VIVA weights from Kiwi VIVA Loader.")),
            "source": ("IMAGE", tip("The prepared source frames; the instructor sees the first frame.")),
            "instruction": ("STRING", tip("What to change, e.g. 'Make the car red.'", multiline=True, default="")),
            "encode_negative": ("BOOLEAN", tip("Also encode the empty instruction for CFG (VIVA samples with CFG 2.0 "
                                               "on the instruction).", default=True)),
        }, "optional": {
            "reference": ("IMAGE", tip("Optional reference image (one image) the instructor also reads.")),
        }}

    def encode(self, mllm, viva, source, instruction, encode_negative, reference=None):
        if not instruction.strip():
            raise errors.InputError("the instruction is empty: describe the edit, e.g. 'Make the sky a sunset'.")
        frames = as_frames(source, "source")
        ref = None if reference is None else single_image(reference, "reference")
        from comfy_kiwi.methods import viva as viva_method
        with placement.on_device(mllm):
            cond = viva_method.encode(mllm, viva, instruction, frames, ref, bool(encode_negative))
        comfy_adapter.soft_empty_cache()
        return (cond,)


class KiwiVIVASampler:
    DESCRIPTION = ("Edit with VIVA: Euler steps on the shifted flow-matching schedule; at every step the refiner turns "
                   "the instructor's hidden states into the DiT's context for that step's noise level (so the "
                   "cross-attention K/V cache is off), and the source latents enter by channel concatenation + "
                   "projection. CFG 2.0 on the instruction only is VIVA's default.")
    CATEGORY = CATEGORY_VIVA
    FUNCTION = "sample"
    RETURN_TYPES = (KIWI_LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Edited Wan latents (normalised), for Kiwi VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": (KIWI_DIT, tip("The DiT (with any LoRAs, e.g. an Edit-GRPO LoRA) from a Kiwi loader.")),
            "viva": (KIWI_VIVA, tip("The VIVA weights from Kiwi VIVA Loader.")),
            "conditioning": (KIWI_CONDITIONING, tip("The instructor encoding from Kiwi VIVA Encode.")),
            "source": (KIWI_SOURCE, tip("Source latents from Kiwi Encode Source; give it the same reference image as "
                                        "Kiwi VIVA Encode: its VAE latents join the noisy tokens (VIVA Fig. 2), "
                                        "as in training.")),
            **seed_steps_shift_inputs(),
            "cfg": ("FLOAT", tip("Guidance on the instruction only; 2.0 is VIVA's preset, 1.0 turns it off (one DiT "
                                 "pass per step).", default=2.0, min=1.0, max=30.0, step=0.1, round=0.01)),
        }, "optional": step_cache_input()}

    def sample(self, dit, viva, conditioning, source, seed, steps, shift, cfg, step_cache=0.0):
        from comfy_kiwi.methods import viva as viva_method
        if viva_method.refiner_of(conditioning) is None:
            raise errors.InputError("this conditioning is not a VIVA encoding; connect Kiwi VIVA Encode.")
        if source.source_latents is None:
            raise errors.InputError("the source has no latents; connect Kiwi Encode Source.")
        if source.source_latents.shape[1] != dit.model.config.in_dim:
            raise errors.InputError(f"the source has {source.source_latents.shape[1]} latent channels but this DiT "
                                    f"takes {dit.model.config.in_dim}; use the VAE that belongs to the DiT.")
        settings = viva_method.viva_settings(steps=int(steps), shift=float(shift), seed=int(seed),
                                             cfg=float(cfg), progress=True,
                                             step_cache=float(step_cache))
        device = comfy_adapter.compute_device()
        with placement.on_device(dit.model, device), dit.applied():
            viva.refiner.to(device)
            latents = viva_method.sample(dit.model, viva, conditioning, source, settings, device=device)
        return (latents.float().cpu(),)


NODE_CLASS_MAPPINGS = {"KiwiVIVALoader": KiwiVIVALoader, "KiwiVIVAEncode": KiwiVIVAEncode,
                       "KiwiVIVASampler": KiwiVIVASampler}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiVIVALoader": "Kiwi VIVA Loader", "KiwiVIVAEncode": "Kiwi VIVA Encode (instructor)",
                              "KiwiVIVASampler": "Kiwi VIVA Sampler"}
