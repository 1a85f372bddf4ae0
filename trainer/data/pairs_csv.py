"""Make a Kiwi CSV from folders of videos: ``python -m trainer.data pairs-csv``.

``--source-dir`` holds the original clips, ``--target-dir`` the edited ones, matched by file name without the
extension (``a.mp4`` ↔ ``a.mp4`` or ``a.webm``; images work the same way as 1-frame clips). The instruction of
a pair is the text file ``<name>.txt`` beside the target (or beside the source), else ``--prompt``. With
``--reference-dir``, an image ``<name>.png``/``.jpg``/... there becomes the row's ``ref_image``. Paths in the
CSV are relative to the CSV's folder, as the trainer and the Kiwi tools read them.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from comfy_kiwi.errors import InputError

MEDIA = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif", ".png", ".jpg", ".jpeg", ".webp", ".bmp"}
IMAGES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _by_stem(folder: Path, suffixes, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is not a folder.")
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in suffixes:
            if f.stem in out:
                raise InputError(f"{what} {folder} has two files named {f.stem} ({out[f.stem].name}, {f.name}); "
                                 "keep one per name.")
            out[f.stem] = f
    return out


def _prompt(name: str, target: Path, source: Path, default: str) -> str:
    for side in (target, source):
        text = side.with_suffix(".txt")
        if text.is_file():
            return " ".join(text.read_text(encoding="utf-8").split())
    return default


def make_pairs_csv(source_dir, target_dir, out, prompt: str = "", reference_dir=None) -> tuple[int, list[str]]:
    """Write the CSV; returns (rows written, names skipped with the reason)."""
    sources = _by_stem(Path(source_dir), MEDIA, "--source-dir")
    targets = _by_stem(Path(target_dir), MEDIA, "--target-dir")
    refs = _by_stem(Path(reference_dir), IMAGES, "--reference-dir") if reference_dir else {}
    out = Path(out)
    base = out.resolve().parent
    rows, skipped = [], []
    for name, src in sources.items():
        if name not in targets:
            skipped.append(f"{name}: no edited clip in --target-dir")
            continue
        text = _prompt(name, targets[name], src, prompt)
        if not text:
            skipped.append(f"{name}: no {name}.txt instruction and no --prompt")
            continue
        if reference_dir and name not in refs:
            skipped.append(f"{name}: no reference image in --reference-dir")
            continue
        row = {"src_video": Path(os.path.relpath(src.resolve(), base)).as_posix(),
               "tgt_video": Path(os.path.relpath(targets[name].resolve(), base)).as_posix(), "prompt": text}
        if reference_dir:
            row["ref_image"] = Path(os.path.relpath(refs[name].resolve(), base)).as_posix()
        rows.append(row)
    if not rows:
        raise InputError(f"no pairs found: {len(sources)} source and {len(targets)} edited file(s) share no name"
                         f"{' with an instruction' if sources.keys() & targets.keys() else ''}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows), skipped


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pairs-csv", help="a Kiwi CSV from a folder of source clips and a folder of edited clips")
    p.add_argument("--source-dir", required=True, help="original videos (or images)")
    p.add_argument("--target-dir", required=True, help="edited videos, same file names")
    p.add_argument("--out", required=True, help="the CSV to write")
    p.add_argument("--prompt", default="", help="instruction for pairs without a <name>.txt file")
    p.add_argument("--reference-dir", default=None, help="reference images, same file names (optional)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    n, skipped = make_pairs_csv(args.source_dir, args.target_dir, args.out, args.prompt, args.reference_dir)
    for s in skipped:
        print(f"skipped {s}")
    print(f"wrote {n} pair(s) to {args.out}")
    return 0
