"""Long videos (InstructX): edit a video longer than the model's window in overlapping windows."""

from __future__ import annotations

import contextlib

from comfy_kiwi import errors
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.comfyui import placement

from .common import (CATEGORY_SAMPLING, KIWI_DIT, KIWI_MLLM, KIWI_VAE, as_frames, single_image, tip)


class KiwiLongVideoEdit:
    DESCRIPTION = ("Edit a whole video of any length window by window (InstructX): windows of `window` frames "
                   "overlap by one frame, and the last edited frame of each window becomes the first source frame "
                   "of the next, so the edit carries over. Prepares the frames (size, 4k+1), encodes, samples "
                   "and decodes each window; returns every frame.")
    CATEGORY = CATEGORY_SAMPLING
    FUNCTION = "edit"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The edited frames, as many as the prepared source (4k+1).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": (KIWI_DIT, tip("The DiT (with any LoRAs) from a Kiwi loader.")),
            "vae": (KIWI_VAE, tip("The VAE of the same model.")),
            "mllm": (KIWI_MLLM, tip("The MLLM encoder of the same model.")),
            "source": ("IMAGE", tip("All frames of the source video (not cut to 81: that is what this node is for).")),
            "instruction": ("STRING", tip("What to change, e.g. 'Make the car red'.", multiline=True, default="")),
            "window": ("INT", tip("Frames per window (4k+1); 81 is what the models were trained on.",
                                  default=81, min=5, max=257, step=4)),
            "max_pixels": ("INT", tip("Per-frame pixel budget (W·H) before flooring sides to multiples of 32.",
                                      default=921600, min=1024, max=16777216, step=1024)),
            "seed": ("INT", tip("Seed of the starting noise of every window.", default=0, min=0,
                                max=0xffffffffffffffff, control_after_generate=True)),
            "steps": ("INT", tip("Sampling steps per window (release: 50).", default=50, min=1, max=1000)),
            "shift": ("FLOAT", tip("Schedule shift (release: 5).", default=5.0, min=0.01, max=100.0, step=0.01)),
            "cfg": ("FLOAT", tip("Guidance on the instruction; 1.0 = off (the release).", default=1.0, min=0.0,
                                 max=30.0, step=0.1)),
            "schedule": (["kiwi", "diffusers"], tip("Last noise level: 0 (kiwi) or 0.003 (diffusers pipeline).",
                                                    default="kiwi")),
        }, "optional": {
            "reference": ("IMAGE", tip("Optional reference image (first image of the batch).")),
        }}

    def edit(self, dit, vae, mllm, source, instruction, window, max_pixels, seed, steps, shift, cfg, schedule,
             reference=None):
        if not instruction.strip():
            raise errors.InputError("the instruction is empty: describe the edit, e.g. 'Make the sky a sunset'.")
        if (int(window) - 1) % 4:
            raise errors.InputError(f"window must be 4k+1 frames (5, 9, ..., 81), got {window}.")
        frames = as_frames(source, "source")
        ref = None if reference is None else single_image(reference, "reference")
        from comfy_kiwi import pipeline
        from comfy_kiwi.methods import instructx
        settings = pipeline.EditSettings(steps=int(steps), shift=float(shift), schedule=schedule, cfg=float(cfg),
                                         seed=int(seed), max_pixels=int(max_pixels), num_frames=None)
        device = comfy_adapter.compute_device()
        with contextlib.ExitStack() as stack:
            stack.enter_context(placement.on_device(vae, device))
            stack.enter_context(placement.on_device(dit.model, device))
            stack.enter_context(dit.applied())
            pipe = pipeline.EditPipeline(dit.model, vae, mllm, device=device)
            out = instructx.edit(pipe, frames, instruction, ref, settings, window=int(window))
        return (out.float().cpu(),)


NODE_CLASS_MAPPINGS = {"KiwiLongVideoEdit": KiwiLongVideoEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiLongVideoEdit": "Kiwi Long Video Edit (windows)"}
