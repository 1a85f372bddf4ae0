"""Reward / metric nodes: CLIP instruction following, source preservation, PickScore, temporal consistency."""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import model_folders

from .common import (CATEGORY_JUDGE, DTYPES, JUDGE_DEVICES, KIWI_CLIP, device_arg, folder_fingerprint, judge_dtype,
                     tip, validate_model_folder)


class KiwiCLIPLoader:
    DESCRIPTION = ("Load a CLIP model folder from models/clip_vision/ (transformers CLIPModel: config.json, "
                   "model.safetensors, tokenizer, preprocessor_config.json; e.g. openai/clip-vit-large-patch14). "
                   "PickScore_v1 has the same layout: load it here too.")
    CATEGORY = CATEGORY_JUDGE
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_CLIP,)
    RETURN_NAMES = ("clip",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_name": (model_folders.stock_folder_choices("clip"),
                          tip("A CLIP or PickScore folder in models/clip_vision/ (the whole Hugging Face repository). "
                              "An absolute folder path is accepted too (API prompts).")),
            "dtype": (DTYPES, tip("Weight dtype; auto = fp32.", default="auto")),
            "device": (JUDGE_DEVICES, tip("auto = ComfyUI's device.", default="auto")),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, clip_name):
        return validate_model_folder("clip", clip_name)

    @classmethod
    def IS_CHANGED(cls, clip_name, **_):
        return folder_fingerprint("clip", clip_name)

    def load(self, clip_name, dtype, device):
        path = model_folders.resolve_stock_folder("clip", clip_name)
        from comfy_kiwi import judging
        return (judging.load_clip(path, device=device_arg(device), dtype=judge_dtype(dtype)),)


class KiwiRewards:
    DESCRIPTION = ("CLIP rewards of an edit. R_IF = C(edited, instruction_edit) - C(edited, text_source); "
                   "R_SP = C(source, edited) on image features; PickScore = exp(logit_scale) * C(edited, "
                   "instruction_edit); temporal consistency = mean cosine of consecutive edited frames; weighted = "
                   "sum of weight x term. C averages the frames' normalised CLIP features (or the per-frame "
                   "cosines, with aggregation = mean_cosine).")
    CATEGORY = CATEGORY_JUDGE
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("r_if", "r_sp", "pickscore", "weighted", "temporal_consistency")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": (KIWI_CLIP, tip("CLIP model from Kiwi CLIP Loader.")),
            "source": ("IMAGE", tip("Source frames.")),
            "edited": ("IMAGE", tip("Edited frames.")),
            "instruction_edit": ("STRING", tip("Text the edited video should match (instruction or target caption).",
                                               multiline=True, default="")),
            "text_source": ("STRING", tip("Caption of the source video (R_IF subtracts its similarity).",
                                          multiline=True, default="")),
            "weight_if": ("FLOAT", tip("Weight of R_IF in the weighted sum.", default=1.0, min=-100.0, max=100.0,
                                       step=0.01)),
            "weight_sp": ("FLOAT", tip("Weight of R_SP.", default=1.0, min=-100.0, max=100.0, step=0.01)),
            "weight_pickscore": ("FLOAT", tip("Weight of PickScore (needs the pickscore input; PickScore is about "
                                              "20, so small weights).", default=0.0, min=-100.0, max=100.0,
                                              step=0.001)),
            "weight_tc": ("FLOAT", tip("Weight of temporal consistency.", default=0.0, min=-100.0, max=100.0,
                                       step=0.01)),
            "max_frames": ("INT", tip("Frames sampled per video for R_IF, R_SP and PickScore.", default=8, min=1,
                                      max=1024)),
            "aggregation": (["mean_embedding", "mean_cosine"], tip("How frames combine into one similarity.",
                                                                   default="mean_embedding")),
        }, "optional": {
            "pickscore": (KIWI_CLIP, tip("PickScore model (a CLIP folder with PickScore weights); without it the "
                                         "pickscore output is 0.")),
        }}

    def score(self, clip, source, edited, instruction_edit, text_source, weight_if, weight_sp, weight_pickscore,
              weight_tc, max_frames, aggregation, pickscore=None):
        from comfy_kiwi import judging
        if not instruction_edit.strip():
            raise errors.InputError("instruction_edit is empty: R_IF and PickScore need the text the edit "
                                    "should match.")
        if not text_source.strip():
            raise errors.InputError("text_source is empty: R_IF needs a caption of the source video.")
        weights = {"instruction_following": weight_if, "source_preservation": weight_sp,
                   "pickscore": weight_pickscore if pickscore is not None else 0.0, "temporal_consistency": weight_tc}
        settings = judging.RewardSettings(max_frames=int(max_frames), aggregation=aggregation)
        rewards = judging.ClipRewards(clip, pickscore, settings, weights)
        out = rewards.compute(source, edited, instruction_edit, text_source)
        get = lambda k: float(out[k]) if k in out else 0.0  # noqa: E731
        return (get("instruction_following"), get("source_preservation"), get("pickscore"), get("weighted"),
                get("temporal_consistency"))


NODE_CLASS_MAPPINGS = {"KiwiCLIPLoader": KiwiCLIPLoader, "KiwiRewards": KiwiRewards}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiCLIPLoader": "Kiwi CLIP / PickScore Loader", "KiwiRewards": "Kiwi CLIP Rewards"}
