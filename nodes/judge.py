"""Judge nodes: load a local Qwen2.5-VL judge, score an edit with a published rubric."""

from __future__ import annotations

import math

from comfy_kiwi.comfyui import model_folders

from .common import (CATEGORY_JUDGE, DTYPES, JUDGE_DEVICES, KIWI_VLM, device_arg, dumps, folder_fingerprint,
                     judge_dtype, tip, validate_model_folder)


class KiwiVLMLoader:
    DESCRIPTION = ("Load a stock Qwen2.5-VL folder (any size; e.g. Qwen2.5-VL-7B-Instruct) from models/text_encoders/ "
                   "as a judge / grounding model. Local files only, no remote code. The pixel budgets set how "
                   "much of each image and video frame the judge sees.")
    CATEGORY = CATEGORY_JUDGE
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_VLM,)
    RETURN_NAMES = ("vlm",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vlm_name": (model_folders.stock_folder_choices("vlm"),
                         tip("A Qwen2.5-VL folder in models/text_encoders/ (the whole Hugging Face repository: "
                             "config.json, model*.safetensors, tokenizer files). An absolute folder path is "
                             "accepted too (API prompts).")),
            "dtype": (DTYPES, tip("Weight dtype; auto = bf16 on GPU, fp32 on CPU.", default="auto")),
            "device": (JUDGE_DEVICES, tip("auto = ComfyUI's device.", default="auto")),
            "max_frames": ("INT", tip("Frames of each video shown to the judge (uniformly sampled).",
                                      default=16, min=1, max=256)),
            "max_pixels_per_frame": ("INT", tip("Pixel budget of each video frame (Qwen resizes to multiples of 28).",
                                                default=262144, min=3136, max=4194304, step=784)),
            "image_max_pixels": ("INT", tip("Pixel budget of each still image (reference, single frames).",
                                            default=802816, min=3136, max=16777216, step=784)),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, vlm_name):
        return validate_model_folder("vlm", vlm_name)

    @classmethod
    def IS_CHANGED(cls, vlm_name, **_):
        return folder_fingerprint("vlm", vlm_name)

    def load(self, vlm_name, dtype, device, max_frames, max_pixels_per_frame, image_max_pixels):
        from comfy_kiwi import judging
        path = model_folders.resolve_stock_folder("vlm", vlm_name)
        settings = judging.VLMSettings(max_frames=int(max_frames), max_pixels_per_frame=int(max_pixels_per_frame),
                                 image_max_pixels=int(image_max_pixels))
        return (judging.load_vlm(path, dtype=judge_dtype(dtype), device=device_arg(device), settings=settings),)


_CAP = {"rubric default": None, "enforce": True, "off": False}


class KiwiJudge:
    DESCRIPTION = ("Score an edit with a VLM judge and a published rubric (VIE-Bench/VIVA 0-10, RefVIE-Bench 1-5, "
                   "OpenVE-Bench 1-5 per category, ImVideoEdit 100 points). Answers that cannot be read are asked "
                   "again with a new seed; when every attempt fails the node errors (or reports overall -1 with "
                   "on_failure = report). Returns the scores as JSON, the overall figure, and the raw answers.")
    CATEGORY = CATEGORY_JUDGE
    FUNCTION = "judge"
    RETURN_TYPES = ("STRING", "FLOAT", "STRING")
    RETURN_NAMES = ("scores_json", "overall", "answers")

    @classmethod
    def INPUT_TYPES(cls):
        from comfy_kiwi.judging import rubrics
        return {"required": {
            "vlm": (KIWI_VLM, tip("Judge model from Kiwi VLM Loader.")),
            "source": ("IMAGE", tip("Source frames (a video as a batch of frames, or one image).")),
            "edited": ("IMAGE", tip("Edited frames.")),
            "instruction": ("STRING", tip("The editing instruction the edit was made from.", multiline=True,
                                          default="")),
            "rubric": ([n for n in rubrics.RUBRIC_NAMES
                        if n not in ("reference-quality", "edit-pair-quality")],
                       tip("vie-bench: mean of 3-4 scores 0-10; refvie-*: mean of 3 scores 1-5 (cap on); "
                           "openve-*: mean of 3 scores 1-5; imvideoedit-100: sum of 4 scores, 0-100; rvedit-100: "
                           "mean of 3 scores 1-100 on frames of at most 512 px.",
                           default="vie-bench")),
            "attempts": ("INT", tip("Answers to try before giving up.", default=3, min=1, max=20)),
            "seed": ("INT", tip("Seed of the first attempt; attempt i uses seed + i - 1.", default=0, min=0,
                                max=2 ** 31 - 1)),
            "cap": (list(_CAP), tip("The rule 'later scores may not exceed the first': the rubric's default "
                                    "(on for RefVIE), always, or never.", default="rubric default")),
            "on_failure": (["error", "report"], tip("error: stop the workflow; report: overall = -1 and the "
                                                    "reasons in scores_json.", default="error")),
            "fps": ("FLOAT", tip("Frame rate of the inputs (tells the judge the time between frames); 0 = unknown.",
                                 default=0.0, min=0.0, max=240.0, step=0.01)),
            "max_new_tokens": ("INT", tip("Longest answer generated.", default=512, min=16, max=4096)),
        }, "optional": {
            "reference": ("IMAGE", tip("Reference image (required by refvie-*; adds Reference Similarity to "
                                       "vie-bench). The first image of the batch is used.")),
        }}

    def judge(self, vlm, source, edited, instruction, rubric, attempts, seed, cap, on_failure, fps, max_new_tokens,
              reference=None):
        from comfy_kiwi import judging
        settings = judging.JudgeSettings(attempts=int(attempts), seed=int(seed), enforce_cap=_CAP[cap],
                                   max_new_tokens=int(max_new_tokens))
        ref = reference[:1] if reference is not None else None
        rate = float(fps) if fps and fps > 0 else None
        result = judging.judge_edit(vlm, source, edited, instruction, ref, rubric, None, settings,
                              source_fps=rate, edited_fps=rate)
        if not result.ok and on_failure == "error":
            result.raise_for_failure()
        overall = float(result.overall) if result.ok and math.isfinite(result.overall) else -1.0
        return (dumps({k: v for k, v in result.to_dict().items() if k != "answers"}), overall,
                "\n\n---\n\n".join(result.answers))


NODE_CLASS_MAPPINGS = {"KiwiVLMLoader": KiwiVLMLoader, "KiwiJudge": KiwiJudge}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiVLMLoader": "Kiwi VLM Loader (judge)", "KiwiJudge": "Kiwi Judge Edit"}
