"""Toy examples as files: videos, reference images, a sidecar with the scene, and Kiwi CSV datasets.

A bundled toy video ``NAME.mp4`` has a sidecar ``NAME.toy.json`` holding its scene description, so
the command line can render the ground truth of any templated instruction on it and print the toy
judge's scores (``judge_file_edit``). Datasets are written in the trainer's Kiwi CSV layout
(``src_video,tgt_video,prompt[,ref_image]``); image pairs as PNG files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .judge import nearest_labels, score_frames
from .parse import parse_instruction, reference_colour_shape
from .world import FPS, PALETTE_RGB, ToyExample, ToyObject, ToyScene, apply_edit, render_labels

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
DEMO_VIDEO = EXAMPLES_DIR / "toy_scene.mp4"
DEMO_INSTRUCTION = "remove the purple triangle"
DEMO_SEED = 2000528          # a demo-split scene: a moving red circle and purple triangle on gray
SIDECAR_SUFFIX = ".toy.json"


def scene_to_json(scene: ToyScene) -> dict:
    return {"background": scene.background, "num_frames": scene.num_frames,
            "objects": [asdict(o) for o in scene.objects]}


def scene_from_json(data: dict) -> ToyScene:
    try:
        objects = tuple(ToyObject(o["shape"], o["colour"], int(o["cell"]), tuple(o["start"]), tuple(o["velocity"]))
                        for o in data["objects"])
        return ToyScene(data["background"], objects, int(data["num_frames"]))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"toy sidecar: not a toy scene description ({e}).") from None


def sidecar_path(video) -> Path:
    video = Path(video)
    return video.with_name(video.stem + SIDECAR_SUFFIX)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float().div_(255.0)


def write_example_video(path, example: ToyExample) -> Path:
    """The example's source video (lossy mp4) and its sidecar; the reference image as NAME_ref.png."""
    from ..video_io import write_video
    path = Path(path)
    write_video(path, _to_tensor(example.source), FPS, crf=0)
    meta = {"scene": scene_to_json(example.scene), "seed": example.seed, "instruction": example.instruction}
    sidecar_path(path).write_text(json.dumps(meta, indent=2))
    if example.reference is not None:
        from ..frames import tensor_to_pil as to_pil
        to_pil(_to_tensor(example.reference)).save(path.with_name(path.stem + "_ref.png"))
    return path


def write_demo_video(path=DEMO_VIDEO) -> Path:
    """(Re)write the bundled demo video and its sidecar."""
    from .world import make_example
    return write_example_video(path, make_example(DEMO_SEED, kinds=("recolour",)))


def snap_to_palette(frames: torch.Tensor) -> torch.Tensor:
    """Every pixel → its nearest toy palette colour: undoes the colour bleeding of yuv420 video files
    (toy frames are palette images; the toy model was trained on exact ones)."""
    labels = nearest_labels(frames)
    return torch.from_numpy(PALETTE_RGB[labels]).float().div_(255.0)


def judge_file_edit(video, instruction: str, edited: torch.Tensor, references=None) -> dict | None:
    """Toy-judge scores of an edit of a toy video that has a sidecar; None for any other video."""
    side = sidecar_path(video)
    if not side.is_file():
        return None
    scene = scene_from_json(json.loads(side.read_text()).get("scene", {}))
    ref = reference_colour_shape(references[0]) if references else None
    edit = parse_instruction(instruction, scene, ref)
    source = render_labels(scene)
    target = render_labels(apply_edit(scene, edit))
    return score_frames(edited, source, target).as_dict()


def write_csv_dataset(folder, examples: list[ToyExample]) -> Path:
    """Kiwi CSV dataset: videos or images (png, 1-frame examples) plus metadata.csv. Videos are lossless
    FFV1 .mkv files, so the trainer reads back exactly the pixels the toy world drew."""
    from ..frames import tensor_to_pil as to_pil
    from ..video_io import write_video
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with_ref = any(e.reference is not None for e in examples)
    rows = []
    for e in examples:
        name = f"{e.seed:08d}"
        if e.source.shape[0] == 1:
            src, tgt = f"{name}_src.png", f"{name}_tgt.png"
            to_pil(_to_tensor(e.source[0])).save(folder / src)
            to_pil(_to_tensor(e.target[0])).save(folder / tgt)
        else:
            src, tgt = f"{name}_src.mkv", f"{name}_tgt.mkv"
            write_video(folder / src, _to_tensor(e.source), FPS, codec="ffv1")
            write_video(folder / tgt, _to_tensor(e.target), FPS, codec="ffv1")
        row = [src, tgt, e.instruction]
        if with_ref:
            ref = ""
            if e.reference is not None:
                ref = f"{name}_ref.png"
                to_pil(_to_tensor(e.reference)).save(folder / ref)
            row.append(ref)
        rows.append(row)
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src_video", "tgt_video", "prompt"] + (["ref_image"] if with_ref else []))
        w.writerows(rows)
    return folder / "metadata.csv"
