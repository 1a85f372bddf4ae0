"""The toy judge: programmatic edit scores from the toy world's exact ground truth.

The edited video is read back as palette labels (each pixel → the nearest palette colour), then
compared with the source and target label maps the generator rendered:

- **compliance**: of the pixels the edit must change (target ≠ source), the share that now carry the
  target's colour — did the edit happen, in the right place? "Return the source unchanged" scores 0.
- **preservation**: of the pixels the edit must leave alone, the share still carrying the source colour.
- **temporal consistency**: of the pixel pairs that stay the same colour between consecutive target
  frames, the share that also stay the same in the output — flicker lowers it (1 for one frame).
- **overall**: compliance × preservation × temporal consistency (0 for the identity edit).
- **cleanliness** (raw output, before the snapping above): 1 − the mean distance of each pixel to its nearest
  palette colour, in units of half the smallest distance between two palette colours and capped at 1 there.
  1 = every pixel exactly a palette colour; 0 = every pixel at least half way to another colour (static).
  Snapping hides noise from the other scores; this one shows it. It is reported beside them, not in overall.

All scores lie in [0, 1]; the ground-truth target scores 1 on all five.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .world import PALETTE_RGB, ToyExample

SCORE_NAMES = ("compliance", "preservation", "temporal", "overall", "cleanliness")


@dataclass
class ToyScores:
    compliance: float
    preservation: float
    temporal: float
    overall: float
    cleanliness: float = 1.0          # palette labels are clean by construction; score_edit measures raw pixels

    def as_dict(self) -> dict:
        return asdict(self)


def to_uint8_frames(frames) -> np.ndarray:
    """[F, H, W, 3] uint8 from a uint8 array or a float array/tensor in 0..1 (one image [H, W, 3] too)."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().float().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"toy judge: expected frames [F, H, W, 3], got shape {list(arr.shape)}.")
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return arr


def _palette_sq_distances(frames) -> np.ndarray:
    arr = to_uint8_frames(frames).astype(np.int32)
    return ((arr[..., None, :] - PALETTE_RGB.astype(np.int32)) ** 2).sum(-1)      # [F, H, W, P]


def nearest_labels(frames) -> np.ndarray:
    """[F, H, W] index of the nearest palette colour of every pixel."""
    return _palette_sq_distances(frames).argmin(-1).astype(np.uint8)


def _half_palette_gap() -> float:
    p = PALETTE_RGB.astype(np.float64)
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    return float(d[d > 0].min()) / 2


def cleanliness(frames) -> float:
    """1 − mean(min(d, g) / g): d = a pixel's RGB distance to its nearest palette colour, g = half the smallest
    distance between two palette colours (see the module docstring)."""
    d = np.sqrt(_palette_sq_distances(frames).min(-1))
    g = _half_palette_gap()
    return float(1.0 - np.minimum(d, g).mean() / g)


def _share(hits: np.ndarray, where: np.ndarray) -> float:
    n = int(where.sum())
    return 1.0 if n == 0 else float(hits[where].sum()) / n


def score_labels(out: np.ndarray, source: np.ndarray, target: np.ndarray) -> ToyScores:
    """Scores of output labels against source and target labels (all [F, H, W])."""
    if out.shape[1:] != target.shape[1:]:
        raise InputError(f"toy judge: the edited video is {out.shape[2]}x{out.shape[1]} but the toy example is "
                         f"{target.shape[2]}x{target.shape[1]}; edit at the toy size (no resizing).")
    f = min(out.shape[0], target.shape[0])
    if f == 0:
        raise InputError("toy judge: the edited video has no frames.")
    out, source, target = out[:f], source[:f], target[:f]
    changed = source != target
    compliance = _share(out == target, changed)
    preservation = _share(out == source, ~changed)
    if f > 1:
        still = target[1:] == target[:-1]
        temporal = _share(out[1:] == out[:-1], still)
    else:
        temporal = 1.0
    return ToyScores(compliance, preservation, temporal, compliance * preservation * temporal)


def score_frames(output_frames, source: np.ndarray, target: np.ndarray) -> ToyScores:
    """Scores of raw edited frames (``[F, H, W, 3]``, uint8 or float 0..1) against source and target labels:
    the label scores of the snapped frames, and the cleanliness of the raw ones."""
    scores = score_labels(nearest_labels(output_frames), source, target)
    scores.cleanliness = cleanliness(output_frames)
    return scores


def score_edit(output_frames, example: ToyExample) -> ToyScores:
    """Scores of an edited video (``[F, H, W, 3]``, uint8 or float 0..1) for one toy example."""
    from ..frames import check_frames
    frames = check_frames(output_frames, "edited frames")
    want = tuple(example.source_labels.shape[:3])
    if tuple(frames.shape[:3]) != want:
        raise InputError(f"edited frames {tuple(frames.shape[:3])} do not match the example's {want} "
                         "(frames, height, width): judge the edit of this example.")
    return score_frames(output_frames, example.source_labels, example.target_labels)


def mean_scores(scores: list[ToyScores]) -> dict:
    if not scores:
        raise InputError("toy judge: no scores to average.")
    return {k: float(np.mean([getattr(s, k) for s in scores])) for k in SCORE_NAMES}
