"""Kiwi Encode Source: VAE-encode the source video (and reference image) for the sampler's latent injection."""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import placement
from comfy_kiwi.frames import nearest_valid_frame_counts

from .common import CATEGORY_CONDITIONING, KIWI_SOURCE, KIWI_VAE, as_frames, single_image, tip

REFERENCE_POSITIONS = {"model default": None, "first": True, "last": False}


def check_source_frames(frames, vae) -> None:
    """The frame count and size the VAE and DiT need, with the fix in the message."""
    n, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
    multiple = 2 * vae.config.spatial_factor         # VAE downsampling × the DiT's 2×2 patches
    if (n - 1) % 4:
        lower, upper = nearest_valid_frame_counts(n)
        raise errors.InputError(
            f"the source has {n} frames, but the Wan VAE needs 4k+1 frames (1, 5, 9, ..., 81); nearest valid counts "
            f"are {lower} and {upper}. Connect the frames through Kiwi Prepare Frames first.")
    if h % multiple or w % multiple:
        raise errors.InputError(
            f"the source frames are {w}×{h}; this VAE needs width and height that are multiples of {multiple}. "
            "Connect the frames through Kiwi Prepare Frames first.")


class KiwiEncodeSource:
    DESCRIPTION = ("VAE-encode the prepared source frames: the sampler adds these latents to the DiT input "
                   "(scaled by the noise level), which keeps the edit aligned with the source. An optional "
                   "reference image is fitted onto a white canvas of the source size (any size or aspect works), "
                   "encoded, and appended to the token sequence.")
    CATEGORY = CATEGORY_CONDITIONING
    FUNCTION = "encode"
    RETURN_TYPES = (KIWI_SOURCE,)
    RETURN_NAMES = ("source",)
    OUTPUT_TOOLTIPS = ("Source (and reference) latents for Kiwi Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (KIWI_VAE, tip("The VAE from Kiwi Release Loader or Kiwi VAE Loader.")),
            "source": ("IMAGE", tip("The prepared source frames (Kiwi Prepare Frames): 4k+1 frames, sizes in "
                                    "multiples of 32.")),
            "reference_position": (list(REFERENCE_POSITIONS),
                                   tip("Where the reference sits in the token sequence. model default: as the "
                                       "release was trained (first for reference-only, last for "
                                       "instruct-reference). Ignored without a reference.",
                                       default="model default")),
            "tiled": ("BOOLEAN", tip("Encode in overlapping tiles: much less memory for large videos, "
                                     "slightly slower.", default=False)),
        }, "optional": {
            "reference": ("IMAGE", tip("Optional reference image (one image). Use the same image as for Kiwi "
                                       "MLLM Encode.")),
        }}

    def encode(self, vae, source, reference_position, tiled, reference=None):
        if reference_position not in REFERENCE_POSITIONS:
            raise errors.InputError(f"reference_position {reference_position!r}: choose one of "
                                    f"{', '.join(REFERENCE_POSITIONS)}.")
        frames = as_frames(source, "source")
        check_source_frames(frames, vae)
        ref = None if reference is None else single_image(reference, "reference")
        from comfy_kiwi import pipeline
        with placement.on_device(vae) as device:
            pipe = pipeline.EditPipeline(None, vae, None, device=device)
            src = pipe.encode_source(frames, ref, REFERENCE_POSITIONS[reference_position], tiled=bool(tiled))
        return (pipeline.SourceConditioning(
            src.source_latents.cpu(), None if src.reference_latents is None else src.reference_latents.cpu(),
            src.reference_first),)


NODE_CLASS_MAPPINGS = {"KiwiEncodeSource": KiwiEncodeSource}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiEncodeSource": "Kiwi Encode Source (+ reference)"}
