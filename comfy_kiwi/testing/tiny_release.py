"""A tiny Kiwi-Edit release folder (and the loose part files) built from the tiny test models.

The folder has the real layout — ``transformer/`` (diffusers keys), ``vae/`` (original Wan2.2 keys),
``mllm_encoder/`` + ``processor/`` (tiny Qwen2.5-VL), ``source_embedder/`` and ``ref_embedder/`` —
so every loader, node and workflow runs on it exactly as on the released models, in seconds on a CPU.

The widths fit together: the tiny MLLM's connector outputs ``TINY_DIT_DIM`` (48) features, so the
DiT is 48 wide; the VAE is a Wan2.2 VAE (z 48, ×16 spatial), so the DiT takes 48 latent channels.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import atexit
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..models.wan_config import WanDiTConfig
from . import tiny_dit as _dit
from . import tiny_qwen as _qwen
from . import tiny_vae as _vae

RELEASE_KINDS = ("instruct-reference", "instruct-only", "reference-only")


def tiny_kiwi_dit_config() -> WanDiTConfig:
    """A 48-wide, 2-block Wan2.2-style DiT (in/out 48 channels, head width 24)."""
    return WanDiTConfig(dim=_qwen.TINY_DIT_DIM, ffn_dim=64, num_heads=2, num_layers=2, in_dim=48, out_dim=48,
                        text_dim=32, freq_dim=32)


def tiny_kiwi_dit(seed: int = 0, reference_first: bool = False):
    return _dit.tiny_dit(config=tiny_kiwi_dit_config(), seed=seed, embedders=True,
                         reference_first=reference_first)


def tiny_kiwi_vae(seed: int = 0):
    return _vae.tiny_vae("2.2", seed=seed, dim=8)


def write_tiny_kiwi_release(root, kind: str = "instruct-reference", seed: int = 0) -> Path:
    """A complete release folder. ``kind`` mirrors the three published releases: "instruct-only"
    (stage 2: no reference branch), "reference-only" (reference placed first), "instruct-reference"."""
    if kind not in RELEASE_KINDS:
        raise ValueError(f"kind must be one of {RELEASE_KINDS}, got {kind!r}")
    root = Path(root)
    with_ref = kind != "instruct-only"
    ref_first = kind == "reference-only"
    _dit.write_kiwi_release(tiny_kiwi_dit(seed, ref_first), root, reference_first=ref_first,
                            with_reference=with_ref)
    _vae.write_kiwi_vae_folder(tiny_kiwi_vae(seed), root / "vae")
    _qwen.write_tiny_release(root, seed=seed, with_reference=with_ref)
    return root


def write_tiny_parts(models_dir, seed: int = 0) -> dict[str, Path]:
    """Loose part files in ComfyUI's model folders: a Wan2.2 VAE file in ``vae/``, a Kiwi training
    checkpoint (DiT + embedders) in ``diffusion_models/``, a tiny Qwen2.5-VL folder in ``text_encoders/``
    and a DiT LoRA in ``loras/`` (ComfyUI LoraLoader key names)."""
    models_dir = Path(models_dir)
    dit = tiny_kiwi_dit(seed)
    out = {
        "vae": _vae.write_original_file(tiny_kiwi_vae(seed), models_dir / "vae" / "wan2.2_vae.safetensors"),
        "dit": _dit.write_kiwi_checkpoint(dit, models_dir / "diffusion_models" / "kiwi_tiny_dit.safetensors",
                                          parts=("dit", "source", "ref")),
        "mllm": _qwen.write_tiny_base(models_dir / "text_encoders" / "qwen2.5-vl-tiny", seed=seed),
    }
    lora_path = models_dir / "loras" / "kiwi_tiny_lora.safetensors"
    lora_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_dit_lora(dit), str(lora_path))
    out["lora"] = lora_path
    return out


def tiny_dit_lora(dit, rank: int = 4, seed: int = 3, prefix: str = "diffusion_model.") -> dict[str, torch.Tensor]:
    """A random LoRA on every attention projection, in ComfyUI's LoraLoader key format."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, block in enumerate(dit.blocks):
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                lin = getattr(getattr(block, attn), proj)
                base = f"{prefix}blocks.{i}.{attn}.{proj}"
                out[f"{base}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) * 0.2
                out[f"{base}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g) * 0.2
                out[f"{base}.alpha"] = torch.tensor(float(rank) / 2)
    return out


def tiny_video_frames(frames: int = 5, height: int = 72, width: int = 88, seed: int = 0) -> torch.Tensor:
    """A smooth moving gradient ``[F, H, W, 3]`` in 0..1 (compresses well, survives a codec)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for f in range(frames):
        r = 0.5 + 0.5 * np.sin((x + 4 * f) / width * np.pi * 2)
        g = 0.5 + 0.5 * np.cos((y + 3 * f) / height * np.pi * 2)
        b = np.full_like(r, (seed * 37 % 100) / 100.0)
        out.append(np.stack([r, g, b], -1))
    return torch.from_numpy(np.stack(out)).clamp_(0, 1)


@dataclass
class TinyKiwiModels:
    """A ComfyUI-style ``models/`` tree: ``kiwi/<release>`` folders plus the loose parts."""

    models_dir: Path
    releases: dict[str, Path]
    parts: dict[str, Path]


def write_tiny_models_dir(models_dir, seed: int = 0,
                          release_names: dict[str, str] | None = None) -> TinyKiwiModels:
    """Every tiny model the workflows need, under the names the workflows use.

    ``release_names`` maps release kind → folder name in ``models/kiwi`` (default: the Hugging Face
    repo names of the real releases, so the shipped workflows find them)."""
    models_dir = Path(models_dir)
    names = release_names or {kind: f"kiwi-edit-5b-{kind}-diffusers" for kind in RELEASE_KINDS}
    releases = {kind: write_tiny_kiwi_release(models_dir / "kiwi" / name, kind, seed)
                for kind, name in names.items()}
    return TinyKiwiModels(models_dir, releases, write_tiny_parts(models_dir, seed))


@functools.lru_cache(maxsize=1)
def tiny_models_dir() -> TinyKiwiModels:
    """``write_tiny_models_dir`` into a temp folder, once per process (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="kiwi-tiny-models-"))
    atexit.register(shutil.rmtree, root, True)
    return write_tiny_models_dir(root / "models")
