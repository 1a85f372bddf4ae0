"""Build reference images for Kiwi training triplets (the RefVIE recipe, automated).

``python -m trainer.data build-references --csv IN.csv --out OUT.csv --images-dir DIR --vlm QWEN --sam SAM
[--clip CLIP]``

For every row ``(src_video, tgt_video, prompt)`` (paths relative to ``--base-path``, default the input
CSV's folder):

1. read frame ``--frame-index`` of the source and of the target video (an image file is a one-frame video);
2. size filter: a frame whose short side is below ``--min-side`` or whose aspect ratio (long / short side) is
   above ``--max-aspect`` is dropped (stage ``resolution``);
3. edit-pair filter (EditScore-style, before grounding): the VLM scores the pair, source and edited frame with
   the instruction (``edit-pair-quality``: semantic consistency and perceptual quality 0-10, geometric mean);
   below ``--pair-threshold`` the row is dropped (``--no-pair-check`` skips it);
4. decide the kind: ``--mode subject|background``, or ``auto``: an ``edit_type``/``edited_type``
   column containing "background" -> background, else the prompt mentioning background / backdrop /
   scenery -> background, else subject;
5. ground with the VLM: subject -> the content the edit brought in; background -> the foreground;
6. segment the box into an object mask: ``--segment sam`` (default; SAM through transformers from the local
   folder ``--sam``), ``difference`` (pixels in the box that the edit changed; no model) or ``box``;
   an object whose tight box is smaller than ``--min-object-side`` or more elongated than
   ``--max-object-aspect`` is dropped (stage ``segmentation``);
7. subject: the masked object on a clean canvas (``--canvas``, white), cropped tightly
   (``comfy_kiwi.judging.local_reference``); background: only the masked object erased and filled
   (``background_reference``, ``--fill pyramid|diffuse``, grown by ``--dilate``);
8. quality check: the VLM scores the reference 1-10 against the prompt, the source frame and the edited frame;
   below ``--quality-threshold`` the row is dropped (``--no-quality`` skips the check);
9. with ``--clip``: a reference whose CLIP embedding has cosine ``>= --dedupe-threshold`` with an
   already kept one is dropped as a near-duplicate;
10. the reference is written as ``DIR/<row>_<hash>.png`` and the row, with ``ref_image`` (relative to
    the base path, like the other paths), appended to ``OUT.csv``.

Generative synthesis of the reference (the paper redraws it with an image-editing model) is not part of this
tool; its references are cut out of the target frame.

Dropped rows go to ``--drops`` (default ``OUT.drops.jsonl``): one JSON object per row with the row
number, the triplet, the stage (input, resolution, pair, grounding, segmentation, reference, quality, dedupe)
and the reason.

Resumable and idempotent: rows already in ``OUT.csv`` or in the drops file are skipped (matched by
their triplet and occurrence), each row is appended and flushed as soon as it is done, and a re-run
over a finished set changes nothing. ``--retry-drops`` gives dropped rows another chance.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from comfy_kiwi.dtypes import parse_dtype
from comfy_kiwi.errors import InputError, KiwiError

__all__ = ["BuildSettings", "BuildSummary", "build_references", "add_parser", "run", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("src_video", "tgt_video", "prompt")
_BACKGROUND_WORDS = re.compile(r"\b(background|backdrop|backgrounds|scenery)\b", re.I)


@dataclass(frozen=True)
class BuildSettings:
    mode: str = "auto"                 # auto | subject | background
    frame_index: int = 0
    coordinate_space: str = "input"    # how the VLM's boxes are expressed (see comfy_kiwi.judging.grounding)
    quality_threshold: float = 6.0
    check_quality: bool = True
    dedupe_threshold: float = 0.95
    attempts: int = 3
    seed: int = 0
    fill: str = "pyramid"
    dilate: int = 0
    margin: int = 0
    retry_drops: bool = False
    limit: int | None = None
    segment: str = "sam"               # sam | difference | box (comfy_kiwi.judging.segmentation)
    difference_threshold: float = 0.1  # segment = difference: per-channel change that counts as the object
    canvas: tuple = (1.0, 1.0, 1.0)    # background colour of subject references (RGB 0..1)
    check_pair: bool = True            # the EditScore-style filter on the edit pair, before grounding
    pair_threshold: float = 6.0        # 0..10, geometric mean of semantic consistency and perceptual quality
    min_side: int = 256                # frames: shortest side in pixels (our default; 480p data passes)
    max_aspect: float = 3.0            # frames: long side / short side
    min_object_side: int = 16          # the segmented object's tight box: shortest side in pixels
    max_object_aspect: float = 6.0     # ... and its long / short side

    def __post_init__(self):
        from comfy_kiwi.judging.segmentation import SEGMENTERS
        if self.mode not in ("auto", "subject", "background"):
            raise InputError(f"--mode must be auto, subject or background; got {self.mode!r}.")
        if self.frame_index < 0:
            raise InputError(f"--frame-index must be >= 0; got {self.frame_index}.")
        if self.segment not in SEGMENTERS:
            raise InputError(f"--segment must be one of {', '.join(SEGMENTERS)}; got {self.segment!r}.")
        for name in ("min_side", "min_object_side"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}.")
        for name in ("max_aspect", "max_object_aspect"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1 (long side / short side); got "
                                 f"{getattr(self, name)}.")


@dataclass
class BuildSummary:
    total: int = 0
    skipped: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"total": self.total, "already_done": self.skipped, "written": self.written,
                "dropped": dict(self.dropped), "dropped_total": sum(self.dropped.values())}


class _Drop(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage, self.reason = stage, reason


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------

def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise InputError(f"--csv {path}: no such file.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; a Kiwi CSV has src_video, tgt_video, "
                         f"prompt (found: {', '.join(columns) or 'no header'}).")
    return columns, rows


def _triplet(row: dict) -> tuple[str, str, str]:
    return row.get("src_video") or "", row.get("tgt_video") or "", row.get("prompt") or ""


def _keys(rows: list[dict]) -> list[tuple[str, str, str, int]]:
    """(src, tgt, prompt, occurrence) per row: stable under resumes, distinct for repeated triplets."""
    seen: Counter = Counter()
    out = []
    for row in rows:
        t = _triplet(row)
        out.append(t + (seen[t],))
        seen[t] += 1
    return out


def _read_drops(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise InputError(f"{path} line {n}: not JSON; delete the file to rebuild the drop list.") from None
    return out


def _drop_key(d: dict) -> tuple[str, str, str, int]:
    return d.get("src_video", ""), d.get("tgt_video", ""), d.get("prompt", ""), int(d.get("occurrence", 0))


def _write_png_atomic(image: torch.Tensor, path: Path) -> None:
    from comfy_kiwi.frames import to_pil
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    to_pil(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def _image_name(index: int, key: tuple) -> str:
    digest = hashlib.sha1("\x1f".join(map(str, key)).encode("utf-8")).hexdigest()[:10]
    return f"ref_{index:06d}_{digest}.png"


def _kind(row: dict, mode: str) -> str:
    if mode != "auto":
        return mode
    for col in ("edit_type", "edited_type"):
        value = (row.get(col) or "").lower()
        if value:
            return "background" if "background" in value else "subject"
    return "background" if _BACKGROUND_WORDS.search(row.get("prompt") or "") else "subject"


# ---------------------------------------------------------------------------------------------
# one row
# ---------------------------------------------------------------------------------------------

def _read_frame(path: Path, frame_index: int, what: str) -> torch.Tensor:
    from comfy_kiwi.video_io import read_video
    if not path.exists():
        raise _Drop("input", f"{what} not found: {path}")
    try:
        frames, _ = read_video(path, max_frames=frame_index + 1)
    except KiwiError as e:
        raise _Drop("input", f"cannot read {what} {path}: {e}") from None
    if frames.shape[0] <= frame_index:
        raise _Drop("input", f"{what} {path} has {frames.shape[0]} frame(s); --frame-index is {frame_index}")
    return frames[frame_index:frame_index + 1]


def _size_problem(width: int, height: int, min_side: int, max_aspect: float) -> str | None:
    """Why a ``width x height`` region fails the size filter (None when it passes)."""
    short, long = min(width, height), max(width, height)
    if short < min_side:
        return f"{width}x{height}: shortest side {short} < {min_side}"
    if long / short > max_aspect:
        return f"{width}x{height}: aspect ratio {long / short:.2f} > {max_aspect:g}"
    return None


@dataclass
class Models:
    """What a row needs besides the settings: the VLM (grounding and the checks) and the segmenter."""
    generate: object
    sam: object = None


def _make_reference(row: dict, base: Path, models: Models, settings: BuildSettings
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(reference, edited frame, source frame, kind) of one row, or a :class:`_Drop`."""
    from comfy_kiwi.judging import (background_reference, check_edit_pair, ground, local_reference, mask_to_box,
                                    segment_box)
    src, tgt, prompt = _triplet(row)
    if not src or not tgt or not prompt.strip():
        raise _Drop("input", "empty src_video, tgt_video or prompt")
    source = _read_frame(base / src, settings.frame_index, "src_video")
    frame = _read_frame(base / tgt, settings.frame_index, "tgt_video")
    h, w = int(frame.shape[1]), int(frame.shape[2])
    problem = _size_problem(w, h, settings.min_side, settings.max_aspect)
    if problem:
        raise _Drop("resolution", f"target frame {problem}")
    if settings.check_pair:
        pair = check_edit_pair(models.generate, source, frame, prompt, settings.pair_threshold, settings.attempts,
                               settings.seed)
        if not pair.ok:
            raise _Drop("pair", f"edit-pair check unanswered: {pair.errors[-1]}")
        if not pair.passed:
            raise _Drop("pair", f"edit-pair score {pair.score:.2f} is below the threshold {settings.pair_threshold:g}")
    kind = _kind(row, settings.mode)
    target = "edited" if kind == "subject" else "foreground"
    found = ground(models.generate, frame, prompt, target=target, coordinate_space=settings.coordinate_space,
                   attempts=settings.attempts, seed=settings.seed)
    if not found.ok:
        raise _Drop("grounding", f"grounding failed after {len(found.answers)} attempt(s): {found.errors[-1]}")
    src_frame = source[0] if tuple(source.shape[1:3]) == (h, w) else None
    try:
        mask = segment_box(settings.segment, frame[0], found.box, models.sam, src_frame,
                           settings.difference_threshold)
    except InputError as e:
        raise _Drop("segmentation", str(e)) from None
    tight = mask_to_box(mask)
    if tight is None:
        raise _Drop("segmentation", f"the {settings.segment} mask of the box {found.box.as_list()} is empty")
    problem = _size_problem(tight.width, tight.height, settings.min_object_side, settings.max_object_aspect)
    if problem:
        raise _Drop("segmentation", f"object {problem}")
    try:
        if kind == "subject":
            ref = local_reference(frame, mask=mask[None], margin=settings.margin, canvas=settings.canvas)
        else:
            ref = background_reference(frame, mask[None], dilate=settings.dilate, method=settings.fill)
    except InputError as e:
        raise _Drop("reference", str(e)) from None
    return ref, frame, source, kind


# ---------------------------------------------------------------------------------------------
# the whole set
# ---------------------------------------------------------------------------------------------

def build_references(csv_in, csv_out, images_dir, generate, clip=None, base_path=None, drops_path=None,
                     settings: BuildSettings | None = None, progress: bool = True, sam=None) -> BuildSummary:
    """Run the tool (see the module docstring). ``generate``: a comfy_kiwi VLM or any
    ``VLMRequest -> str`` callable; ``clip``: a :class:`comfy_kiwi.judging.ClipModel` or None; ``sam``: a
    :class:`comfy_kiwi.judging.SamSegmenter` (needed by ``settings.segment = "sam"``)."""
    from comfy_kiwi.judging import check_reference_quality, dedupe_features
    from comfy_kiwi.progress import Progress
    settings = settings or BuildSettings()
    if settings.segment == "sam" and sam is None:
        raise InputError("segmentation 'sam' needs a SAM model: give --sam FOLDER (a local transformers SAM "
                         "folder), or choose --segment difference|box.")
    models = Models(generate, sam)
    csv_in, csv_out, images_dir = Path(csv_in), Path(csv_out), Path(images_dir)
    base = Path(base_path) if base_path else csv_in.resolve().parent
    drops_path = Path(drops_path) if drops_path else csv_out.with_name(csv_out.stem + ".drops.jsonl")
    columns, rows = _read_rows(csv_in)
    out_columns = columns + ([] if "ref_image" in columns else ["ref_image"])
    keys = _keys(rows)

    done: set = set()
    kept_features: list[torch.Tensor] = []
    kept_names: list[str] = []
    if csv_out.exists() and csv_out.stat().st_size:
        old_columns, old_rows = _read_rows(csv_out)
        if old_columns != out_columns:
            raise InputError(f"{csv_out} exists with columns {old_columns}, not {out_columns}; choose another --out "
                             "or delete it to start over.")
        done.update(_keys(old_rows))
        if clip is not None:
            from comfy_kiwi.frames import load_image
            for r in old_rows:
                p = base / r["ref_image"]
                if p.exists():
                    kept_features.append(clip.image_features(load_image(p)))
                    kept_names.append(r["ref_image"])
    drops = _read_drops(drops_path)
    if settings.retry_drops and drops:
        retry = {_drop_key(d) for d in drops}
        drops = []
        tmp = drops_path.with_name(drops_path.name + ".tmp")
        tmp.write_text("", encoding="utf-8")
        os.replace(tmp, drops_path)
        done -= retry
    else:
        done.update(_drop_key(d) for d in drops)

    summary = BuildSummary(total=len(rows))
    todo = [i for i, k in enumerate(keys) if k not in done]
    summary.skipped = len(rows) - len(todo)
    if settings.limit is not None:
        todo = todo[:settings.limit]
    csv_out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_out.exists() or csv_out.stat().st_size == 0
    with open(csv_out, "a", newline="", encoding="utf-8") as out_f, \
            open(drops_path, "a", encoding="utf-8") as drop_f, \
            Progress(len(todo), "references", enabled=progress) as bar:
        writer = csv.DictWriter(out_f, fieldnames=out_columns, extrasaction="ignore")
        if new_file:
            writer.writeheader()
            out_f.flush()
        for i in todo:
            row, key = rows[i], keys[i]
            try:
                ref, frame, source, kind = _make_reference(row, base, models, settings)
                if settings.check_quality:
                    q = check_reference_quality(generate, ref, frame, row["prompt"], "local" if kind == "subject"
                                                else "background", settings.quality_threshold, settings.attempts,
                                                settings.seed, source_frame=source)
                    if not q.ok:
                        raise _Drop("quality", f"quality check unanswered: {q.errors[-1]}")
                    if not q.passed:
                        raise _Drop("quality", f"quality score {q.score:g} is below the threshold "
                                               f"{settings.quality_threshold:g}")
                feats = None
                if clip is not None:
                    feats = clip.image_features(ref)
                    existing = torch.cat(kept_features) if kept_features else None
                    d = dedupe_features(feats, settings.dedupe_threshold, existing)
                    if d.duplicates:
                        _, j, cos = d.duplicates[0]
                        raise _Drop("dedupe", f"near-duplicate of {kept_names[j]} (CLIP cosine {cos:.4f} >= "
                                              f"{settings.dedupe_threshold:g})")
                png = images_dir / _image_name(i, key)
                _write_png_atomic(ref, png)
                record = dict(row)
                record["ref_image"] = Path(os.path.relpath(png.resolve(), base.resolve())).as_posix()
                if feats is not None:
                    kept_features.append(feats)
                    kept_names.append(record["ref_image"])
                writer.writerow(record)
                out_f.flush()
                summary.written += 1
            except _Drop as drop:
                entry = {"row": i + 1, "src_video": key[0], "tgt_video": key[1], "prompt": key[2],
                         "occurrence": key[3], "stage": drop.stage, "reason": drop.reason}
                drop_f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                drop_f.flush()
                summary.dropped[drop.stage] += 1
            bar.step()
    return summary


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def add_parser(sub) -> argparse.ArgumentParser:
    d = BuildSettings()
    p = sub.add_parser("build-references", help="add reference images to Kiwi CSV triplets (RefVIE recipe)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--csv", required=True, help="input CSV with src_video, tgt_video, prompt")
    p.add_argument("--out", required=True, help="output CSV (input columns + ref_image); appended on resume")
    p.add_argument("--images-dir", required=True, help="folder for the reference PNGs")
    p.add_argument("--vlm", required=True, help="local Qwen2.5-VL folder (grounding and quality checks)")
    p.add_argument("--sam", default=None, help="local transformers SAM folder (box -> object mask)")
    p.add_argument("--segment", choices=["sam", "difference", "box"], default=d.segment,
                   help="how the grounded box becomes a mask: SAM (needs --sam), the pixels the edit changed "
                        "inside the box, or the whole box")
    p.add_argument("--difference-threshold", type=float, default=d.difference_threshold,
                   help="--segment difference: change (0..1, max over channels) that counts as the object")
    p.add_argument("--canvas", type=float, nargs=3, default=list(d.canvas), metavar=("R", "G", "B"),
                   help="background colour of subject references, 0..1")
    p.add_argument("--pair-threshold", type=float, default=d.pair_threshold,
                   help="minimum 0-10 edit-pair score (EditScore-style check before grounding)")
    p.add_argument("--no-pair-check", action="store_true", help="skip the edit-pair check")
    p.add_argument("--min-side", type=int, default=d.min_side, help="frames: minimum shortest side (pixels)")
    p.add_argument("--max-aspect", type=float, default=d.max_aspect, help="frames: maximum long/short side")
    p.add_argument("--min-object-side", type=int, default=d.min_object_side,
                   help="segmented object: minimum shortest side of its tight box (pixels)")
    p.add_argument("--max-object-aspect", type=float, default=d.max_object_aspect,
                   help="segmented object: maximum long/short side of its tight box")
    p.add_argument("--clip", default=None, help="local CLIP folder for near-duplicate removal (off without it)")
    p.add_argument("--base-path", default=None, help="folder the CSV paths are relative to (default: the CSV's)")
    p.add_argument("--drops", default=None, help="JSONL of dropped rows (default: OUT.drops.jsonl)")
    p.add_argument("--mode", choices=["auto", "subject", "background"], default=d.mode)
    p.add_argument("--frame-index", type=int, default=d.frame_index, help="target frame the reference comes from")
    p.add_argument("--coordinate-space", choices=["input", "original", "normalized_1000"], default=d.coordinate_space,
                   help="how the VLM writes boxes (Qwen2.5-VL: pixels of its input image)")
    p.add_argument("--quality-threshold", type=float, default=d.quality_threshold, help="minimum 1-10 score kept")
    p.add_argument("--no-quality", action="store_true", help="skip the VLM quality check")
    p.add_argument("--dedupe-threshold", type=float, default=d.dedupe_threshold, help="CLIP cosine of a duplicate")
    p.add_argument("--attempts", type=int, default=d.attempts, help="VLM answers tried per question")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--fill", choices=["pyramid", "diffuse"], default=d.fill, help="hole fill of background references")
    p.add_argument("--dilate", type=int, default=d.dilate, help="grow the removed foreground by N pixels")
    p.add_argument("--margin", type=int, default=d.margin, help="canvas margin around subject references (pixels)")
    p.add_argument("--retry-drops", action="store_true", help="process rows dropped by an earlier run again")
    p.add_argument("--limit", type=int, default=None, help="process at most N new rows")
    p.add_argument("--max-pixels", type=int, default=28 * 28 * 1024, help="pixel budget of images shown to the VLM")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from comfy_kiwi.judging import VLMSettings, load_clip, load_sam, load_vlm
    dtype = parse_dtype(args.dtype)
    settings = BuildSettings(mode=args.mode, frame_index=args.frame_index, coordinate_space=args.coordinate_space,
                             quality_threshold=args.quality_threshold, check_quality=not args.no_quality,
                             dedupe_threshold=args.dedupe_threshold, attempts=args.attempts, seed=args.seed,
                             fill=args.fill, dilate=args.dilate, margin=args.margin, retry_drops=args.retry_drops,
                             limit=args.limit, segment=args.segment, difference_threshold=args.difference_threshold,
                             canvas=tuple(args.canvas), check_pair=not args.no_pair_check,
                             pair_threshold=args.pair_threshold, min_side=args.min_side, max_aspect=args.max_aspect,
                             min_object_side=args.min_object_side, max_object_aspect=args.max_object_aspect)
    if settings.segment == "sam" and not args.sam:
        raise InputError("--segment sam needs --sam FOLDER (a local transformers SAM folder); or choose "
                         "--segment difference|box.")
    sam = load_sam(args.sam, device=args.device) if settings.segment == "sam" else None
    vlm = load_vlm(args.vlm, dtype=dtype, device=args.device, settings=VLMSettings(image_max_pixels=args.max_pixels))
    clip = load_clip(args.clip, device=args.device) if args.clip else None
    summary = build_references(args.csv, args.out, args.images_dir, vlm, clip, args.base_path, args.drops, settings,
                               progress=not args.no_progress, sam=sam)
    print(json.dumps(summary.to_dict(), indent=2))
    return 0
