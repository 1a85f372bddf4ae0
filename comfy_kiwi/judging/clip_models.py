"""CLIP-family models (CLIP, PickScore) from local folders, with preprocessing written here.

A folder holds a transformers ``CLIPModel`` (``config.json`` + safetensors), its tokenizer and a
``preprocessor_config.json``. PickScore ships exactly this layout, so the same loader serves both.

Image preprocessing (no torchvision), per frame, on the 8-bit image:

1. resize so the shortest side is ``size`` (bicubic, Pillow), the other side ``int(size * long /
   short)`` (truncated, like the HF CLIP processor);
2. centre crop to ``crop_size`` (offsets ``(excess) // 2``);
3. ``x / 255``, then ``(x - mean) / std`` with the folder's mean and std.

Features are the projected (not normalised) CLIP embeddings, computed under ``no_grad`` in batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CheckpointError, InputError
from ..mllm.preprocess import frames_to_uint8

__all__ = ["ClipPreprocess", "ClipModel", "load_clip"]

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
             3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}


def _side(value, what: str, source: str) -> int | tuple[int, int]:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    raise CheckpointError(f"{source}: cannot read {what} {value!r} (expected an integer, "
                          "{'shortest_edge': N} or {'height': H, 'width': W}).")


@dataclass(frozen=True)
class ClipPreprocess:
    size: int = 224                       # shortest edge after resizing
    crop: tuple[int, int] = (224, 224)    # (height, width) of the centre crop
    mean: tuple[float, ...] = _CLIP_MEAN
    std: tuple[float, ...] = _CLIP_STD
    rescale: float = 1 / 255
    resample: int = 3
    do_center_crop: bool = True

    @classmethod
    def from_config(cls, data: dict, source: str = "preprocessor_config.json") -> ClipPreprocess:
        size = _side(data.get("size", 224), "size", source)
        if isinstance(size, tuple):
            size = min(size)
        crop = _side(data.get("crop_size", size), "crop_size", source)
        crop = crop if isinstance(crop, tuple) else (crop, crop)
        return cls(size=int(size), crop=(int(crop[0]), int(crop[1])),
                   mean=tuple(float(v) for v in data.get("image_mean", _CLIP_MEAN)),
                   std=tuple(float(v) for v in data.get("image_std", _CLIP_STD)),
                   rescale=float(data.get("rescale_factor", 1 / 255)), resample=int(data.get("resample", 3)),
                   do_center_crop=bool(data.get("do_center_crop", True)))

    def resize_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shortest-edge resize."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, frames) -> torch.Tensor:
        """Frames ``[N,H,W,3]`` (float 0..1 or uint8) -> pixel values ``[N,3,h,w]`` float32."""
        arr = frames_to_uint8(frames, "CLIP input")
        out = []
        resample = _RESAMPLE.get(self.resample, Image.Resampling.BICUBIC)
        for frame in arr:
            img = Image.fromarray(frame, "RGB")
            w, h = self.resize_size(img.width, img.height)
            if (w, h) != img.size:
                img = img.resize((w, h), resample)
            if self.do_center_crop:
                ch, cw = self.crop
                if ch > h or cw > w:
                    raise InputError(f"CLIP crop {cw}x{ch} is larger than the resized image {w}x{h}.")
                top, left = (h - ch) // 2, (w - cw) // 2
                img = img.crop((left, top, left + cw, top + ch))
            out.append(np.asarray(img, dtype=np.uint8))
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() * self.rescale
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std


def _features(out) -> torch.Tensor:
    """get_*_features returns the tensor (transformers 4.x) or an output with pooler_output (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipModel:
    """A CLIPModel with its tokenizer and preprocessing; every method runs without gradients."""

    def __init__(self, model, tokenizer, preprocess: ClipPreprocess, source: str = "", batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.source = source
        self.batch_size = int(batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def logit_scale(self) -> float:
        """The multiplier of cosine similarities: ``exp`` of the stored (log) temperature."""
        return float(self.model.logit_scale.detach().float().exp())

    def to(self, device) -> ClipModel:
        self.model.to(device)
        return self

    @torch.no_grad()
    def image_features(self, frames) -> torch.Tensor:
        """``[N,H,W,3]`` frames -> ``[N, D]`` float32 projected image embeddings (not normalised)."""
        pixels = self.preprocess(frames)
        outs = []
        for i in range(0, pixels.shape[0], self.batch_size):
            chunk = pixels[i:i + self.batch_size].to(self.device, self.dtype)
            outs.append(_features(self.model.get_image_features(pixel_values=chunk)).float().cpu())
        return torch.cat(outs)

    @torch.no_grad()
    def text_features(self, texts) -> torch.Tensor:
        """A string or list of strings -> ``[T, D]`` float32 projected text embeddings."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("CLIP text input must be a string or a non-empty list of strings.")
        max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                           attention_mask=enc["attention_mask"].to(self.device))
        return _features(out).float().cpu()


def load_clip(path, device=None, dtype: torch.dtype | None = None, batch_size: int = 32) -> ClipModel:
    """A local CLIP/PickScore folder (``CLIPModel``; local files only, no remote code)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; expected a local CLIP model folder (config.json, "
                              "model.safetensors, tokenizer files, preprocessor_config.json).")
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{folder}: no config.json; expected a CLIP model folder.")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not readable JSON ({e}).") from None
    if cfg.get("model_type") != "clip":
        raise CheckpointError(f"{cfg_path}: model_type is {cfg.get('model_type')!r}; a CLIPModel folder "
                              "(model_type 'clip', e.g. openai/clip-vit-large-patch14 or PickScore_v1) is needed.")
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"{folder}: no .safetensors weights (only safetensors are loaded).")
    pre_path = folder / "preprocessor_config.json"
    if not pre_path.exists():
        raise CheckpointError(f"{folder}: no preprocessor_config.json (image size, crop, mean and std).")
    preprocess = ClipPreprocess.from_config(json.loads(pre_path.read_text(encoding="utf-8")), str(pre_path))
    from transformers import AutoTokenizer, CLIPModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                          use_safetensors=True, dtype=dtype or torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{folder}: the CLIP model or tokenizer could not be loaded "
                              f"({type(e).__name__}: {first[:300]}).") from None
    if device is None:
        from ..comfyui.adapter import compute_device
        device = compute_device()
    model.to(device).eval().requires_grad_(False)
    return ClipModel(model, tokenizer, preprocess, source=str(folder), batch_size=batch_size)
