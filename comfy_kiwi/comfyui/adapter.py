"""The one place that talks to ComfyUI, and only when ComfyUI is present.

Everything here degrades to a no-op outside ComfyUI, so the library, the command line and the
trainer run without it. Nothing is imported from ComfyUI at module import time.
"""

from __future__ import annotations

import importlib
import sys


def comfy_present() -> bool:
    """True when running inside ComfyUI (its ``comfy`` package has been imported)."""
    return "comfy.model_management" in sys.modules or "comfy.utils" in sys.modules


def _comfy(module: str):
    if not comfy_present():
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def progress_bar(total: int):
    """ComfyUI's ProgressBar for ``total`` steps, or None outside ComfyUI."""
    utils = _comfy("comfy.utils")
    return utils.ProgressBar(total) if utils is not None else None


def raise_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user cancelled the queue item."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def free_memory(bytes_needed: int, device) -> None:
    """Ask ComfyUI to unload its own models until ``bytes_needed`` are free on ``device``."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.free_memory(bytes_needed, device)


def soft_empty_cache() -> None:
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    else:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def compute_device():
    """ComfyUI's torch device when inside ComfyUI, else CUDA when available, else CPU."""
    import torch
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------------
# model folders: ComfyUI's folder_paths when running inside ComfyUI, a plain models/ folder otherwise
# --------------------------------------------------------------------------------------------------

# Outside ComfyUI the nodes (tests, scripts) look for "<models dir>/<kind>/"; ComfyUI's own default
# alternatives ("unet" for diffusion_models, "clip" for text_encoders) are searched too.
_ALIASES = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip")}
_models_dir = None


def _folder_paths():
    """ComfyUI's folder_paths module when ComfyUI has imported it (never imported from here)."""
    return sys.modules.get("folder_paths")


def set_models_dir(path) -> None:
    """Outside ComfyUI: the folder holding kiwi/, diffusion_models/, vae/, text_encoders/, loras/.
    Default: the environment variable KIWI_MODELS_DIR, else ./models."""
    global _models_dir
    _models_dir = None if path is None else str(path)


def _fallback_root():
    import os
    return _models_dir or os.environ.get("KIWI_MODELS_DIR") or os.path.join(os.getcwd(), "models")


def register_model_folder(name: str = "kiwi") -> bool:
    """Add ``<ComfyUI models>/<name>`` to folder_paths under ``name``, keeping any paths already
    configured for it (extra_model_paths.yaml). Returns False outside ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return False
    import os
    default = os.path.join(fp.models_dir, name)
    existing = fp.folder_names_and_paths.get(name)
    if existing is None or default not in existing[0]:
        fp.add_model_folder_path(name, default)
    return True


def model_folders(kind: str) -> list:
    """The folders searched for models of ``kind`` ("kiwi", "diffusion_models", "vae", ...)."""
    import os
    fp = _folder_paths()
    if fp is not None:
        try:
            return list(fp.get_folder_paths(kind))
        except KeyError:
            return []
    root = _fallback_root()
    return [os.path.join(root, alias) for alias in _ALIASES.get(kind, (kind,))]


def model_files(kind: str, extensions=(".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt")) -> list:
    """Model files of ``kind`` as paths relative to their folder (ComfyUI's list when inside it)."""
    import os
    fp = _folder_paths()
    if fp is not None:
        try:
            names = fp.get_filename_list(kind)
        except KeyError:
            names = []
    else:
        names = []
        for folder in model_folders(kind):
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                names += [os.path.relpath(os.path.join(dirpath, f), folder) for f in filenames]
    return sorted({n.replace(os.sep, "/") for n in names if n.lower().endswith(tuple(extensions))})

