"""Frame preparation the way the Kiwi-Edit data loader does it, and the reference canvas.

Conventions used across comfy-kiwi:

* ``frames`` are a float32 tensor ``[F, H, W, 3]`` in ``0..1`` (ComfyUI's IMAGE layout, batch = frames).
* The VAE takes ``[B, 3, F, H, W]`` in ``[-1, 1]`` (:func:`frames_to_vae` / :func:`vae_to_frames`).

Resizing goes through Pillow on 8-bit images, because that is what the released loader and pipeline
do (imageio/PIL frames, torchvision's PIL resize, ``PIL.ImageOps.pad``); using the same resampler keeps
training data and inference inputs bit-identical to the reference code. Float frames are rounded to
8 bits only when a resize actually happens (at most 0.5/255 of error); crops and no-op resizes keep
the float values untouched.
"""

from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

__all__ = [
    "kiwi_target_size",
    "cover_resize_size",
    "center_crop_offsets",
    "resize_cover_crop",
    "nearest_valid_frame_counts",
    "fit_frame_count",
    "prepare_frames",
    "contain_size",
    "pad_reference",
    "shrink_and_pad_reference",
    "load_image",
    "frames_to_vae",
    "vae_to_frames",
    "tensor_to_pil",
    "to_pil",
    "pil_to_tensor",
    "frames_to_pil_list",
    "check_frames",
]

ImageLike = Union[torch.Tensor, np.ndarray, Image.Image]


# ---------------------------------------------------------------------------------------------
# Validation and tensor <-> PIL helpers
# ---------------------------------------------------------------------------------------------

def check_frames(frames, name: str = "frames") -> torch.Tensor:
    """Return ``frames`` as a float32 ``[F, H, W, 3]`` tensor, or raise :class:`InputError`.

    Accepts a torch tensor or numpy array; uint8 input is scaled to ``0..1``. A single ``[H, W, 3]``
    image is treated as one frame.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor [F, H, W, 3]; got {type(frames).__name__}")
    if frames.dim() == 3:
        frames = frames.unsqueeze(0)
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise InputError(
            f"{name} must have shape [F, H, W, 3] (frames, height, width, RGB); got {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise InputError(f"no frames: {name} hold 0 frames (need at least 1; valid counts are 4k+1: 1, 5, 9, ..., 81)")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InputError(f"{name} hold no pixels: shape {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        return frames.float().div_(255.0)
    if not frames.is_floating_point():
        raise InputError(f"{name} must be float in 0..1 or uint8 in 0..255; got dtype {frames.dtype}")
    frames = frames.float()
    if not torch.isfinite(frames).all():
        raise InputError(f"{name} hold NaN or infinite values; check the node or file that produced them")
    if frames.max() > 2.0:      # a little overshoot (decoders) is clipped later; 0..255 floats are a mistake
        raise InputError(f"{name} hold values up to {float(frames.max()):.4g}, but float frames are in 0..1 "
                         "(divide 0..255 values by 255)")
    return frames


def _to_uint8_array(frame: torch.Tensor) -> np.ndarray:
    """[..., 3] float 0..1 -> uint8 array, rounded to nearest (half to even) after clipping.

    Done in numpy: several times faster than the equivalent torch ops on CPU for this pattern.
    """
    arr = frame.detach().cpu().float().numpy()
    return np.rint(np.clip(arr * 255.0, 0.0, 255.0)).astype(np.uint8)


def tensor_to_pil(frame) -> Image.Image:
    """One frame ``[H, W, 3]`` (or ``[1, H, W, 3]``) float 0..1 -> RGB ``PIL.Image``."""
    frame = check_frames(frame, "image")
    if frame.shape[0] != 1:
        raise InputError(f"tensor_to_pil takes one image; got {frame.shape[0]} frames (use frames_to_pil_list)")
    return Image.fromarray(_to_uint8_array(frame[0]))


# Short names used by callers that think in single frames.
to_pil = tensor_to_pil


def frames_to_pil_list(frames) -> list:
    """``[F, H, W, 3]`` float frames -> list of RGB ``PIL.Image``."""
    frames = check_frames(frames)
    return [Image.fromarray(_to_uint8_array(f)) for f in frames]


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited over white (see :func:`load_image`)."""
    if img.mode == "P":
        # Palette images may carry transparency in img.info; RGBA exposes it as a real alpha channel.
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        canvas.alpha_composite(img)
        return canvas.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's direct convert("RGB") clips instead of scaling, so scale by hand.
        arr = np.asarray(img, dtype=np.float64)
        # "I;16*" is 16-bit by definition; plain "I" is ambiguous, so judge by the data.
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """``PIL.Image`` (any mode) -> ``[1, H, W, 3]`` float32 in 0..1; alpha is composited over white."""
    rgb = _flatten_alpha(img)
    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).float().div_(255.0).unsqueeze(0)


def _as_pil(image: ImageLike, name: str = "image") -> Image.Image:
    if isinstance(image, Image.Image):
        return _flatten_alpha(image)
    t = check_frames(image, name)
    if t.shape[0] != 1:
        raise InputError(f"{name} must be a single image [1, H, W, 3]; got {t.shape[0]} images")
    return Image.fromarray(_to_uint8_array(t[0]))


def check_input_file(path, kind: str) -> str:
    """The path as a string, or a clear error when it is missing, a directory or empty."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{kind} file not found: {path!r}")
    if os.path.isdir(path):
        raise InputError(f"expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} file but got a directory: {path!r}")
    if os.path.getsize(path) == 0:
        raise InputError(f"{kind} file is empty (0 bytes): {path!r}")
    return path


def load_image(path) -> torch.Tensor:
    """Read an image file as ``[1, H, W, 3]`` float32 in 0..1.

    RGB, grayscale (8/16-bit), palette and images with transparency are accepted. Transparent
    pixels are composited over **white** — the colour of the reference canvas — whereas the Kiwi
    loader's ``convert("RGB")`` would drop the alpha and expose whatever colour hides underneath
    (often black). EXIF orientation is applied, as photo viewers do. For animated files the
    first frame is used.
    """
    path = check_input_file(path, "image")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return pil_to_tensor(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise InputError(
            f"cannot read {path!r} as an image ({e}); accepted: files Pillow can open "
            f"(png, jpg, webp, bmp, tiff, gif, ...)"
        ) from e


# ---------------------------------------------------------------------------------------------
# Kiwi loader resize: max_pixels cap, floor to multiples of 32, cover-resize, centre-crop
# ---------------------------------------------------------------------------------------------

def kiwi_target_size(w: int, h: int, max_pixels: int | None = 921600, multiple: int = 32) -> tuple[int, int]:
    """Target ``(W, H)`` for a ``w x h`` input, computed exactly as the Kiwi loader does.

    1. If ``w*h > max_pixels``: ``scale = (w*h/max_pixels) ** 0.5`` and both sides become
       ``int(side / scale)`` (truncation, in float arithmetic — so 1000x1000 at 921600 gives
       959x959, not 960x960, before the next step).
    2. Both sides are floored to a multiple of ``multiple`` (32 for Wan2.2: VAE x16, patch x2).

    Examples at 921600: 1280x720 -> 1280x704, 1920x1080 -> 1280x704, 1000x1000 -> 928x928,
    640x480 -> 640x480.
    """
    w, h, multiple = int(w), int(h), int(multiple)
    if w <= 0 or h <= 0:
        raise InputError(f"image size must be positive; got {w}x{h}")
    if multiple <= 0:
        raise InputError(f"multiple must be a positive integer; got {multiple}")
    if max_pixels is not None:
        if max_pixels <= 0:
            raise InputError(f"max_pixels must be positive (e.g. 921600 = 1280x720) or None; got {max_pixels}")
        if w * h > max_pixels:
            scale = (w * h / max_pixels) ** 0.5
            h, w = int(h / scale), int(w / scale)
    tw, th = w // multiple * multiple, h // multiple * multiple
    if tw < multiple or th < multiple:
        raise InputError(
            f"frames of {w}x{h} are too small: both sides must be at least {multiple} pixels "
            f"(after the max_pixels cap) to give a size that is a multiple of {multiple}"
        )
    return tw, th


def cover_resize_size(w: int, h: int, W: int, H: int) -> tuple[int, int]:
    """Size ``(w', h')`` the loader resizes to before cropping to ``W x H``.

    ``scale = max(W/w, H/h)``; ``w' = round(w*scale)``, ``h' = round(h*scale)`` with Python's
    ``round`` (half to even), as the loader's ``torchvision...resize(img, (round(h*s), round(w*s)))``.
    """
    scale = max(W / w, H / h)
    # Float rounding could in theory land one pixel short of the target; never crop past the edge.
    return max(round(w * scale), W), max(round(h * scale), H)


def center_crop_offsets(w: int, h: int, W: int, H: int) -> tuple[int, int]:
    """``(left, top)`` of a ``W x H`` centre crop, as torchvision's ``center_crop``.

    ``int(round((size - crop) / 2.0))`` — Python's half-to-even rounding, so an odd excess of 1
    crops 0 from the left/top, 3 crops 2, 5 crops 2, 7 crops 4.
    """
    return int(round((w - W) / 2.0)), int(round((h - H) / 2.0))


def resize_cover_crop(frames, W: int, H: int) -> torch.Tensor:
    """Cover-resize every frame to fill ``W x H`` (bilinear) and centre-crop, like the Kiwi loader.

    Sizes follow :func:`cover_resize_size` and :func:`center_crop_offsets`. The resize is Pillow's
    ``BILINEAR`` on 8-bit RGB (antialiased when shrinking), which is what torchvision's resize does
    for the loader's PIL frames. When no resize is needed (e.g. 1280x720 -> 1280x704 only crops),
    the float frames are cropped directly without 8-bit rounding.
    """
    frames = check_frames(frames)
    W, H = int(W), int(H)
    if W <= 0 or H <= 0:
        raise InputError(f"target size must be positive; got {W}x{H}")
    f, h, w, _ = frames.shape
    rw, rh = cover_resize_size(w, h, W, H)
    left, top = center_crop_offsets(rw, rh, W, H)
    if (rw, rh) == (w, h):
        return frames[:, top:top + H, left:left + W, :].contiguous()
    out = torch.empty((f, H, W, 3), dtype=torch.float32)
    box = (left, top, left + W, top + H)
    for i in range(f):
        img = Image.fromarray(_to_uint8_array(frames[i]))
        img = img.resize((rw, rh), Image.Resampling.BILINEAR).crop(box)
        out[i] = torch.from_numpy(np.array(img, dtype=np.uint8))
    return out.div_(255.0)


# ---------------------------------------------------------------------------------------------
# Frame count: the Wan VAE wants 4k+1 frames
# ---------------------------------------------------------------------------------------------

def nearest_valid_frame_counts(n: int) -> tuple[int, int]:
    """The valid counts (4k+1) just below-or-at and above ``n``; e.g. 80 -> (77, 81), 81 -> (81, 81)."""
    n = int(n)
    if n < 1:
        return 1, 1
    lower = (n - 1) // 4 * 4 + 1
    upper = lower if lower == n else lower + 4
    return lower, upper


def fit_frame_count(frames, mode: str = "trim") -> torch.Tensor:
    """Make the frame count 4k+1 (1, 5, 9, ..., 81) as the Wan VAE needs.

    ``mode="trim"`` keeps the largest 4k+1 prefix (the loader's rule for short videos) and warns
    how many frames were dropped; ``mode="error"`` raises :class:`InputError` naming the nearest
    valid counts. Zero frames is always an error.
    """
    frames = check_frames(frames)
    if mode not in ("trim", "error"):
        raise InputError(f"frame_mode must be 'trim' or 'error'; got {mode!r}")
    n = frames.shape[0]
    if n == 0:
        raise InputError("no frames: need at least 1 frame (valid counts are 4k+1: 1, 5, 9, ..., 81)")
    lower, upper = nearest_valid_frame_counts(n)
    if lower == n:
        return frames
    if mode == "error":
        raise InputError(
            f"{n} frames is not a valid count: the Wan VAE needs 4k+1 frames; nearest valid counts are "
            f"{lower} and {upper} (use frame_mode='trim' to keep the first {lower})"
        )
    warnings.warn(
        f"{n} frames is not 4k+1: keeping the first {lower} and dropping the last {n - lower}",
        stacklevel=2,
    )
    return frames[:lower]


def prepare_frames(
    frames,
    max_pixels: int | None = 921600,
    num_frames: int | None = None,
    frame_mode: str = "trim",
    multiple: int = 32,
) -> torch.Tensor:
    """Source/target frames as the Kiwi loader prepares them.

    Keeps the first ``num_frames`` (no stride, no fps resampling), fits the count to 4k+1
    (:func:`fit_frame_count`), then resizes to :func:`kiwi_target_size` with
    :func:`resize_cover_crop`. Returns ``[F, H, W, 3]`` float32 with H, W multiples of ``multiple``.
    """
    frames = check_frames(frames)
    if num_frames is not None:
        if int(num_frames) < 1:
            raise InputError(f"num_frames must be at least 1 (or None for all frames); got {num_frames}")
        frames = frames[: int(num_frames)]
    frames = fit_frame_count(frames, frame_mode)
    _, h, w, _ = frames.shape
    W, H = kiwi_target_size(w, h, max_pixels, multiple)
    return resize_cover_crop(frames, W, H)


# ---------------------------------------------------------------------------------------------
# Reference image on a white canvas
# ---------------------------------------------------------------------------------------------

def contain_size(w: int, h: int, W: int, H: int) -> tuple[int, int]:
    """Largest ``(w', h')`` of the same aspect that fits in ``W x H``, rounded as ``ImageOps.contain``.

    The side that touches the box stays exact; the other is ``round(...)`` (half to even). A
    degenerate aspect that would round to 0 pixels is kept at 1 pixel (PIL would give an empty image).
    """
    if w / h == W / H:
        return W, H
    if w / h > W / H:
        return W, max(1, round(h / w * W))
    return max(1, round(w / h * H)), H


def _on_white_canvas(img: Image.Image, W: int, H: int, left: int, top: int) -> torch.Tensor:
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    canvas.paste(img, (left, top))
    return pil_to_tensor(canvas)


def _check_canvas(W: int, H: int) -> tuple[int, int]:
    W, H = int(W), int(H)
    if W <= 0 or H <= 0:
        raise InputError(f"canvas size must be positive; got {W}x{H}")
    return W, H


def pad_reference(image: ImageLike, W: int, H: int) -> torch.Tensor:
    """Fit the reference inside ``W x H`` (bicubic, aspect kept) and centre it on a white canvas.

    Pixel-identical to ``PIL.ImageOps.pad(img, (W, H), color='white', centering=(0.5, 0.5))`` on the
    8-bit image, which is what the released pipelines feed the VAE: the fitted size comes from
    :func:`contain_size`, and the offset along the padded side is ``round(excess * 0.5)``
    (half to even). ``image`` is ``[1, H, W, 3]`` / ``[H, W, 3]`` float or a ``PIL.Image``.
    Returns ``[1, H, W, 3]`` float32.
    """
    W, H = _check_canvas(W, H)
    img = _as_pil(image, "reference image")
    fw, fh = contain_size(img.width, img.height, W, H)
    fitted = img.resize((fw, fh), Image.Resampling.BICUBIC)
    left, top = round((W - fw) * 0.5), round((H - fh) * 0.5)
    return _on_white_canvas(fitted, W, H, left, top)


def shrink_and_pad_reference(image: ImageLike, W: int, H: int, scale: float) -> torch.Tensor:
    """Training augmentation for the reference's VAE branch (Kiwi stage 3).

    Contain-fit into ``W x H`` (bicubic, :func:`contain_size`), shrink that by ``scale``
    (sizes ``int(w*scale)``, ``int(h*scale)`` — truncation; a second bicubic resize of the fitted
    image, as the released code does), and paste at ``((W-w)//2, (H-h)//2)`` on a white canvas.
    The released trainer draws ``scale`` from U(0.7, 1.0); values in (0, 1] are accepted.
    """
    W, H = _check_canvas(W, H)
    scale = float(scale)
    if not 0.0 < scale <= 1.0:
        raise InputError(f"scale must be in (0, 1] (training draws it from [0.7, 1.0]); got {scale}")
    img = _as_pil(image, "reference image")
    fw, fh = contain_size(img.width, img.height, W, H)
    fitted = img.resize((fw, fh), Image.Resampling.BICUBIC)
    sw, sh = max(1, int(fw * scale)), max(1, int(fh * scale))
    shrunk = fitted.resize((sw, sh), Image.Resampling.BICUBIC)
    return _on_white_canvas(shrunk, W, H, (W - sw) // 2, (H - sh) // 2)


# ---------------------------------------------------------------------------------------------
# VAE layout
# ---------------------------------------------------------------------------------------------

def frames_to_vae(frames) -> torch.Tensor:
    """``[F, H, W, 3]`` in 0..1 -> ``[1, 3, F, H, W]`` in [-1, 1] (float32; cast to the VAE dtype later)."""
    frames = check_frames(frames)
    if frames.shape[0] == 0:
        raise InputError("no frames to encode: frames has 0 frames")
    return frames.permute(3, 0, 1, 2).unsqueeze(0).mul(2.0).sub(1.0).contiguous()


def vae_to_frames(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> ``[B*F, H, W, 3]`` float32 in 0..1 (batches are concatenated)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"decoded video must be a tensor [B, 3, F, H, W]; got {shape}")
    b, _, f, h, w = x.shape
    out = x.detach().float().permute(0, 2, 3, 4, 1).reshape(b * f, h, w, 3)
    return out.add(1.0).mul(0.5).clamp(0.0, 1.0).cpu().contiguous()
