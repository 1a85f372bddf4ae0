"""ImVideoEdit nodes: trained Predict-Update modules on a Wan2.1 T2V DiT, the umT5 caption encoder, and the sampler.

Wiring: Kiwi DiT Loader → Kiwi ImVideoEdit Loader ─┐
        Kiwi UMT5 Loader → Kiwi UMT5 Encode ────────┼→ Kiwi ImVideoEdit Sampler → Kiwi VAE Decode
        Kiwi VAE Loader → Kiwi Encode Source ───────┘

Custom types of this module (besides those in common.py):

- KIWI_IMVIDEOEDIT        ImVideoEditHandle (DiT handle + ImVideoEdit weights)
- KIWI_UMT5               comfy_kiwi.text_encoders.umt5.UMT5TextEncoder
- KIWI_UMT5_CONDITIONING  comfy_kiwi.pipeline.EditConditioning holding the padded umT5 context [1, L, C]
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_kiwi import errors
from comfy_kiwi.comfyui import model_cache, model_folders, placement

from .common import (DEVICES, DTYPE_TIP, DTYPES, KIWI_DIT, KIWI_LATENT, KIWI_SOURCE, files_fingerprint,
                     resolve_weights, seed_steps_shift_inputs, tip, torch_dtype)
from .common import step_cache_input

KIWI_IMVIDEOEDIT = "KIWI_IMVIDEOEDIT"
KIWI_UMT5 = "KIWI_UMT5"
KIWI_UMT5_CONDITIONING = "KIWI_UMT5_CONDITIONING"
CATEGORY_IMVIDEOEDIT = "Kiwi Edit/ImVideoEdit"


@dataclass(frozen=True)
class ImVideoEditHandle:
    """A DiT handle plus ImVideoEdit weights. The (possibly shared, cached) DiT is only hooked inside
    ``applied()``, so other nodes using the same DiT never see the modules."""

    dit: object                      # comfy_kiwi.models.dit_lora.DiTHandle
    weights: dict

    def applied(self):
        from comfy_kiwi.methods import imvideoedit
        return imvideoedit.applied(self.dit.model, self.weights)


# --- nodes ---------------------------------------------------------------------------------------------

class KiwiImVideoEditLoader:
    DESCRIPTION = ("Load ImVideoEdit weights (imvideoedit.blocks.N.*, written by `python -m trainer train` with "
                   "the imvideoedit preset) for a Wan2.1 T2V DiT. The modules run beside every self-attention, "
                   "edit each frame of the source video, and leave the DiT's own weights untouched.")
    CATEGORY = CATEGORY_IMVIDEOEDIT
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_IMVIDEOEDIT,)
    RETURN_NAMES = ("imvideoedit",)
    OUTPUT_TOOLTIPS = ("The DiT together with the ImVideoEdit modules, for Kiwi ImVideoEdit Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights_name": (model_folders.choices("imvideoedit"),
                             tip("The ImVideoEdit weights file (safetensors) in models/loras/.")),
            "dit": (KIWI_DIT, tip("The Wan2.1 T2V DiT the modules were trained on (e.g. Wan2.1-T2V-1.3B).")),
        }}

    @classmethod
    def IS_CHANGED(cls, weights_name, **_):
        return files_fingerprint("lora", weights_name)

    def load(self, weights_name, dit):
        from comfy_kiwi.methods import imvideoedit as ive
        from comfy_kiwi.methods.imvideoedit_pipeline import check_dit
        check_dit(dit.model)
        path = resolve_weights(weights_name)
        weights = model_cache.cached_load("imvideoedit", path, lambda: ive.read_weights(path))
        with ive.applied(dit.model, weights):          # checks the shapes against this DiT now, not at sampling
            pass
        return (ImVideoEditHandle(dit, weights),)


class KiwiUMT5Loader:
    DESCRIPTION = ("Load the umT5 text encoder of Wan2.1 from a folder in models/text_encoders/: a transformers "
                   "umT5 folder (config.json, weights, tokenizer files) or a diffusers Wan2.1 folder holding "
                   "text_encoder/ and tokenizer/. ImVideoEdit reads the caption of the edited video through it.")
    CATEGORY = CATEGORY_IMVIDEOEDIT
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_UMT5,)
    RETURN_NAMES = ("umt5",)
    OUTPUT_TOOLTIPS = ("The umT5 encoder, for Kiwi UMT5 Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "encoder_name": (model_folders.umt5_choices(), tip("The umT5 folder in models/text_encoders/.")),
            "dtype": (DTYPES, tip(DTYPE_TIP, default="auto")),
            "device": (DEVICES, tip("Where the weights wait between runs. auto: in RAM, moved to the GPU only while "
                                    "encoding (it runs once per edit). cpu: also encode on the CPU when ComfyUI "
                                    "runs with --cpu.", default="auto")),
        }}

    @classmethod
    def IS_CHANGED(cls, encoder_name, **_):
        return files_fingerprint("mllm", encoder_name)        # the mllm kind's folder is models/text_encoders/

    def load(self, encoder_name, dtype, device):
        from comfy_kiwi.text_encoders.umt5 import UMT5TextEncoder
        path = model_folders.resolve_umt5(encoder_name)
        home, td = placement.home_device(device, "mllm"), torch_dtype(dtype)
        return (model_cache.cached_load("umt5", path, lambda: UMT5TextEncoder(path, dtype=td, device=home),
                                        dtype=td, device=home),)


class KiwiUMT5Encode:
    DESCRIPTION = ("Encode the caption of the edited video with umT5 (e.g. \"a red car on a snowy street\"), "
                   "zero-padded as Wan does. ImVideoEdit is trained on captions of the target, not on instructions.")
    CATEGORY = CATEGORY_IMVIDEOEDIT
    FUNCTION = "encode"
    RETURN_TYPES = (KIWI_UMT5_CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The caption context, for Kiwi ImVideoEdit Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "umt5": (KIWI_UMT5, tip("The encoder from Kiwi UMT5 Loader.")),
            "caption": ("STRING", tip("What the edited video shows.", default="", multiline=True)),
            "text_len": ("INT", tip("Context length the modules were trained with (the trainer's data.text_len); "
                                    "512 as in Wan.", default=512, min=1, max=512)),
        }}

    def encode(self, umt5, caption, text_len):
        from comfy_kiwi import pipeline
        from comfy_kiwi.methods.imvideoedit_pipeline import caption_context
        with placement.on_device(umt5.model):
            context = caption_context(umt5, caption, int(text_len))
        return (pipeline.EditConditioning(context.float().cpu()),)


class KiwiImVideoEditSampler:
    DESCRIPTION = ("Edit with ImVideoEdit: Euler steps on the shifted flow-matching schedule, the source video "
                   "beside the noisy target in one paired batch (frame by frame), the caption context from Kiwi "
                   "UMT5 Encode. The modules are hooked into the DiT only while this node runs.")
    CATEGORY = CATEGORY_IMVIDEOEDIT
    FUNCTION = "sample"
    RETURN_TYPES = (KIWI_LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Edited Wan2.1 latents (normalised), for Kiwi VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "imvideoedit": (KIWI_IMVIDEOEDIT, tip("The DiT with ImVideoEdit weights from Kiwi ImVideoEdit Loader.")),
            "conditioning": (KIWI_UMT5_CONDITIONING, tip("The caption context from Kiwi UMT5 Encode.")),
            "source": (KIWI_SOURCE, tip("Source latents from Kiwi Encode Source, encoded with the Wan2.1 VAE "
                                        "(no reference image).")),
            **seed_steps_shift_inputs(
                "Seed of the starting noise (drawn on the CPU, so a seed gives the same result on every machine).",
                "Sampling steps; 50 as Wan, 20-30 are often enough."),
            "schedule": (["kiwi", "diffusers"], tip("Last noise level: kiwi goes down to 0 (as the trainer's samples), "
                                                    "diffusers stops at 0.003.", default="kiwi")),
        }, "optional": step_cache_input()}

    def sample(self, imvideoedit, conditioning, source, seed, steps, shift, schedule, step_cache=0.0):
        from comfy_kiwi import pipeline
        from comfy_kiwi.methods.imvideoedit_pipeline import sample_imvideoedit
        if source.source_latents is None:
            raise errors.InputError("the source has no latents; connect Kiwi Encode Source.")
        if source.reference_latents is not None:
            raise errors.InputError("ImVideoEdit does not take a reference image; disconnect the reference from "
                                    "Kiwi Encode Source and describe the edit in the caption.")
        settings = pipeline.EditSettings(steps=int(steps), shift=float(shift), schedule=schedule, seed=int(seed),
                                         progress=True, step_cache=float(step_cache))
        dit = imvideoedit.dit
        with placement.on_device(dit.model):          # LoRAs of the DiT handle go on after the modules attach
            latents = sample_imvideoedit(
                dit.model, imvideoedit.weights, source.source_latents, conditioning.context, settings,
                while_applied=dit.applied)
        return (latents.float().cpu(),)


NODE_CLASS_MAPPINGS = {"KiwiImVideoEditLoader": KiwiImVideoEditLoader, "KiwiUMT5Loader": KiwiUMT5Loader,
                       "KiwiUMT5Encode": KiwiUMT5Encode, "KiwiImVideoEditSampler": KiwiImVideoEditSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiImVideoEditLoader": "Kiwi ImVideoEdit Loader",
                              "KiwiUMT5Loader": "Kiwi UMT5 Loader", "KiwiUMT5Encode": "Kiwi UMT5 Encode",
                              "KiwiImVideoEditSampler": "Kiwi ImVideoEdit Sampler"}
