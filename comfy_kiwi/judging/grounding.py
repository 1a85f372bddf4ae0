"""Grounding with a VLM: ask for a bounding box, read it, turn it into a box and a MASK.

Qwen2.5-VL answers boxes as JSON ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in **absolute
pixels of the image it was shown** (after its resize to multiples of 28), so the default
``coordinate_space="input"`` rescales from that size to the frame's own size. ``"original"`` takes
the numbers as pixels of the frame itself, ``"normalized_1000"`` as 0..1000 (Qwen2-VL style).

Several boxes are combined by ``combine``: ``union`` (default; all parts of a foreground), ``first``
or ``largest``. Corners are ordered, the box is clamped to the image (x0, y0 floored, x1, y1 ceiled;
x1/y1 exclusive), and an empty box after clamping is rejected so the question is asked again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..mllm.preprocess import as_frames
from .parsing import AnswerParseError, parse_boxes
from .vlm import GenerateFn, VLMRequest, ask

__all__ = ["Box", "GroundingResult", "COORDINATE_SPACES", "parse_box_answer", "box_to_mask", "mask_to_box",
           "grounding_prompt", "ground"]

COORDINATE_SPACES = ("input", "original", "normalized_1000")
COMBINE = ("union", "first", "largest")
TARGETS = ("object", "edited", "foreground")


@dataclass(frozen=True)
class Box:
    """Pixel box of an image: columns ``x0 <= x < x1``, rows ``y0 <= y < y1``."""
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def to_json(self) -> str:
        return json.dumps({"bbox": self.as_list()})

    def to_mask(self, height: int, width: int) -> torch.Tensor:
        return box_to_mask(self, height, width)


def box_to_mask(box: Box, height: int, width: int) -> torch.Tensor:
    """MASK ``[1, H, W]`` float32: 1 inside the box, 0 outside."""
    mask = torch.zeros(1, int(height), int(width), dtype=torch.float32)
    mask[:, max(0, box.y0):max(0, box.y1), max(0, box.x0):max(0, box.x1)] = 1.0
    return mask


def mask_to_box(mask: torch.Tensor, threshold: float = 0.5) -> Box | None:
    """Tight box of the pixels of ``mask`` ``[H, W]`` above ``threshold`` (None when there are none)."""
    on = mask > threshold
    if not bool(on.any()):
        return None
    rows = torch.nonzero(on.any(dim=1)).flatten()
    cols = torch.nonzero(on.any(dim=0)).flatten()
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def parse_box_answer(text: str, width: int, height: int, model_size: tuple[int, int] | None = None,
                     coordinate_space: str = "input", combine: str = "union") -> Box:
    """The answer's box in pixels of a ``width x height`` image. ``model_size`` = (w, h) the model saw
    (needed for ``coordinate_space="input"``). Raises :class:`AnswerParseError`."""
    if coordinate_space not in COORDINATE_SPACES:
        raise InputError(f"coordinate_space must be one of {', '.join(COORDINATE_SPACES)}; got {coordinate_space!r}.")
    if combine not in COMBINE:
        raise InputError(f"combine must be one of {', '.join(COMBINE)}; got {combine!r}.")
    if coordinate_space == "input":
        if model_size is None:
            raise InputError("coordinate_space='input' needs the size of the image the model saw; use a VLM "
                             "object or coordinate_space='original'.")
        sx, sy = width / model_size[0], height / model_size[1]
    elif coordinate_space == "normalized_1000":
        sx, sy = width / 1000.0, height / 1000.0
    else:
        sx = sy = 1.0
    boxes = []
    for x1, y1, x2, y2 in parse_boxes(text):
        xa, xb = sorted((x1 * sx, x2 * sx))
        ya, yb = sorted((y1 * sy, y2 * sy))
        box = Box(max(0, min(width, math.floor(xa))), max(0, min(height, math.floor(ya))),
                  max(0, min(width, math.ceil(xb))), max(0, min(height, math.ceil(yb))))
        if box.area > 0:
            boxes.append(box)
    if not boxes:
        raise AnswerParseError(f"the box(es) in the answer are empty or outside the {width}x{height} image.")
    if combine == "first":
        return boxes[0]
    if combine == "largest":
        return max(boxes, key=lambda b: b.area)
    return Box(min(b.x0 for b in boxes), min(b.y0 for b in boxes), max(b.x1 for b in boxes), max(b.y1 for b in boxes))


def grounding_prompt(description: str, target: str = "object") -> str:
    """The question. ``target``: ``object`` (find ``description``), ``edited`` (the content an edit
    described by ``description`` brought in), ``foreground`` (the main subjects, for background edits)."""
    if target not in TARGETS:
        raise InputError(f"grounding target must be one of {', '.join(TARGETS)}; got {target!r}.")
    if target == "object":
        ask_for = f"Find this in the image: {description.strip()}."
    elif target == "edited":
        ask_for = ("This frame is the result of the edit described as: "
                   f"\"{description.strip()}\". Find the object or region the edit created or changed.")
    else:
        ask_for = ("Find the main foreground subject(s) of the image - the people, animals or objects in front "
                   "of the background" + (f" (context: {description.strip()})" if description.strip() else "") + ".")
    return (f"{ask_for} Answer in JSON as a list of objects of the form "
            "{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"...\"}, with pixel coordinates of the image.")


@dataclass
class GroundingResult:
    ok: bool
    box: Box | None
    mask: torch.Tensor | None          # [1, H, W]
    answers: list[str]
    errors: list[str]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "bbox": self.box.as_list() if self.box else None, "answers": self.answers,
                "errors": self.errors}


def ground(generate: GenerateFn, image, description: str, target: str = "object", coordinate_space: str = "input",
           combine: str = "union", attempts: int = 3, seed: int = 0, temperature: float = 0.0,
           retry_temperature: float = 0.7, max_new_tokens: int = 128) -> GroundingResult:
    """Ground ``description`` in ``image`` (``[1,H,W,3]`` or ``[H,W,3]``) with retries."""
    frames = as_frames(image, "image")
    if frames.shape[0] != 1:
        raise InputError(f"grounding takes one image; got {frames.shape[0]} frames (pick one frame).")
    if not isinstance(description, str) or (target != "foreground" and not description.strip()):
        raise InputError("grounding needs a description of what to find (or the edit instruction).")
    if coordinate_space not in COORDINATE_SPACES:
        raise InputError(f"coordinate_space must be one of {', '.join(COORDINATE_SPACES)}; got {coordinate_space!r}.")
    if combine not in COMBINE:
        raise InputError(f"combine must be one of {', '.join(COMBINE)}; got {combine!r}.")
    h, w = int(frames.shape[1]), int(frames.shape[2])
    model_size = None
    if coordinate_space == "input":
        size_fn = getattr(generate, "image_input_size", None)
        if size_fn is None:
            raise InputError("coordinate_space='input' needs a VLM that reports its input size; use "
                             "coordinate_space='original' or 'normalized_1000' with this generate function.")
        model_size = size_fn(frames)
    prompt = grounding_prompt(description, target)

    def make(s: int, t: float) -> VLMRequest:
        return VLMRequest(content=[("image", frames), ("text", prompt)], seed=s, temperature=t,
                          max_new_tokens=max_new_tokens)

    asked = ask(generate, make, lambda text: parse_box_answer(text, w, h, model_size, coordinate_space, combine),
                attempts, seed, temperature, retry_temperature)
    box = asked.value if asked.ok else None
    return GroundingResult(asked.ok, box, box_to_mask(box, h, w) if box else None, asked.answers, asked.errors)
