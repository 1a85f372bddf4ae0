"""The one set of helpers of the Kiwi Edit nodes: custom type names, categories, option lists, tooltips,
small converters.

Custom types flowing between the nodes (none of them is a ComfyUI MODEL/VAE/LATENT: ComfyUI's own
nodes cannot use them, and pretending otherwise would fail in confusing ways):

- KIWI_DIT           comfy_kiwi.models.dit_lora.DiTHandle (the DiT + LoRAs to apply while sampling)
- KIWI_VAE           comfy_kiwi.models.wan_vae.WanVAE
- KIWI_MLLM          comfy_kiwi.mllm.encoder.MLLMEncoder
- KIWI_CONDITIONING  comfy_kiwi.pipeline.EditConditioning (MLLM context, optional CFG negative)
- KIWI_SOURCE        comfy_kiwi.pipeline.SourceConditioning (source + reference latents)
- KIWI_LATENT        torch.Tensor [1, C, f, h, w]: normalised Wan latents (to and from ComfyUI's LATENT:
                     nodes/comfy_latent.py)
- KIWI_VLM / KIWI_CLIP / KIWI_SAM  the judge's Qwen2.5-VL, CLIP / PickScore and Segment Anything models
                     (comfy_kiwi.judging)

Nodes import the library statically (``from comfy_kiwi...``); the pack's entry point (the root
``__init__.py``) makes ``comfy_kiwi`` importable when the pack was cloned into custom_nodes/ without
``pip install``. The small ComfyUI glue (``comfy_kiwi.comfyui``), ``errors``, ``dtypes`` and ``frames`` are
imported at module level; model code (pipeline, models, methods, loaders, judging, toy) is imported inside
the node function that runs it, so starting ComfyUI does not import it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from comfy_kiwi import errors, frames
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.comfyui import model_cache, model_folders
from comfy_kiwi.dtypes import parse_dtype

log = logging.getLogger("comfy_kiwi.nodes")

KIWI_DIT = "KIWI_DIT"
KIWI_VAE = "KIWI_VAE"
KIWI_MLLM = "KIWI_MLLM"
KIWI_CONDITIONING = "KIWI_CONDITIONING"
KIWI_SOURCE = "KIWI_SOURCE"
KIWI_LATENT = "KIWI_LATENT"
KIWI_VLM = "KIWI_VLM"
KIWI_CLIP = "KIWI_CLIP"
KIWI_SAM = "KIWI_SAM"

CATEGORY_LOADERS = "Kiwi Edit/loaders"
CATEGORY_FRAMES = "Kiwi Edit/frames"
CATEGORY_CONDITIONING = "Kiwi Edit/conditioning"
CATEGORY_SAMPLING = "Kiwi Edit/sampling"
CATEGORY_LATENT = "Kiwi Edit/latent"
CATEGORY_JUDGE = "Kiwi Edit/Judge"
CATEGORY_REFERENCE = "Kiwi Edit/Reference"

DTYPES = ["auto", "bf16", "fp16", "fp32"]
DIT_DTYPES = DTYPES + ["fp8_e4m3fn"]
DEVICES = ["auto", "cpu"]
# the judge / reward / SAM loaders place their model themselves (no offloading between stages): "cuda" pins it
JUDGE_DEVICES = DEVICES + ["cuda"]
ATTENTION = ["auto", "sdpa", "xformers", "flash", "sage"]

DEVICE_TIP = ("Where the weights stay between runs. auto: on ComfyUI's device (GPU when there is one). "
              "cpu: in RAM, moved to the GPU only while this model runs (less VRAM, slower).")
DTYPE_TIP = "Precision of the weights. auto: bf16 on a GPU, fp32 on the CPU."


def tip(text: str, **extra) -> dict:
    """Input options with the tooltip first (every input of every Kiwi node has one)."""
    return {"tooltip": text, **extra}


def torch_dtype(name: str):
    """A dtype choice → torch dtype; "auto" picks by the compute device."""
    return parse_dtype(name, comfy_adapter.compute_device())


def judge_dtype(name: str):
    """A dtype choice of the judge / reward loaders → torch dtype; "auto" → None: the loader picks."""
    return parse_dtype(name)


def device_arg(name: str):
    """A device choice of the judge / reward / SAM loaders → their ``device`` argument (None = auto)."""
    return None if name == "auto" else name


def dumps(obj) -> str:
    """A report as readable JSON (STRING outputs)."""
    return json.dumps(obj, indent=2, ensure_ascii=False)


def as_frames(images, what: str):
    """A ComfyUI IMAGE [B,H,W,C] (any float dtype/device) → float32 CPU frames, or a clear error."""
    return frames.check_frames(images.detach().cpu() if hasattr(images, "detach") else images, what)


def single_image(image, what: str = "reference"):
    """The one image of an IMAGE batch, as [1,H,W,3]; several images are an error, not silently dropped."""
    img = as_frames(image, what)
    if img.shape[0] != 1:
        raise errors.InputError(
            f"the {what} input holds {img.shape[0]} images; connect a single image (e.g. pick one frame with "
            "an image batch node).")
    return img


def files_fingerprint(kind: str, name: str) -> str:
    """For IS_CHANGED: changes when the model's files change on disk, so ComfyUI re-runs the loader
    (whose cache then reloads) instead of reusing its cached output."""
    try:
        path = model_folders.resolve(kind, name)
    except errors.KiwiError:
        return "missing"
    return str(hash(model_cache.files_stamp(path)))


def folder_fingerprint(kind: str, name: str) -> str:
    """IS_CHANGED of the judge / reward / SAM loaders: changes when the model folder's files change."""
    try:
        path = model_folders.resolve_stock_folder(kind, name)
    except errors.KiwiError:
        return "missing"
    return str(hash(model_cache.files_stamp(path)))


def validate_model_folder(kind: str, name: str) -> str | bool:
    """VALIDATE_INPUTS of the judge / reward / SAM loaders: True, or the message ComfyUI shows."""
    try:
        model_folders.resolve_stock_folder(kind, name)
    except errors.KiwiError as e:
        return str(e)
    return True


def resolve_weights(name: str) -> Path:
    """A method's weights file (VIVA, RVEDiT) in models/loras/, or a full path: scripts and tests pass one."""
    path = Path(name)
    if path.is_absolute() and path.is_file():
        return path
    return model_folders.resolve("lora", name)


def step_cache_input() -> dict:
    """The optional step-cache widget every Kiwi sampler ends with (``EditSettings.step_cache``)."""
    return {"step_cache": ("FLOAT", tip(
        "Skip the DiT blocks at steps where they would change little, reusing their last result; decided "
        "while sampling. 0 = off (exact). Higher = faster, less faithful. On the toy model 0.06 skipped 54-55% of "
        "the forwards for at most -0.7% of the judge's score (docs/PERFORMANCE.md).",
        default=0.0, min=0.0, max=1.0, step=0.01))}


def seed_steps_shift_inputs(seed_tip: str = "Seed of the starting noise (drawn on the CPU).",
                            steps_tip: str = "Sampling steps.",
                            shift_tip: str = "Schedule shift: higher spends more steps at high noise.") -> dict:
    """The seed / steps / shift widgets of every Kiwi sampler, in their saved order (saved workflows store
    widget values by position); each sampler may word the tooltips for its own defaults."""
    return {
        "seed": ("INT", tip(seed_tip, default=0, min=0, max=0xffffffffffffffff, control_after_generate=True)),
        "steps": ("INT", tip(steps_tip, default=50, min=1, max=1000)),
        "shift": ("FLOAT", tip(shift_tip, default=5.0, min=0.01, max=100.0, step=0.01)),
    }
