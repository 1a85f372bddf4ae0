"""Training records (image pairs, Kiwi CSVs), aspect-ratio buckets, and pixel loading.

Formats (CSV with a header, or JSONL with one object per line; relative paths are relative to the file, or to
a dataset's ``base_path``):

- ``image_pairs``: ``source_image, edited_image, edited_prompt[, source_prompt]`` (one-frame videos)
- ``kiwi``: ``src_video, tgt_video, prompt[, ref_image][, source_caption]`` (the Kiwi-Edit CSV; images are
  1-frame videos); ``source_caption`` describes the source video (``Record.source_prompt``)

Both formats accept two optional columns: ``mask`` (an image or video, white = edited region, e.g. VIVA's
masked loss) and ``target_caption`` (a description of the edited result, e.g. RVEDiT's alignment pass and
Edit-GRPO's R_IF / PickScore, which also need the source description).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from comfy_kiwi.errors import InputError

COLUMNS = {
    "image_pairs": {"source": "source_image", "target": "edited_image", "prompt": "edited_prompt",
                    "source_prompt": "source_prompt", "mask": "mask", "target_caption": "target_caption"},
    "kiwi": {"source": "src_video", "target": "tgt_video", "prompt": "prompt", "reference": "ref_image",
             "source_prompt": "source_caption", "mask": "mask", "target_caption": "target_caption"},
}
REQUIRED = ("source", "target", "prompt")
PATH_FIELDS = ("source", "target", "reference", "mask")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class Record:
    source: str
    target: str
    prompt: str
    source_prompt: str = ""
    reference: str = ""
    mask: str = ""
    target_caption: str = ""


def _rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the "
                         "dataset as UTF-8.") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path} line {i} is not JSON: {e}") from None
        return rows
    return list(csv.DictReader(text.splitlines()))


def read_records(path, fmt: str = "image_pairs", base_path=None) -> list[Record]:
    """Read and check a dataset file; every referenced file must exist. Relative paths are relative to
    ``base_path`` (the Kiwi scripts' ``--dataset_base_path``), by default to the file's folder."""
    path = Path(path)
    base = Path(base_path) if base_path else path.parent
    if fmt not in COLUMNS:
        raise InputError(f"unknown data format {fmt!r}; choose one of {', '.join(COLUMNS)}.")
    if not path.is_file():
        raise InputError(f"dataset file {path} does not exist.")
    cols = COLUMNS[fmt]
    rows = _rows(path)
    if not rows:
        raise InputError(f"dataset {path} has no rows.")
    records = []
    for n, row in enumerate(rows, 1):
        missing = [cols[k] for k in REQUIRED if not str(row.get(cols[k]) or "").strip()]
        if missing:
            raise InputError(f"{path} row {n}: missing {', '.join(missing)} (format {fmt} needs "
                             f"{', '.join(cols[k] for k in REQUIRED)}).")
        values = {k: str(row.get(col) or "").strip() for k, col in cols.items()}
        for k in PATH_FIELDS:
            if values.get(k):
                p = Path(values[k])
                p = p if p.is_absolute() else base / p
                if not p.is_file():
                    raise InputError(f"{path} row {n}: {cols[k]} file {p} does not exist.")
                values[k] = str(p.resolve())
        records.append(Record(**values))
    return records


def make_buckets(resolution: int, multiple: int = 16, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(W, H) sizes of about resolution² pixels, sides multiples of ``multiple``, aspect ≤ max_aspect."""
    area, out = resolution * resolution, set()
    w = multiple
    while w <= resolution * max_aspect:
        h = max(multiple, round(area / w / multiple) * multiple)
        if max(w / h, h / w) <= max_aspect:
            out.add((w, h))
        w += multiple
    return sorted(out)


def nearest_bucket(w: int, h: int, buckets) -> tuple[int, int]:
    return min(buckets, key=lambda b: abs(math.log((b[0] / b[1]) / (w / h))))


def item_size(path: str, buckets, max_pixels: int = 0, multiple: int = 16) -> tuple[int, int]:
    """(W, H) of one item: the nearest bucket, or with ``max_pixels`` the Kiwi loader's own size."""
    w, h = media_size(path)
    if max_pixels:
        from comfy_kiwi.frames import kiwi_target_size
        return kiwi_target_size(w, h, max_pixels, multiple)
    return nearest_bucket(w, h, buckets)


def media_size(path: str) -> tuple[int, int]:
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image
        with Image.open(path) as im:
            return im.size
    from comfy_kiwi.video_io import read_video
    frames = read_video(path, max_frames=1)
    frames = frames[0] if isinstance(frames, tuple) else frames
    return frames.shape[2], frames.shape[1]


def load_pixels(path: str, size: tuple[int, int], frames: int = 1) -> torch.Tensor:
    """An image (1 frame) or the first ``frames`` frames of a video (a shorter video: its largest 4k+1 prefix),
    cover-cropped → [1, 3, F, H, W] in [−1, 1]."""
    from comfy_kiwi.frames import frames_to_vae, load_image, resize_cover_crop
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        video = load_image(path)
    else:
        from comfy_kiwi.video_io import read_video
        video = read_video(path, max_frames=frames)
        video = video[0] if isinstance(video, tuple) else video
        if video.shape[0] < frames:
            # as the Kiwi loader: a shorter clip keeps its largest 4k+1 prefix
            video = video[:(video.shape[0] - 1) // 4 * 4 + 1]
    return frames_to_vae(resize_cover_crop(video, size[0], size[1]))
