"""Reference images from edited frames (the Kiwi-Edit RefVIE recipe, deterministic parts).

* :func:`local_reference` - a subject/local-edit reference: the object cut out by its mask (pixels
  outside the mask become the canvas colour, white by default) and/or box, cropped tightly to the object,
  optionally with a ``margin`` of canvas;
* :func:`background_reference` - a background reference: the foreground (mask above ``threshold``,
  grown by ``dilate`` pixels) removed and the hole filled from a user fill image or a built-in fill
  (:mod:`comfy_kiwi.judging.fill`); pixels outside the hole are returned unchanged;
* :func:`select_mask` - one ``[H, W]`` mask out of any ComfyUI MASK ``[B, H, W]``: B = 1 applies to
  every frame, B > 1 is per frame (``frame_index`` picks it). A mask of another size is resized
  (bilinear) to the frame.

Images are ``[1, H, W, 3]`` (or ``[H, W, 3]``) float 0..1; masks are 1 = object/foreground.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..mllm.preprocess import as_frames
from .fill import FILL_METHODS, fill_hole
from .grounding import Box, mask_to_box

__all__ = ["select_mask", "select_frame", "hole_mask", "local_reference", "background_reference", "REFERENCE_KINDS"]

REFERENCE_KINDS = ("local", "background")


def select_frame(frames, frame_index: int = 0, what: str = "image") -> torch.Tensor:
    """Frame ``frame_index`` of ``[F,H,W,3]`` as ``[H, W, 3]`` float (negative counts from the end)."""
    frames = as_frames(frames, what).float()
    n = frames.shape[0]
    if not -n <= int(frame_index) < n:
        raise InputError(f"{what}: frame_index {frame_index} is out of range for {n} frame(s).")
    return frames[int(frame_index)]


def select_mask(mask, frame_index: int = 0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``[H, W]`` float mask from ``[H,W]``, ``[B,H,W]`` or ``[B,1,H,W]`` (see the module docstring)."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"mask must be a tensor [B, H, W]; got {type(mask).__name__}.")
    m = mask.detach().float().cpu()
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or m.shape[0] == 0:
        raise InputError(f"mask must have shape [B, H, W]; got {tuple(mask.shape)}.")
    b = m.shape[0]
    if b == 1:
        m = m[0]
    else:
        if not -b <= int(frame_index) < b:
            raise InputError(f"mask has {b} per-frame masks; frame_index {frame_index} is out of range.")
        m = m[int(frame_index)]
    if size is not None and tuple(m.shape) != tuple(size):
        m = F.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return m


def hole_mask(mask: torch.Tensor, threshold: float = 0.5, dilate: int = 0) -> torch.Tensor:
    """Bool ``[H, W]``: ``mask > threshold`` grown by ``dilate`` pixels (square neighbourhood)."""
    if not isinstance(dilate, int) or dilate < 0:
        raise InputError(f"dilate must be a non-negative number of pixels; got {dilate!r}.")
    hole = mask > float(threshold)
    if dilate:
        hole = F.max_pool2d(hole.float()[None, None], 2 * dilate + 1, 1, dilate)[0, 0] > 0
    return hole


def local_reference(image, mask=None, box: Box | None = None, threshold: float = 0.5, margin: int = 0,
                    frame_index: int = 0, canvas=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """The object on a clean canvas (white by default), cropped tightly: ``[1, h, w, 3]``.

    With a mask: the crop is the tight box of ``mask > threshold`` (inside ``box`` when both are given)
    and every pixel outside the mask is the ``canvas`` colour (RGB 0..1). With only a box: the box region as
    it is.
    """
    frame = select_frame(image, frame_index)
    h, w = frame.shape[:2]
    if not isinstance(margin, int) or margin < 0:
        raise InputError(f"margin must be a non-negative number of pixels; got {margin!r}.")
    colour = torch.as_tensor(canvas, dtype=frame.dtype)
    if colour.shape != (3,) or not bool(((colour >= 0) & (colour <= 1)).all()):
        raise InputError(f"canvas must be an RGB colour of three numbers in 0..1; got {canvas!r}.")
    if mask is None and box is None:
        raise InputError("a local reference needs a mask or a box of the object.")
    if mask is not None:
        on = select_mask(mask, frame_index, (h, w)) > float(threshold)
        if box is not None:
            inside = torch.zeros_like(on)
            inside[box.y0:box.y1, box.x0:box.x1] = True
            on = on & inside
        tight = mask_to_box(on.float())
        if tight is None:
            raise InputError("the object mask is empty (no pixel above the threshold"
                             + (" inside the box" if box is not None else "") + ").")
        crop = torch.where(on[..., None], frame, colour.expand_as(frame))
    else:
        tight = Box(max(0, box.x0), max(0, box.y0), min(w, box.x1), min(h, box.y1))
        if tight.area == 0:
            raise InputError(f"the box {box.as_list()} is empty inside the {w}x{h} image.")
        crop = frame
    out = crop[tight.y0:tight.y1, tight.x0:tight.x1]
    if margin:
        padded = colour.view(1, 1, 3).expand(out.shape[0] + 2 * margin, out.shape[1] + 2 * margin, 3).clone()
        padded[margin:-margin, margin:-margin] = out
        out = padded
    return out.contiguous()[None]


def background_reference(image, mask, threshold: float = 0.5, dilate: int = 0, method: str = "pyramid",
                         fill_image=None, iterations: int = 200, frame_index: int = 0) -> torch.Tensor:
    """The frame with the foreground removed and filled: ``[1, H, W, 3]``.

    ``fill_image`` (``[1,H,W,3]``, resized bilinearly to the frame when its size differs) takes
    precedence over ``method`` (``pyramid`` or ``diffuse``).
    """
    frame = select_frame(image, frame_index)
    h, w = frame.shape[:2]
    hole = hole_mask(select_mask(mask, frame_index, (h, w)), threshold, dilate)
    if not bool(hole.any()):
        raise InputError("the foreground mask is empty: nothing to remove for a background reference.")
    if fill_image is not None:
        fill = select_frame(fill_image, 0, "fill image")
        if tuple(fill.shape[:2]) != (h, w):
            fill = F.interpolate(fill.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                                 align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
        out = torch.where(hole[..., None], fill, frame)
    else:
        if method not in FILL_METHODS:
            raise InputError(f"unknown fill method {method!r}; built in: {', '.join(FILL_METHODS)}, or give a "
                             "fill image.")
        out = fill_hole(frame, hole, method, iterations)
    return out.contiguous()[None]
