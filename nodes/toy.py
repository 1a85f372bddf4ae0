"""Toy-world nodes: the embedded toy model (edits out of the box, no downloads), toy examples with
their ground truth, and the toy judge. See docs/TOY_BENCHMARK.md of comfy-kiwi."""

from __future__ import annotations

import json

from comfy_kiwi.comfyui import model_cache
from comfy_kiwi.errors import InputError

from .common import CATEGORY_LOADERS, KIWI_DIT, KIWI_MLLM, KIWI_VAE, tip

CATEGORY_TOY = "Kiwi Edit/toy"
TOY_EXAMPLE = "KIWI_TOY_EXAMPLE"
ANY_KINDS = ("any without reference", "any with reference")


class KiwiToyModelLoader:
    DESCRIPTION = ("The embedded toy Kiwi model (a few MB, trained by comfy-kiwi on its toy world of coloured "
                   "shapes): DiT with source/reference embedders, the toy patch codec in the VAE slot, and a small "
                   "Qwen2.5-VL encoder. It really edits toy videos (recolour, remove, add, replace, background, "
                   "reference add/replace) and needs no downloads; it knows nothing about real footage.")
    CATEGORY = CATEGORY_LOADERS
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_DIT, KIWI_VAE, KIWI_MLLM)
    RETURN_NAMES = ("dit", "vae", "mllm")
    OUTPUT_TOOLTIPS = ("The toy DiT (with Kiwi source/reference embedders).",
                       "The toy world's lossless patch codec (in place of the Wan2.2 VAE).",
                       "The toy Qwen2.5-VL instruction encoder with its learnable queries.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from comfy_kiwi.models.dit_lora import DiTHandle
        from comfy_kiwi.toy import release
        folder = release.DEFAULT_MODEL_DIR
        pipe = model_cache.cached_load("toy-pipeline", folder, lambda: release.load_toy_pipeline(folder))
        return (DiTHandle(pipe.dit), pipe.vae, pipe.mllm)


class KiwiToyExample:
    DESCRIPTION = ("A toy-world edit from a seed: the source video (17 frames, 32×32), a templated instruction, "
                   "the reference image (reference edits; a white image otherwise) and the ground truth the "
                   "Kiwi Toy Judge scores against. The same seed always gives the same example.")
    CATEGORY = CATEGORY_TOY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "STRING", "IMAGE", TOY_EXAMPLE, "IMAGE")
    RETURN_NAMES = ("source", "instruction", "reference", "example", "target")
    OUTPUT_TOOLTIPS = ("Source frames [F,H,W,3].", "The edit instruction.",
                       "The reference image (white when the edit needs none).",
                       "The example with its ground truth, for the Kiwi Toy Judge.", "The ground-truth edited frames.")

    @classmethod
    def INPUT_TYPES(cls):
        from comfy_kiwi.toy import world
        return {"required": {
            "seed": ("INT", tip("Which example (held-out examples of the benchmark start at 1000000).",
                                default=2000000, min=0, max=2 ** 31 - 1)),
            "kind": ([*ANY_KINDS, *world.EDIT_KINDS],
                     tip("The edit kind, or any kind with / without a reference image (wire the reference "
                         "output to the MLLM and source encoders only for reference kinds).",
                         default=ANY_KINDS[0])),
        }}

    def make(self, seed, kind):
        from comfy_kiwi.toy import data, world
        if not 0 <= int(seed) < 2 ** 31:
            raise InputError(f"seed must be in 0 … 2^31 − 1, got {seed}.")
        kinds = {ANY_KINDS[0]: data.PLAIN_KINDS, ANY_KINDS[1]: world.REFERENCE_KINDS}.get(kind, (kind,))
        ex = world.make_example(int(seed), kinds)
        ref = data.example_reference(ex)
        if ref is None:
            ref = data.example_frames(ex, "source")[:1].clone().fill_(1.0)
        return (data.example_frames(ex, "source"), ex.instruction, ref, ex, data.example_frames(ex, "target"))


class KiwiToyJudge:
    DESCRIPTION = ("Score an edited toy video against the example's ground truth: compliance (the edit happened "
                   "where it should), preservation (everything else unchanged), temporal consistency (no flicker) "
                   "and overall (their product), each in 0..1; and cleanliness, how close the raw pixels are to "
                   "the toy palette before the judge snaps them (1 = clean, 0 = static).")
    CATEGORY = CATEGORY_TOY
    FUNCTION = "judge"
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report", "compliance", "preservation", "temporal", "overall", "cleanliness")
    OUTPUT_TOOLTIPS = ("The scores as JSON (wire to Preview Any to read them).", "0..1", "0..1", "0..1",
                       "compliance × preservation × temporal",
                       "0..1: 1 − the raw pixels' mean distance to the palette (in half palette gaps)")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "edited": ("IMAGE", tip("The edited frames (from Kiwi VAE Decode).")),
            "example": (TOY_EXAMPLE, tip("The Kiwi Toy Example that was edited.")),
        }}

    def judge(self, edited, example):
        from comfy_kiwi.toy.judge import score_edit
        s = score_edit(edited.detach().cpu(), example)
        report = json.dumps({"instruction": example.instruction, **{k: round(v, 4) for k, v in s.as_dict().items()}})
        return (report, s.compliance, s.preservation, s.temporal, s.overall, s.cleanliness)


NODE_CLASS_MAPPINGS = {"KiwiToyModelLoader": KiwiToyModelLoader, "KiwiToyExample": KiwiToyExample,
                       "KiwiToyJudge": KiwiToyJudge}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiToyModelLoader": "Kiwi Toy Model Loader", "KiwiToyExample": "Kiwi Toy Example",
                              "KiwiToyJudge": "Kiwi Toy Judge"}
