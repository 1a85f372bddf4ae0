"""``describe(path)``: what a file or folder is, as JSON-ready data (``python -m comfy_kiwi info``).

Each model kind answers for itself (``describe_dit``, ``describe_vae``, ``describe_mllm`` return
None for files that are not theirs); a Kiwi-Edit release folder is described part by part; a folder
of a registered kind (``registry.py``) describes itself.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .registry import model_folder_kind

RELEASE_PARTS = ("transformer", "vae", "mllm_encoder", "processor", "source_embedder", "ref_embedder")


def _describers():
    from .dit_loader import describe_dit
    from .vae_loader import describe_vae
    from ..mllm.loader import describe_mllm
    return (describe_dit, describe_vae, describe_mllm)


def is_release_folder(path: Path) -> bool:
    return path.is_dir() and (path / "transformer").is_dir() and (path / "mllm_encoder").is_dir()


def describe(source) -> dict:
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    kind = model_folder_kind(path)
    if kind is not None:                    # a registered folder kind (e.g. a toy model) describes itself
        return kind.describe(path)
    if is_release_folder(path):
        parts = {}
        for name in RELEASE_PARTS:
            sub = path / name
            if name.endswith("_embedder") and sub.is_dir() and not any(sub.glob("*.safetensors*")):
                parts[name] = {"kind": "kiwi-embedder", "path": str(sub), "weights": None,
                               "note": "config only: the release has no such branch"}
            else:
                parts[name] = describe_part(sub) if sub.exists() else None
        missing = [n for n in ("transformer", "vae", "mllm_encoder", "processor") if parts[n] is None]
        return {"kind": "kiwi-release", "path": str(path), "parts": parts, "missing_parts": missing}
    return describe_part(path)


def describe_part(path: Path) -> dict:
    """One file or folder (a release part) described by the first describer that knows it."""
    if path.is_dir() and path.name == "processor":
        files = sorted(p.name for p in path.iterdir())
        return {"kind": "processor", "path": str(path), "files": files}
    tried = []
    for fn in _describers():
        info = fn(path)
        if info is not None:
            return {"path": str(path), **info}
        tried.append(fn.__name__.removeprefix("describe_"))
    raise CheckpointError(
        f"{path}: not a model this package knows. Checked for: Wan DiT (original, ComfyUI or diffusers "
        "layout, Kiwi checkpoints), Wan VAE (2.1/2.2), Qwen2.5-VL encoder folders; none matched.")
