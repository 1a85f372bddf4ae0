"""Reference nodes: grounding, SAM box -> mask, references from masks (local cut-out / background), quality check,
dedupe."""

from __future__ import annotations

import torch

from comfy_kiwi import errors
from comfy_kiwi.comfyui import model_folders

from .common import (CATEGORY_REFERENCE, JUDGE_DEVICES, KIWI_CLIP, KIWI_SAM, KIWI_VLM, device_arg, dumps,
                     folder_fingerprint, tip, validate_model_folder)

_FRAME_INDEX = ("INT", tip("Which frame of the batch to use (negative counts from the end).", default=0,
                           min=-100000, max=100000))


class KiwiGround:
    DESCRIPTION = ("Ask the VLM for the bounding box of something in one frame and return it as a MASK [1,H,W] "
                   "(1 inside the box) and as JSON {\"bbox\": [x0, y0, x1, y1]} in pixels (x1, y1 exclusive). "
                   "Several boxes are merged by 'combine'. Unreadable answers are retried; if all fail the node "
                   "errors, or with on_failure = whole image returns the whole frame as the box (box JSON then "
                   "has \"fallback\": true and the reasons), so a local reference becomes the whole image.")
    CATEGORY = CATEGORY_REFERENCE
    FUNCTION = "ground"
    RETURN_TYPES = ("MASK", "STRING", "STRING")
    RETURN_NAMES = ("mask", "box", "answers")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vlm": (KIWI_VLM, tip("Qwen2.5-VL from Kiwi VLM Loader.")),
            "image": ("IMAGE", tip("Frames; one is grounded (frame_index).")),
            "description": ("STRING", tip("What to find; for target = edited, the edit instruction.", multiline=True,
                                          default="")),
            "target": (["object", "edited", "foreground"],
                       tip("object: find the description; edited: what the edit brought in; foreground: the main "
                           "subjects (for background references).", default="object")),
            "frame_index": _FRAME_INDEX,
            "coordinate_space": (["input", "original", "normalized_1000"],
                                 tip("How the model writes boxes: input = pixels of the image it saw (Qwen2.5-VL), "
                                     "original = pixels of the frame, normalized_1000 = 0..1000 (Qwen2-VL).",
                                     default="input")),
            "combine": (["union", "first", "largest"], tip("What to do with several boxes.", default="union")),
            "attempts": ("INT", tip("Answers to try before giving up.", default=3, min=1, max=20)),
            "seed": ("INT", tip("Seed of the first attempt.", default=0, min=0, max=2 ** 31 - 1)),
            "on_failure": (["error", "whole image"],
                           tip("When no answer gives a box. error: stop the workflow; whole image: the mask covers "
                               "the whole frame (a local reference is then the whole image).", default="error")),
        }}

    def ground(self, vlm, image, description, target, frame_index, coordinate_space, combine, attempts, seed,
               on_failure="error"):
        from comfy_kiwi import judging
        frame = judging.select_frame(image, int(frame_index))[None]
        result = judging.ground(vlm, frame, description, target, coordinate_space, combine, int(attempts), int(seed))
        answers = "\n\n---\n\n".join(result.answers)
        if result.ok:
            return (result.mask, result.box.to_json(), answers)
        if on_failure == "error":
            raise judging.JudgeError("grounding failed: " + " | ".join(result.errors))
        h, w = int(frame.shape[1]), int(frame.shape[2])
        box = {"bbox": [0, 0, w, h], "fallback": True, "errors": result.errors}
        return (torch.ones(1, h, w), dumps(box), answers)


class KiwiSAMLoader:
    DESCRIPTION = ("Load a Segment Anything model (a transformers SamModel folder, e.g. sam-vit-base) from "
                   "models/sams/, local files only. Kiwi Segment Box turns a grounded box into an object mask with it.")
    CATEGORY = CATEGORY_REFERENCE
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_SAM,)
    RETURN_NAMES = ("sam",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam_name": (model_folders.stock_folder_choices("sam"), tip("A SAM folder in models/sams/ (config.json, "
                                                          "model.safetensors, preprocessor config). An absolute "
                                                          "folder path is accepted too.")),
            "device": (JUDGE_DEVICES, tip("auto = CUDA when available.", default="auto")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, sam_name):
        return validate_model_folder("sam", sam_name)

    @classmethod
    def IS_CHANGED(cls, sam_name, **_):
        return folder_fingerprint("sam", sam_name)

    def load(self, sam_name, device):
        from comfy_kiwi import judging
        return (judging.load_sam(model_folders.resolve_stock_folder("sam", sam_name), device=device_arg(device)),)


class KiwiSegmentBox:
    DESCRIPTION = ("Segment the object inside a box (the box JSON of Kiwi Ground) with SAM: the box is SAM's prompt, "
                   "the candidate mask with the highest predicted IoU is kept and limited to the box. Returns the "
                   "object MASK [1,H,W] for Kiwi Reference from Mask.")
    CATEGORY = CATEGORY_REFERENCE
    FUNCTION = "segment"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam": (KIWI_SAM, tip("SAM from Kiwi SAM Loader.")),
            "image": ("IMAGE", tip("Frames; one is segmented (frame_index).")),
            "box": ("STRING", tip("{\"bbox\": [x0, y0, x1, y1]} in pixels (Kiwi Ground's box output).",
                                  forceInput=True)),
            "frame_index": _FRAME_INDEX,
        }}

    def segment(self, sam, image, box, frame_index):
        import json
        from comfy_kiwi import judging
        frame = judging.select_frame(image, int(frame_index))
        try:
            x0, y0, x1, y1 = (int(v) for v in json.loads(box)["bbox"])
        except (ValueError, KeyError, TypeError):
            raise errors.InputError(f"box must be JSON like {{\"bbox\": [x0, y0, x1, y1]}} (Kiwi Ground's box output); "
                               f"got {box[:200]!r}.") from None
        h, w = frame.shape[:2]
        found = judging.Box(max(0, x0), max(0, y0), min(w, x1), min(h, y1))
        if found.area == 0:
            raise errors.InputError(f"the box {[x0, y0, x1, y1]} is empty inside the {w}x{h} frame.")
        return (sam(frame, found)[None],)


class KiwiReferenceFromMask:
    DESCRIPTION = ("Make a reference image from a frame and a mask (from any segmentation node, or Kiwi Ground). "
                   "local: the masked object on white, cropped tightly. background: the masked foreground removed "
                   "and filled (fill_image when given, else the built-in pyramid / diffusion fill); pixels outside "
                   "the mask stay identical. A mask batch of 1 applies to every frame; a larger batch is per frame.")
    CATEGORY = CATEGORY_REFERENCE
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("reference", "used_mask")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", tip("Frames (the edited video, usually).")),
            "mask": ("MASK", tip("Object / foreground mask, 1 = object. Resized to the frame if needed.")),
            "kind": (["local", "background"], tip("local = object cut-out; background = object removed.",
                                                  default="local")),
            "frame_index": _FRAME_INDEX,
            "threshold": ("FLOAT", tip("Mask values above this count as object.", default=0.5, min=0.0, max=1.0,
                                       step=0.01)),
            "margin": ("INT", tip("local: white border around the tight crop, in pixels.", default=0, min=0,
                                  max=4096)),
            "dilate": ("INT", tip("background: grow the removed region by N pixels (hides halos).", default=4, min=0,
                                  max=512)),
            "fill": (["pyramid", "diffuse"], tip("background: built-in fill (pyramid = push-pull; diffuse = pyramid "
                                                 "+ Laplace smoothing).", default="pyramid")),
            "iterations": ("INT", tip("diffuse: smoothing sweeps.", default=200, min=0, max=10000)),
        }, "optional": {
            "fill_image": ("IMAGE", tip("background: an inpainted/clean plate used for the removed region instead "
                                        "of the built-in fill.")),
        }}

    def make(self, image, mask, kind, frame_index, threshold, margin, dilate, fill, iterations, fill_image=None):
        from comfy_kiwi import judging
        frame = judging.select_frame(image, int(frame_index))
        h, w = frame.shape[:2]
        m = judging.select_mask(mask, int(frame_index), (h, w))
        if kind == "local":
            ref = judging.local_reference(frame[None], m, threshold=float(threshold), margin=int(margin))
            used = (m > float(threshold)).float()
        else:
            ref = judging.background_reference(frame[None], m, float(threshold), int(dilate), fill, fill_image,
                                               int(iterations))
            used = judging.hole_mask(m, float(threshold), int(dilate)).float()
        return (ref, used[None])


class KiwiReferenceQuality:
    DESCRIPTION = ("Have the VLM score a reference image 1-10 against the instruction, the edited frame and (when "
                   "connected) the source frame; passed = "
                   "score >= threshold. Unreadable answers are retried; if all fail: error, or score -1 and passed "
                   "false with on_failure = report.")
    CATEGORY = CATEGORY_REFERENCE
    FUNCTION = "check"
    RETURN_TYPES = ("FLOAT", "BOOLEAN", "STRING")
    RETURN_NAMES = ("score", "passed", "answers")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vlm": (KIWI_VLM, tip("Qwen2.5-VL from Kiwi VLM Loader.")),
            "reference": ("IMAGE", tip("The reference to check (first image of the batch).")),
            "edited": ("IMAGE", tip("Edited frames the reference was made from.")),
            "instruction": ("STRING", tip("The editing instruction.", multiline=True, default="")),
            "kind": (["local", "background"], tip("What the reference should show.", default="local")),
            "frame_index": _FRAME_INDEX,
            "threshold": ("FLOAT", tip("Lowest passing score (1-10).", default=6.0, min=1.0, max=10.0, step=0.5)),
            "attempts": ("INT", tip("Answers to try before giving up.", default=3, min=1, max=20)),
            "seed": ("INT", tip("Seed of the first attempt.", default=0, min=0, max=2 ** 31 - 1)),
            "on_failure": (["error", "report"], tip("error: stop; report: score -1, passed false.", default="error")),
        }, "optional": {
            "source": ("IMAGE", tip("The input (source) frames the edit started from; the judge then sees source, "
                                    "edited frame and reference.")),
        }}

    def check(self, vlm, reference, edited, instruction, kind, frame_index, threshold, attempts, seed, on_failure,
              source=None):
        from comfy_kiwi import judging
        frame = judging.select_frame(edited, int(frame_index))[None]
        src = judging.select_frame(source, int(frame_index), "source")[None] if source is not None else None
        q = judging.check_reference_quality(vlm, reference[:1], frame, instruction, kind, float(threshold),
                                            int(attempts), int(seed), source_frame=src)
        if not q.ok and on_failure == "error":
            raise judging.JudgeError("reference quality check failed: " + " | ".join(q.errors))
        answers = "\n\n---\n\n".join(q.answers)
        return (float(q.score) if q.ok else -1.0, bool(q.passed), answers)


class KiwiReferenceDedupe:
    DESCRIPTION = ("Drop near-duplicate references: keep images in order, skipping any whose CLIP image embedding has "
                   "cosine similarity >= threshold with one already kept.")
    CATEGORY = CATEGORY_REFERENCE
    FUNCTION = "dedupe"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("kept", "report")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": (KIWI_CLIP, tip("CLIP model from Kiwi CLIP Loader.")),
            "references": ("IMAGE", tip("A batch of reference images.")),
            "threshold": ("FLOAT", tip("Cosine similarity from which two references count as duplicates.",
                                       default=0.95, min=-1.0, max=1.0, step=0.005)),
        }}

    def dedupe(self, clip, references, threshold):
        from comfy_kiwi import judging
        feats = clip.image_features(references)
        result = judging.dedupe_features(feats, float(threshold))
        kept = references[torch.tensor(result.keep, dtype=torch.long)]
        report = {"kept": result.keep,
                  "dropped": {str(i): {"duplicate_of": d[1], "cosine": round(d[2], 6)}
                              for i, d in result.duplicates.items()}}
        return (kept, dumps(report))


NODE_CLASS_MAPPINGS = {"KiwiGround": KiwiGround, "KiwiSAMLoader": KiwiSAMLoader, "KiwiSegmentBox": KiwiSegmentBox,
                       "KiwiReferenceFromMask": KiwiReferenceFromMask, "KiwiReferenceQuality": KiwiReferenceQuality,
                       "KiwiReferenceDedupe": KiwiReferenceDedupe}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiGround": "Kiwi Ground (VLM box -> mask)",
                              "KiwiSAMLoader": "Kiwi SAM Loader",
                              "KiwiSegmentBox": "Kiwi Segment Box (SAM)",
                              "KiwiReferenceFromMask": "Kiwi Reference from Mask",
                              "KiwiReferenceQuality": "Kiwi Reference Quality Check",
                              "KiwiReferenceDedupe": "Kiwi Reference Dedupe"}
