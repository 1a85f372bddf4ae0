"""Pixels for the Qwen2.5-VL vision tower, exactly as the released Kiwi-Edit code prepared them.

Released path (transformers 4.57 + the qwen_vl_utils copy shipped with Kiwi-Edit), for a video given
as a list of frames:

1. frame selection: more than ``max_frames`` frames -> ``linspace(0, n-1, max_frames).round()``;
2. per frame, PIL bicubic resize to multiples of **56** (the released code passes 28 as the patch
   size, which doubles again): min ``4*56^2`` pixels, max ``max_pixels_per_frame`` or ``16384*56^2``;
3. the whole stack resized again to multiples of 28 with min ``128*28^2`` and max
   ``min(max_pixels_per_frame, 768*28^2)``: torch bicubic with antialias on the uint8 stack, clamped
   and rounded back to uint8 levels (what torchvision's tensor resize does), then float 0..255.
   With the inference cap (262144) this step keeps the size; without a cap (training) it shrinks;
4. the HF processor then resized to its own factor-28 grid (a no-op: the size already fits),
   rescaled by 1/255, normalised with the CLIP mean/std and cut into patches. ``fps`` was not
   passed, so the processor used 2.0 (``second_per_grid_ts`` = 1.0).

Images (image mode source, reference image) went through one PIL bicubic resize to multiples of 28
(min ``4*28^2``, max 16384*28^2 or the reference cap), then step 4.

Step 4 is done here too instead of calling transformers' processors: the transformers 5 video
processor needs torchvision (not a dependency of this project), samples with a default fps of 24
when given bare frames, and its defaults keep changing (``cap_pixels_per_frame``). Doing the few
lines of normalise + patchify ourselves pins the released numbers; tests check them against the
stock image processor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from .config import MLLMEncoderConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# qwen_vl_utils constants (in tokens of 28x28 pixels or multiples of the factor squared)
IMAGE_MIN_TOKENS = 4
IMAGE_MAX_TOKENS = 16384
VIDEO_MIN_TOKENS = 128
VIDEO_MAX_TOKENS = 768
VIDEO_TOTAL_PIXELS = 128000 * 28 * 28 * 0.9   # model context budget of qwen_vl_utils
MAX_ASPECT_RATIO = 200


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` with the pixel count in [min, max].

    qwen_vl_utils' rule: round each side (Python's round: half to even), at least one factor; if
    too large scale down by sqrt(area/max) and floor; if too small scale up and ceil.
    """
    if min(height, width) <= 0:
        raise InputError(f"image size {width}x{height} is empty.")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InputError(f"image {width}x{height}: aspect ratio above {MAX_ASPECT_RATIO} is not supported "
                         "by the Qwen2.5-VL preprocessing.")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    if h <= 0 or w <= 0:
        raise InputError(f"image {width}x{height} is too thin to resize to multiples of {factor}.")
    return h, w


def select_frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """Indices of the frames the MLLM sees: all, or ``linspace(0, n-1, max_frames).round()``."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return torch.linspace(0, num_frames - 1, max_frames).round().long().tolist()


def video_resize_plan(height: int, width: int, max_pixels: int | None, num_frames: int = 16,
                      factor: int = 56, patch_factor: int = 28) -> tuple[tuple[int, int], tuple[int, int]]:
    """((h, w) after step 2, (h, w) after step 3) for frames of ``height`` x ``width``."""
    step2 = smart_resize(height, width, factor, IMAGE_MIN_TOKENS * factor ** 2,
                         max_pixels if max_pixels else IMAGE_MAX_TOKENS * factor ** 2)
    min_px = VIDEO_MIN_TOKENS * patch_factor ** 2
    cap = max(min(VIDEO_MAX_TOKENS * patch_factor ** 2, VIDEO_TOTAL_PIXELS / num_frames * 2),
              int(min_px * 1.05))
    if max_pixels:
        cap = min(max_pixels, cap)
    step3 = smart_resize(step2[0], step2[1], patch_factor, min_px, cap)
    return step2, step3


# --------------------------------------------------------------------------------------------------
# frames in, uint8 out
# --------------------------------------------------------------------------------------------------

def as_frames(frames, what: str = "frames") -> torch.Tensor:
    """Check and return frames as a [F,H,W,3] tensor (a [H,W,3] image becomes one frame)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise InputError(f"{what}: expected a tensor [F,H,W,3], got {type(frames).__name__}.")
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{what}: expected shape [F,H,W,3] (ComfyUI IMAGE layout), got {list(frames.shape)}.")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InputError(f"{what}: empty tensor of shape {list(frames.shape)}.")
    if frames.dtype != torch.uint8 and not frames.dtype.is_floating_point:
        raise InputError(f"{what}: expected float values in 0..1 or uint8, got dtype {frames.dtype}.")
    return frames


def frames_to_uint8(frames, what: str = "frames") -> np.ndarray:
    """[F,H,W,3] float 0..1 (or uint8) -> uint8 numpy [F,H,W,3] (round(255*x), as video files hold)."""
    frames = as_frames(frames, what).detach().cpu()
    if frames.dtype == torch.uint8:
        return frames.numpy()
    if not torch.isfinite(frames).all():
        raise InputError(f"{what}: contains NaN or infinite values.")
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def pil_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bicubic resize of one uint8 HWC frame (PIL returns a copy when the size is unchanged)."""
    img = Image.fromarray(frame, "RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img)


def tensor_resize_uint8(stack: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T,C,H,W] uint8 -> float 0..255: bicubic + antialias in float, clamped and rounded to uint8
    levels (torchvision's tensor resize of a uint8 video), then float as qwen_vl_utils returns it."""
    if tuple(stack.shape[-2:]) == (height, width):
        return stack.float()
    out = F.interpolate(stack.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 255).round()


# --------------------------------------------------------------------------------------------------
# normalise + patchify (the processor's part)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VisionSettings:
    """Patch geometry (from the Qwen vision config) and pixel normalisation (from the processor)."""
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_configs(cls, vision_config=None, preprocessor: dict | None = None) -> VisionSettings:
        pre = preprocessor or {}
        kw = {}
        if vision_config is not None:
            kw["patch_size"] = int(getattr(vision_config, "patch_size", 14))
            kw["merge_size"] = int(getattr(vision_config, "spatial_merge_size", 2))
            kw["temporal_patch_size"] = int(getattr(vision_config, "temporal_patch_size", 2))
        else:
            for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "merge_size"),
                                 ("temporal_patch_size", "temporal_patch_size")):
                if theirs in pre:
                    kw[ours] = int(pre[theirs])
        if "image_mean" in pre:
            kw["image_mean"] = tuple(float(v) for v in pre["image_mean"])
        if "image_std" in pre:
            kw["image_std"] = tuple(float(v) for v in pre["image_std"])
        if "rescale_factor" in pre:
            kw["rescale_factor"] = float(pre["rescale_factor"])
        return cls(**kw)


def normalize(pixels: torch.Tensor, settings: VisionSettings) -> torch.Tensor:
    """[T,C,H,W] float 0..255 -> rescaled and mean/std normalised float32."""
    mean = torch.tensor(settings.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(settings.image_std, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels.float() * settings.rescale_factor - mean) / std


def patchify(pixels: torch.Tensor, settings: VisionSettings) -> tuple[torch.Tensor, list[int]]:
    """[T,C,H,W] normalised -> (patches [t*h*w, C*tp*p*p], [t, h, w]) in Qwen's merge-block order.

    An odd frame count is padded with copies of the last frame (an image is one frame, so it is
    duplicated tp times, as the image processor does).
    """
    p, m, tp = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    t, c, h, w = pixels.shape
    if h % (p * m) or w % (p * m):
        raise InputError(f"internal: frame size {w}x{h} is not a multiple of {p * m}.")
    if t % tp:
        pixels = torch.cat([pixels, pixels[-1:].expand(tp - t % tp, -1, -1, -1)], dim=0)
    gt, gh, gw = pixels.shape[0] // tp, h // p, w // p
    x = pixels.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # -> [gt, gh/m, gw/m, m, m, c, tp, p, p]: merge blocks contiguous, channel-major patch vectors
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * tp * p * p).contiguous(), [gt, gh, gw]


# --------------------------------------------------------------------------------------------------
# whole inputs
# --------------------------------------------------------------------------------------------------

@dataclass
class VisionInputs:
    """Pixels and grids of every image and video of one prompt, in prompt order per kind."""
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: list[float] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)

    def image_token_counts(self, merge_size: int) -> list[int]:
        return _token_counts(self.image_grid_thw, merge_size)

    def video_token_counts(self, merge_size: int) -> list[int]:
        return _token_counts(self.video_grid_thw, merge_size)


def _token_counts(grids: torch.Tensor | None, merge_size: int) -> list[int]:
    if grids is None:
        return []
    return [int(g.prod()) // merge_size ** 2 for g in grids]


def prepare_image(image, settings: VisionSettings, max_pixels: int | None = None,
                  what: str = "image") -> tuple[torch.Tensor, list[int]]:
    """One image ([1,H,W,3] / [H,W,3]): PIL resize to multiples of 28, normalise, patchify."""
    arr = frames_to_uint8(image, what)
    if arr.shape[0] != 1:
        raise InputError(f"{what}: expected one image ([1,H,W,3] or [H,W,3]), got {arr.shape[0]} frames.")
    f = settings.factor
    h, w = smart_resize(arr.shape[1], arr.shape[2], f, IMAGE_MIN_TOKENS * f * f,
                        max_pixels if max_pixels else IMAGE_MAX_TOKENS * f * f)
    resized = pil_resize(arr[0], h, w)
    pixels = torch.from_numpy(resized.copy()).permute(2, 0, 1).unsqueeze(0).float()
    return patchify(normalize(pixels, settings), settings)


def prepare_video(frames, settings: VisionSettings, cfg: MLLMEncoderConfig,
                  what: str = "source frames") -> tuple[torch.Tensor, list[int], list[int]]:
    """Frames [F,H,W,3] -> (patches, [t,h,w], selected frame indices) by steps 1-4 above."""
    frames = as_frames(frames, what)
    indices = select_frame_indices(frames.shape[0], cfg.max_frames)
    arr = frames_to_uint8(frames[indices], what)
    (h2, w2), (h3, w3) = video_resize_plan(arr.shape[1], arr.shape[2], cfg.max_pixels_per_frame,
                                           len(indices), cfg.frame_resize_factor, settings.factor)
    stack = np.stack([pil_resize(fr, h2, w2) for fr in arr])
    pixels = tensor_resize_uint8(torch.from_numpy(stack).permute(0, 3, 1, 2), h3, w3)
    patches, grid = patchify(normalize(pixels, settings), settings)
    return patches, grid, indices


def build_vision_inputs(frames, reference, mode: str, settings: VisionSettings,
                        cfg: MLLMEncoderConfig) -> VisionInputs:
    """All pixels of one prompt: image mode -> the single source frame as an image; video mode ->
    the video; reference mode -> the video, then the reference image."""
    out = VisionInputs()
    images: list[tuple[torch.Tensor, list[int]]] = []
    if mode == "image":
        images.append(prepare_image(frames, settings, None, "source image"))
        out.frame_indices = [0]
    else:
        patches, grid, indices = prepare_video(frames, settings, cfg)
        out.pixel_values_videos = patches
        out.video_grid_thw = torch.tensor([grid], dtype=torch.long)
        out.second_per_grid_ts = [settings.temporal_patch_size / cfg.video_fps]
        out.frame_indices = indices
        if mode == "reference":
            images.append(prepare_image(reference, settings, cfg.ref_max_pixels, "reference image"))
    if images:
        out.pixel_values = torch.cat([p for p, _ in images], dim=0)
        out.image_grid_thw = torch.tensor([g for _, g in images], dtype=torch.long)
    return out
