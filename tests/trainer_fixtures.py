"""A tiny, complete training setup written into a folder: DiT, VAE, umT5, image pairs and a TOML config.

Image pairs are coloured shapes on a plain background; the edit recolours the shape.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def shape_image(colour, shape: str, size=(64, 64), offset=0) -> Image.Image:
    im = Image.new("RGB", size, (235, 235, 235))
    d = ImageDraw.Draw(im)
    box = (12 + offset, 14, 44 + offset, 46)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=colour)
    return im


def write_pairs(folder: Path, count: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = ["source_image,edited_image,edited_prompt,source_prompt"]
    for i in range(count):
        shape = "square" if i % 2 else "circle"
        a, b = names[i % 4], names[(i + 1) % 4]
        shape_image(COLOURS[a], shape, offset=i % 3).save(folder / f"src{i}.png")
        shape_image(COLOURS[b], shape, offset=i % 3).save(folder / f"tgt{i}.png")
        lines.append(f"src{i}.png,tgt{i}.png,a {b} {shape} on a white background,a {a} {shape}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"


def write_models(folder: Path) -> dict:
    from comfy_kiwi.testing import tiny_dit, tiny_vae
    from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
    folder.mkdir(parents=True, exist_ok=True)
    dit = tiny_dit.write_original_file(tiny_dit.tiny_dit("2.1", seed=3), folder / "dit.safetensors")
    vae = tiny_vae.write_original_file(tiny_vae.tiny_vae("2.1", seed=4), folder / "vae.safetensors")
    umt5 = write_tiny_umt5(folder / "umt5", d_model=32)
    return {"dit": dit, "vae": vae, "umt5": umt5}


def write_config(folder: Path, models: dict, dataset: Path, **sections) -> Path:
    """A TOML config; ``sections`` override keys, e.g. schedule={"max_steps": 6}."""
    base = {
        "model": {"dit": str(models["dit"]), "vae": str(models["vae"]), "text_encoder": str(models["umt5"]),
                  "dtype": "fp32", "attention": "sdpa"},
        "data": {"dataset": str(dataset), "resolution": 64, "text_len": 16, "cache_dir": str(folder / "cache")},
        "method": {"name": "imvideoedit"},
        "optimizer": {"lr": 2e-3, "max_grad_norm": 1.0},
        "schedule": {"max_steps": 10, "warmup_steps": 2, "batch_size": 2, "grad_accum": 1, "seed": 7},
        "precision": {"mixed": "no", "gradient_checkpointing": False},
        "checkpoint": {"output_dir": str(folder / "run"), "every": 5},
        "logging": {"progress": False, "tensorboard": False},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    text = []
    for section, values in base.items():
        text.append(f"[{section}]")
        for k, v in values.items():
            text.append(f"{k} = " + (f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool)
                                     else repr(v)))
    path = folder / "train.toml"
    path.write_text("\n".join(text) + "\n")
    return path


def run_config(setup, name, **sections):
    """The config of ``setup`` = (root, toml) with its own output folder ``root/name`` and ``sections`` set on it,
    e.g. ``run_config(setup, "resume", schedule={"max_steps": 10})``."""
    from trainer.config import load_config
    root, toml = setup
    cfg = load_config(toml)
    cfg.checkpoint.output_dir = str(root / name)
    for sect, values in sections.items():
        for k, v in values.items():
            setattr(getattr(cfg, sect), k, v)
    return cfg


def tiny_setup(folder: Path, count: int = 8, **sections) -> Path:
    models = write_models(folder / "models")
    dataset = write_pairs(folder / "data", count)
    return write_config(folder, models, dataset, **sections)


# --------------------------------------------------------------------------------------------------
# Kiwi-Edit / InstructX: tiny Wan2.2-style DiT, Wan2.2 VAE, tiny Qwen2.5-VL, image / video / reference data
# --------------------------------------------------------------------------------------------------

def _moving_frames(colour, shape: str, frames: int = 5, size=(64, 64)):
    import numpy as np
    import torch
    frames = [np.asarray(shape_image(colour, shape, size, offset=2 * f)) for f in range(frames)]
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def write_kiwi_data(folder: Path, count: int = 4) -> dict:
    """Kiwi CSVs: ``image.csv`` (PNG pairs), ``video.csv`` (5-frame mp4 pairs), ``reference.csv`` (video pairs
    with a ``ref_image``). The edit recolours the moving shape to the colour the prompt (and reference) names."""
    from comfy_kiwi.video_io import write_video
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    rows = {"image": ["src_video,tgt_video,prompt"], "video": ["src_video,tgt_video,prompt"],
            "reference": ["src_video,tgt_video,prompt,ref_image"]}
    for i in range(count):
        shape = "square" if i % 2 else "circle"
        a, b = names[i % 4], names[(i + 1) % 4]
        shape_image(COLOURS[a], shape, offset=i % 3).save(folder / f"img_src{i}.png")
        shape_image(COLOURS[b], shape, offset=i % 3).save(folder / f"img_tgt{i}.png")
        rows["image"].append(f"img_src{i}.png,img_tgt{i}.png,Turn the {shape} {b}.")
        write_video(folder / f"vid_src{i}.mp4", _moving_frames(COLOURS[a], shape), fps=8)
        write_video(folder / f"vid_tgt{i}.mp4", _moving_frames(COLOURS[b], shape), fps=8)
        rows["video"].append(f"vid_src{i}.mp4,vid_tgt{i}.mp4,Turn the {shape} {b}.")
        shape_image(COLOURS[b], shape, size=(40, 48)).save(folder / f"ref{i}.png")
        rows["reference"].append(f"vid_src{i}.mp4,vid_tgt{i}.mp4,Replace the {shape}.,ref{i}.png")
    out = {}
    for name, lines in rows.items():
        out[name] = folder / f"{name}.csv"
        out[name].write_text("\n".join(lines) + "\n")
    return out


def write_kiwi_models(folder: Path) -> dict:
    """A bare tiny Wan2.2-style DiT file, a Wan2.2 VAE file, a stock tiny Qwen2.5-VL folder and a tiny Kiwi
    release folder (for fine-tuning a released model)."""
    from comfy_kiwi.testing import tiny_dit, tiny_qwen, tiny_vae
    from comfy_kiwi.testing.tiny_release import tiny_kiwi_dit_config, tiny_kiwi_vae, write_tiny_kiwi_release
    folder.mkdir(parents=True, exist_ok=True)
    dit = tiny_dit.tiny_dit(config=tiny_kiwi_dit_config(), seed=5)
    return {"dit": tiny_dit.write_original_file(dit, folder / "dit.safetensors"),
            "vae": tiny_vae.write_original_file(tiny_kiwi_vae(1), folder / "vae.safetensors"),
            "mllm": tiny_qwen.write_tiny_base(folder / "qwen"),
            "release": write_tiny_kiwi_release(folder / "release")}


def _toml_value(v) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_toml(table: dict, path: Path) -> Path:
    """A TOML file from nested dicts (tables, and arrays of tables under lists of dicts)."""
    lines = []

    def emit(prefix, t):
        plain = {k: v for k, v in t.items() if not isinstance(v, dict) and not (isinstance(v, list) and v
                                                                                and isinstance(v[0], dict))}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in plain.items())
        for k, v in t.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{prefix + '.' if prefix else ''}{k}]]")
                    lines.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items())
        for k, v in t.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}" if prefix else k, v)
    emit("", table)
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_preset(preset: str, folder: Path, models: dict, data: dict, **overrides) -> Path:
    """A shipped preset with tiny models and data swapped in: its datasets keep their order and frames
    (81 → 5), paths point at the tiny files, sizes and steps shrink. ``overrides``: {section: {key: value}}."""
    import tomllib
    root = Path(__file__).resolve().parents[1] / "trainer" / "presets"
    table = tomllib.loads((root / f"{preset}.toml").read_text())
    release = "release" if table["model"]["dit"].startswith("models/kiwi/") else None
    table["model"].update({"dit": str(models[release or "dit"]), "vae": str(models["vae"]),
                           "mllm": str(models[release or "mllm"]), "dtype": "fp32", "attention": "sdpa"})
    if release:
        table["model"]["vae"] = str(models["release"] / "vae")
    kinds = {"image": "image", "video": "video", "videos": "reference", "reference": "reference"}
    for spec in table["data"]["datasets"]:
        spec["dataset"] = str(data[kinds[spec["name"]]])
        spec["frames"] = 1 if spec["frames"] == 1 else 5
    table["data"].update({"max_pixels": 64 * 64, "multiple": 32, "cache_dir": str(folder.parent / "cache")})
    table["schedule"].update({"max_steps": 4, "seed": 3})
    table["checkpoint"].update({"output_dir": str(folder / "run"), "every": 100})
    table["checkpoint"].pop("init_from", None)
    table["precision"]["mixed"] = "no"
    table.setdefault("sampling", {})["every"] = 0
    table["logging"] = {"every": 1, "progress": False, "tensorboard": False}
    for section, values in overrides.items():
        target = table.setdefault(section, {})
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(target.get(k), dict):
                target[k].update(v)
            else:
                target[k] = v
    folder.mkdir(parents=True, exist_ok=True)
    return write_toml(table, folder / f"{preset}.toml")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: thread start-up and contention with other processes cost more than the math.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")`` after importing it."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
