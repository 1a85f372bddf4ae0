"""From a grounded box to an object mask (the RefVIE recipe grounds the edited region, then segments it).

* :class:`SamSegmenter` (``load_sam(folder)``): a Segment Anything model through transformers' ``SamModel`` /
  ``SamProcessor``, loaded from a local folder only. The box is the prompt; of SAM's three candidate masks the
  one with the highest predicted IoU is kept, and the mask is limited to the box (the object was grounded
  there, so nothing outside it belongs to it).
* :func:`difference_mask`: a deterministic option without a model, for edits that add or replace an object:
  the pixels inside the box where the edited frame differs from the source frame by more than ``threshold``
  (max over the channels). It is no substitute for a segmentation model on real data (it also catches
  shadows, lighting changes, compression noise), so it is chosen explicitly.
* ``"box"``: the whole box as the mask (the behaviour before segmentation existed).

Frames are ``[H, W, 3]`` float 0..1; masks are ``[H, W]`` float 0/1.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .grounding import Box

__all__ = ["SEGMENTERS", "SamSegmenter", "load_sam", "difference_mask", "limit_to_box", "segment_box"]

SEGMENTERS = ("sam", "difference", "box")


def limit_to_box(mask: torch.Tensor, box: Box) -> torch.Tensor:
    """``mask`` [H, W] with everything outside ``box`` set to 0."""
    out = torch.zeros_like(mask)
    out[box.y0:box.y1, box.x0:box.x1] = mask[box.y0:box.y1, box.x0:box.x1]
    return out


def _frame(frame) -> torch.Tensor:
    if not isinstance(frame, torch.Tensor) or frame.dim() != 3 or frame.shape[-1] != 3:
        got = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise InputError(f"segmentation takes one frame [H, W, 3] (float 0..1); got {got}.")
    return frame.float()


class SamSegmenter:
    """``segmenter(frame, box) -> mask``; see the module docstring."""

    def __init__(self, model, processor, source: str = ""):
        self.model, self.processor, self.source = model, processor, source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, frame, box: Box) -> torch.Tensor:
        from PIL import Image
        frame = _frame(frame)
        h, w = frame.shape[:2]
        pixels = (frame.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        inputs = self.processor(images=Image.fromarray(pixels), input_boxes=[[[float(v) for v in box.as_list()]]],
                                return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=inputs["pixel_values"].to(self.device, dtype),
                         input_boxes=inputs["input_boxes"].to(self.device, dtype), multimask_output=True)
        masks = self.processor.post_process_masks(out.pred_masks.float().cpu(), inputs["original_sizes"],
                                                  inputs["reshaped_input_sizes"])[0][0]       # [3, H, W] bool
        best = int(out.iou_scores[0, 0].float().argmax())
        if tuple(masks.shape[-2:]) != (h, w):
            raise InputError(f"SAM returned a {tuple(masks.shape[-2:])} mask for a {(h, w)} frame.")
        return limit_to_box(masks[best].float(), box)


def load_sam(path, device=None, dtype: torch.dtype | None = None) -> SamSegmenter:
    """A transformers SAM folder (``config.json`` with model_type ``sam``, safetensors weights, the processor's
    ``preprocessor_config.json``/``processor_config.json``), local files only."""
    import json
    folder = Path(path).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a SAM model folder (config.json, model.safetensors and the "
                              "processor config, as transformers' SamModel.save_pretrained writes it).")
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "sam":
        raise CheckpointError(f"{folder}: config.json has model_type {model_type!r}; the segmenter needs a "
                              "transformers SAM folder (model_type 'sam').")
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"{folder}: no .safetensors weights (only safetensors folders are loaded).")
    from transformers import SamModel, SamProcessor
    try:
        model = SamModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                         dtype=dtype or torch.float32)
        processor = SamProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{folder}: SAM could not be loaded ({type(e).__name__}: {first[:300]}).") from None
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    model.to(device).eval().requires_grad_(False)
    return SamSegmenter(model, processor, str(folder))


def difference_mask(frame, source, box: Box, threshold: float = 0.1) -> torch.Tensor:
    """Pixels inside ``box`` where ``frame`` and ``source`` ([H, W, 3]) differ by more than ``threshold``."""
    frame, source = _frame(frame), _frame(source)
    if frame.shape != source.shape:
        raise InputError(f"difference segmentation needs source and edited frames of one size; got "
                         f"{tuple(source.shape)} and {tuple(frame.shape)}.")
    changed = ((frame - source).abs().amax(dim=-1) > float(threshold)).float()
    return limit_to_box(changed, box)


def segment_box(method: str, frame, box: Box, sam: SamSegmenter | None = None, source=None,
                threshold: float = 0.1) -> torch.Tensor:
    """The object mask [H, W] of ``box`` in ``frame`` by ``method`` (one of :data:`SEGMENTERS`)."""
    if method == "sam":
        if sam is None:
            raise InputError("segmentation 'sam' needs a SAM model (load_sam(folder)).")
        return sam(frame, box)
    if method == "difference":
        if source is None:
            raise InputError("segmentation 'difference' needs the source frame.")
        return difference_mask(frame, source, box, threshold)
    if method == "box":
        h, w = _frame(frame).shape[:2]
        return limit_to_box(torch.ones(h, w), box)
    raise InputError(f"unknown segmentation {method!r}; choose one of {', '.join(SEGMENTERS)}.")
