"""Kiwi Prepare Frames: source frames the way the Kiwi-Edit models were trained (4k+1 frames, ×32 sizes)."""

from __future__ import annotations

import warnings

from comfy_kiwi.frames import prepare_frames

from .common import CATEGORY_FRAMES, as_frames, log, tip


class KiwiPrepareFrames:
    DESCRIPTION = ("Prepare source frames (an IMAGE batch, e.g. from Get Video Components or Load Image) as the "
                   "Kiwi-Edit data loader does: keep the first num_frames, make the count 4k+1 (1, 5, 9, ..., 81: "
                   "what the Wan VAE needs), scale down to at most max_pixels and cover-crop to a width and height "
                   "that are multiples of 32. Use the output for every Kiwi node that takes the source.")
    CATEGORY = CATEGORY_FRAMES
    FUNCTION = "prepare"
    RETURN_TYPES = ("IMAGE", "INT", "INT", "INT")
    RETURN_NAMES = ("images", "frame_count", "width", "height")
    OUTPUT_TOOLTIPS = ("The prepared frames.", "Number of frames (4k+1).", "Width in pixels (multiple of 32).",
                       "Height in pixels (multiple of 32).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", tip("Source frames: a video as a batch of images, or one image.")),
            "max_pixels": ("INT", tip("Largest width×height per frame; bigger frames are scaled down. 921600 = "
                                      "1280×720 (the release's benchmark), 409600 = 640×640 for less memory.",
                                      default=921600, min=1024, max=16777216, step=1024)),
            "num_frames": ("INT", tip("Use the first N frames (0 = all). The models were trained on up to 81.",
                                      default=81, min=0, max=100000)),
            "frame_mode": (["trim", "error"], tip("When the count is not 4k+1: trim keeps the largest 4k+1 prefix "
                                                  "(e.g. 80 → 77); error stops and names the nearest valid counts.",
                                                  default="trim")),
        }}

    def prepare(self, images, max_pixels, num_frames, frame_mode):
        frames = as_frames(images, "images")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = prepare_frames(frames, max_pixels=int(max_pixels),
                                                num_frames=int(num_frames) or None, frame_mode=frame_mode)
        for w in caught:
            log.warning("Kiwi Prepare Frames: %s", w.message)
        return (out, int(out.shape[0]), int(out.shape[2]), int(out.shape[1]))


NODE_CLASS_MAPPINGS = {"KiwiPrepareFrames": KiwiPrepareFrames}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiPrepareFrames": "Kiwi Prepare Frames (4k+1, ×32)"}
