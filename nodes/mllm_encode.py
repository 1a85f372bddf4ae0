"""Kiwi MLLM Encode: instruction + source frames (+ reference image) → the DiT's context tokens."""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.comfyui import placement

from .common import CATEGORY_CONDITIONING, KIWI_CONDITIONING, KIWI_MLLM, as_frames, single_image, tip


class KiwiMLLMEncode:
    DESCRIPTION = ("Encode the editing instruction together with the source frames (and an optional reference "
                   "image) with the Qwen2.5-VL encoder: one frame uses the image queries, a video the video "
                   "queries, a reference the reference queries (needs a release trained with references; an InstructX "
                   "release puts the reference into the prompt and its video queries read it). "
                   "Optionally also encodes the empty instruction as the negative for CFG.")
    CATEGORY = CATEGORY_CONDITIONING
    FUNCTION = "encode"
    RETURN_TYPES = (KIWI_CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Context tokens for Kiwi Sampler (and the CFG negative when enabled).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mllm": (KIWI_MLLM, tip("The instruction encoder from Kiwi Release Loader or Kiwi MLLM Loader.")),
            "source": ("IMAGE", tip("The prepared source frames (Kiwi Prepare Frames); the encoder samples up to "
                                    "16 of them.")),
            "instruction": ("STRING", tip("What to change, e.g. 'Replace the red car with a blue bicycle.'",
                                          multiline=True, default="")),
            "encode_negative": ("BOOLEAN", tip("Also encode the empty instruction (same frames) as the CFG negative. "
                                               "Needed when Kiwi Sampler's cfg is not 1.0; the releases use 1.0.",
                                               default=False)),
        }, "optional": {
            "reference": ("IMAGE", tip("Optional reference image (one image) showing what to insert or how the "
                                       "result should look.")),
        }}

    def encode(self, mllm, source, instruction, encode_negative, reference=None):
        if not instruction.strip():
            raise errors.InputError("the instruction is empty: describe the edit, e.g. 'Make the sky a sunset'.")
        frames = as_frames(source, "source")
        ref = None if reference is None else single_image(reference, "reference")
        if ref is not None and not mllm.config.accepts_reference:
            raise errors.InputError(
                "this MLLM encoder has no reference branch (an instruction-only release): disconnect the reference "
                "image, or load a release trained with references (reference-only, instruct-reference, or an "
                "InstructX release: its mllm_encoder/config.json says \"reference_without_branch\": \"video\").")
        from comfy_kiwi import pipeline
        from comfy_kiwi.methods import kiwi_edit
        with placement.on_device(mllm) as device:
            cond = kiwi_edit.encode(mllm, instruction, frames, ref, bool(encode_negative), device=device)
        comfy_adapter.soft_empty_cache()
        # small tensors; keeping them on the CPU lets the encoder's device be freed completely
        return (pipeline.EditConditioning(cond.context.cpu(), None if cond.negative is None else cond.negative.cpu()),)


NODE_CLASS_MAPPINGS = {"KiwiMLLMEncode": KiwiMLLMEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiMLLMEncode": "Kiwi MLLM Encode (instruction)"}
