"""Shared bits of the judging / reward / reference nodes: library import, custom types, small converters."""

from __future__ import annotations

import json
from pathlib import Path

from .common import kiwi

VLM_TYPE = "KIWI_VLM"
CLIP_TYPE = "KIWI_CLIP"
SAM_TYPE = "KIWI_SAM"
CATEGORY_JUDGE = "Kiwi Edit/Judge"
CATEGORY_REFERENCE = "Kiwi Edit/Reference"
DTYPE_CHOICES = ["auto", "bf16", "fp16", "fp32"]
DEVICE_CHOICES = ["auto", "cpu", "cuda"]


def lib(module: str = "comfy_kiwi.judging"):
    """Import a comfy_kiwi module by its full name (installed, or the copy inside this pack)."""
    return kiwi(module.removeprefix("comfy_kiwi").lstrip("."))


def torch_dtype(name: str):
    return lib("comfy_kiwi.dtypes").parse_dtype(name)


def device_arg(name: str):
    return None if name == "auto" else name


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)


def tip(text: str, **kw) -> dict:
    out = {"tooltip": text}
    out.update(kw)
    return out


# --- model folders of the judge / reward loaders --------------------------------------------------------
# The VLM judge: a stock Qwen2.5-VL folder in models/text_encoders/ (where the MLLM loader looks too).
# CLIP / PickScore: a transformers CLIPModel folder in models/clip_vision/.
# A folder may sit one level down (e.g. text_encoders/Qwen/Qwen2.5-VL-7B-Instruct). An absolute path is
# accepted as the value too (API prompts, scripts).

FOLDER_KINDS = {
    "vlm": ("text_encoders", "qwen2_5_vl", "a Qwen2.5-VL model folder", "Kiwi VLM Loader",
            "hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir models/text_encoders/Qwen2.5-VL-7B-Instruct"),
    "clip": ("clip_vision", "clip", "a CLIP model folder (transformers CLIPModel, e.g. clip-vit-large-patch14 "
             "or PickScore_v1)", "Kiwi CLIP / PickScore Loader",
             "hf download openai/clip-vit-large-patch14 --local-dir models/clip_vision/clip-vit-large-patch14"),
    "sam": ("sams", "sam", "a Segment Anything folder (transformers SamModel, e.g. sam-vit-base)", "Kiwi SAM Loader",
            "hf download facebook/sam-vit-base --local-dir models/sams/sam-vit-base"),
}
NO_FOLDER = "none"


def _adapter():
    return lib("comfy_kiwi.comfy_adapter")


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def model_folder_choices(kind: str) -> list[str]:
    """Folders of ``kind`` under its ComfyUI model folder(s), relative names; ["none"] when there is none."""
    sub, model_type = FOLDER_KINDS[kind][:2]
    found = set()
    for root in map(Path, _adapter().model_folders(sub)):
        if not root.is_dir():
            continue
        frontier = [root]
        for _ in range(2):
            nxt = []
            for folder in frontier:
                for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    if _model_type(child) == model_type:
                        found.add(child.relative_to(root).as_posix())
                    else:
                        nxt.append(child)
            frontier = nxt
    return sorted(found) or [NO_FOLDER]


def resolve_model_folder(kind: str, name: str) -> Path:
    """The folder behind a loader entry (or an absolute path), checked to be the right kind of model:
    a CheckpointError with what to do otherwise (headers only, nothing is loaded)."""
    sub, model_type, what, loader, download = FOLDER_KINDS[kind]
    error = lib("comfy_kiwi.errors").CheckpointError
    name = (name or "").strip()
    roots = [Path(r) for r in _adapter().model_folders(sub)]
    where = ", ".join(map(str, roots)) or f"models/{sub}"
    if not name or name == NO_FOLDER:
        raise error(f"no model selected: the {loader} needs {what} in models/{sub}/ (e.g. `{download}`); "
                    "press R in ComfyUI to refresh the list, then pick it.")
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = next((r / name for r in roots if (r / name).exists()), None)
        if path is None:
            raise error(f"'{name}' was not found in {where}; it may have been moved or deleted. Press R in "
                        "ComfyUI to refresh the lists and pick the model again.")
    if not path.is_dir():
        raise error(f"'{name}' is not a folder: the {loader} needs {what} (the whole Hugging Face repository "
                    f"folder, with config.json), in models/{sub}/.")
    found = _model_type(path)
    if found != model_type:
        other = {v[1]: v[3] for v in FOLDER_KINDS.values()}.get(found)
        if other:
            hint = f"it is a {dict(qwen2_5_vl='Qwen2.5-VL', clip='CLIP', sam='SAM')[found]} model: load it with {other}"
        elif (path / "mllm_encoder").is_dir() or (path / "transformer").is_dir():
            hint = "it is a Kiwi-Edit release / MLLM encoder, not a stock model; the judge needs the original model"
        elif found:
            hint = f"its config.json says model_type '{found}'"
        else:
            hint = "it has no readable config.json"
        raise error(f"'{name}' is not {what}: {hint}. Download it with `{download}`.")
    if not any(path.glob("*.safetensors")):
        raise error(f"'{name}' holds no .safetensors weights (only safetensors are loaded); the download may be "
                    "incomplete.")
    if kind == "clip" and not (path / "preprocessor_config.json").is_file():
        raise error(f"'{name}' has no preprocessor_config.json (image size, crop, mean and std); download the "
                    "whole repository folder.")
    return path


def validate_model_folder(kind: str, name: str) -> str | bool:
    """VALIDATE_INPUTS body: True, or the message ComfyUI shows."""
    try:
        resolve_model_folder(kind, name)
    except lib("comfy_kiwi.errors").KiwiError as e:
        return str(e)
    return True


def folder_fingerprint(kind: str, name: str) -> str:
    """IS_CHANGED body: changes when the folder's files change, so ComfyUI reloads the model."""
    try:
        path = resolve_model_folder(kind, name)
    except lib("comfy_kiwi.errors").KiwiError:
        return "missing"
    return str(hash(lib("comfy_kiwi.model_cache").files_stamp(path)))
