"""A tiny, complete training setup written into a folder: DiT, VAE, umT5, image pairs and a TOML config.

Image pairs are coloured shapes on a plain background; the edit recolours the shape.
"""

from __future__ import annotations

from pathlib import Path

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


def tiny_setup(folder: Path, count: int = 8, **sections) -> Path:
    models = write_models(folder / "models")
    dataset = write_pairs(folder / "data", count)
    return write_config(folder, models, dataset, **sections)
