"""Finding models in ComfyUI's model folders, and telling a user clearly when a file is the wrong kind.

Where things go (see docs/COMFYUI.md):

- ``models/kiwi/<release>/``: a whole Kiwi-Edit release folder (transformer/, vae/, mllm_encoder/, ...);
- ``models/diffusion_models/``: Wan DiT files and Kiwi training checkpoints;
- ``models/vae/``: Wan VAE files;
- ``models/text_encoders/<folder>/``: Qwen2.5-VL folders (or a release's MLLM: mllm_encoder/ + processor/);
- ``models/loras/``: DiT LoRA files and the VIVA / RVEDiT / ImVideoEdit weights;
- umT5 folders (ImVideoEdit) in ``models/text_encoders/``; the judge's stock Qwen2.5-VL, CLIP and SAM folders
  in ``models/text_encoders/``, ``models/clip_vision/``, ``models/sams/``.

Each part loader also offers the matching part of every release in ``models/kiwi`` (entries
starting with ``RELEASE_PREFIX``), so one downloaded release serves the separate-part workflows too.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from . import adapter as comfy_adapter

RELEASE_PREFIX = "kiwi release: "
KIND_NAMES = {
    "dit": "a Wan DiT (diffusion model)",
    "vae": "a Wan VAE",
    "mllm": "a Qwen2.5-VL / Kiwi MLLM encoder",
    "lora": "a LoRA",
    "kiwi-release": "a whole Kiwi-Edit release folder",
    "kiwi-embedder": "a Kiwi-Edit source/reference embedder",
    "processor": "a Qwen processor folder",
    "viva": "VIVA weights",
    "rvedit": "RVEDiT weights",
    "imvideoedit": "ImVideoEdit weights",
}
LOADER_FOR = {"dit": "Kiwi DiT Loader", "vae": "Kiwi VAE Loader", "mllm": "Kiwi MLLM Loader",
              "lora": "Kiwi LoRA Loader", "kiwi-release": "Kiwi Release Loader"}
FOLDER_FOR = {"dit": "diffusion_models", "vae": "vae", "mllm": "text_encoders", "lora": "loras",
              "kiwi-release": "kiwi", "viva": "loras", "rvedit": "loras", "imvideoedit": "loras"}
# the kinds of file kept in models/loras/, each listed only by the loader that reads it (see weights_kind)
WEIGHTS_KINDS = ("lora", "viva", "rvedit", "imvideoedit")
_MAX_DEPTH = 2          # release / MLLM folders may sit one level down (e.g. kiwi/<org>/<name>)


# --------------------------------------------------------------------------------------------------
# recognising folders (cheap: names and config.json only)
# --------------------------------------------------------------------------------------------------

def is_release_folder(path: Path) -> bool:
    return path.is_dir() and (path / "transformer").is_dir() and (path / "mllm_encoder").is_dir()


def _model_type(config: Path) -> str | None:
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_mllm_folder(path: Path) -> bool:
    """A Qwen2.5-VL folder, or a folder holding a release's mllm_encoder/ and processor/."""
    if (path / "mllm_encoder").is_dir() and (path / "processor").is_dir():
        return True
    return (path / "config.json").is_file() and _model_type(path / "config.json") == "qwen2_5_vl"


def _find_folders(roots, accept) -> list[str]:
    found = set()
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        frontier = [root]
        for _ in range(_MAX_DEPTH):
            nxt = []
            for folder in frontier:
                for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    if accept(sub):
                        found.add(sub.relative_to(root).as_posix())
                    else:
                        nxt.append(sub)
            frontier = nxt
    return sorted(found)


def release_names() -> list[str]:
    """Release folders under every ``kiwi`` model folder (relative names)."""
    return _find_folders(comfy_adapter.model_folders("kiwi"), is_release_folder)


def choices(kind: str) -> list[str]:
    """The entries a loader of ``kind`` offers: its own folder's models, then the release parts."""
    releases = release_names()
    if kind == "kiwi-release":
        return releases
    if kind == "mllm":
        own = _find_folders(comfy_adapter.model_folders("text_encoders"), is_mllm_folder)
    else:
        own = comfy_adapter.model_files(FOLDER_FOR[kind])
    if kind in WEIGHTS_KINDS:
        return [name for name in own if weights_kind(name) == kind]
    return own + [RELEASE_PREFIX + r for r in releases]


# {path: ((mtime_ns, size), kind)}: a file's kind is read from its header once per version of the file
_KIND_CACHE: dict[str, tuple[tuple[int, int], str | None]] = {}


def _classify_keys(keys: list[str], metadata: dict) -> str | None:
    if not keys:
        return None
    if metadata.get("method") == "imvideoedit" or all(k.startswith("imvideoedit.") for k in keys):
        return "imvideoedit"
    if all(k.startswith("rvedit.") for k in keys):
        return "rvedit"
    if "viva_in_dim" in metadata or all(k.startswith(("refiner.", "source_mixer.")) for k in keys):
        return "viva"
    if sum(".lora_" in k or k.endswith(".alpha") for k in keys) * 2 > len(keys):
        return "lora"
    return None


def weights_kind(name: str) -> str | None:
    """Which loader reads the file ``name`` of models/loras/ ("lora" = a DiT LoRA, "viva", "rvedit",
    "imvideoedit"), or None for a file none of them reads. Safetensors headers only (no tensor is read);
    remembered until the file changes."""
    from ..loading.files import open_state_dict
    for root in comfy_adapter.model_folders("loras"):
        path = Path(root) / name
        try:
            st = path.stat()
        except OSError:
            continue
        stamp, key = (st.st_mtime_ns, st.st_size), str(path)
        cached = _KIND_CACHE.get(key)
        if cached is None or cached[0] != stamp:
            try:
                state = open_state_dict(path)
                cached = (stamp, _classify_keys(list(state), state.metadata))
            except CheckpointError:
                cached = (stamp, None)
            _KIND_CACHE[key] = cached
        return cached[1]
    return None


def resolve(kind: str, name: str) -> Path:
    """The path behind a loader entry; a clear error when it is not there (any more)."""
    name = (name or "").strip()
    if not name or name == "none":
        raise CheckpointError(f"no {KIND_NAMES[kind].split(' (')[0]} selected: put one in "
                              f"models/{FOLDER_FOR[kind]}/, press R in ComfyUI to refresh, and pick it.")
    if name.startswith(RELEASE_PREFIX):
        kind, name = "kiwi-release", name[len(RELEASE_PREFIX):]
    if Path(name).is_absolute() or ".." in Path(name).parts:     # a crafted workflow must not read elsewhere
        raise CheckpointError(f"'{name}' points outside the model folders; pick an entry of the list (a name "
                              f"inside models/{FOLDER_FOR[kind]}/).")
    for root in comfy_adapter.model_folders(FOLDER_FOR[kind]):
        path = Path(root) / name
        if path.exists():
            return path
    where = ", ".join(str(p) for p in comfy_adapter.model_folders(FOLDER_FOR[kind])) or f"models/{FOLDER_FOR[kind]}"
    raise CheckpointError(f"'{name}' was not found in {where}; it may have been moved or deleted. "
                          "Press R in ComfyUI to refresh the lists and pick the model again.")


# --------------------------------------------------------------------------------------------------
# what kind of model is this?
# --------------------------------------------------------------------------------------------------

def _is_lora_file(path: Path) -> bool:
    if not path.is_file():
        return False
    from ..loading.files import open_state_dict
    try:
        state = open_state_dict(path)
    except CheckpointError:
        return False
    return _classify_keys(list(state), state.metadata) == "lora"


def identify(path) -> str | None:
    """The kind of model at ``path`` (a key of KIND_NAMES), or None when it is none we know.
    Reads folder layouts and file headers only."""
    path = Path(path)
    if is_release_folder(path):
        return "kiwi-release"
    if path.is_dir() and path.name == "processor" and not (path / "config.json").exists():
        return "processor"
    if _is_lora_file(path):
        return "lora"
    from ..loading.dit_loader import describe_dit
    from ..loading.vae_loader import describe_vae
    from ..mllm.loader import describe_mllm
    for describe in (describe_dit, describe_vae, describe_mllm):
        try:
            info = describe(path)
        except CheckpointError:
            info = None
        if info is not None:
            kind = info.get("kind", "")
            if kind.startswith(("kiwi-release-mllm", "kiwi-training-checkpoint", "qwen")):
                return "mllm"
            return kind if kind in KIND_NAMES else None
    return None


def check_kind(path, wanted: str, shown_name: str | None = None) -> None:
    """Raise a CheckpointError a ComfyUI user understands when ``path`` is not a ``wanted`` model."""
    path = Path(path)
    shown = shown_name or path.name
    found = identify(path)
    if found == wanted:
        return
    if found == "kiwi-release":
        _check_release_part(path, wanted, shown)
        return
    if found is None:
        raise CheckpointError(f"'{shown}' is not a model this node can read: expected {KIND_NAMES[wanted]} "
                              f"in models/{FOLDER_FOR[wanted]}/. The file may be incomplete, or a kind of model "
                              "comfy-kiwi does not support.")
    hint = f"; load it with {LOADER_FOR[found]}" if found in LOADER_FOR else ""
    raise CheckpointError(f"'{shown}' is {KIND_NAMES[found]}, not {KIND_NAMES[wanted]}{hint}.")


_RELEASE_PARTS = {"dit": ("transformer",), "vae": ("vae",), "mllm": ("mllm_encoder", "processor"),
                  "kiwi-release": ("transformer", "vae", "mllm_encoder", "processor")}


def _check_release_part(root: Path, wanted: str, shown: str) -> None:
    if wanted not in _RELEASE_PARTS:
        raise CheckpointError(f"'{shown}' is {KIND_NAMES['kiwi-release']}, not {KIND_NAMES[wanted]}.")
    missing = [p for p in _RELEASE_PARTS[wanted] if not (root / p).is_dir()]
    if missing:
        raise CheckpointError(f"release folder '{shown}' is incomplete: missing {', '.join(p + '/' for p in missing)}"
                              " (download the whole Hugging Face repository into models/kiwi/).")


def check_release(path, shown_name: str | None = None) -> None:
    """A release folder with every part the release loader needs."""
    path = Path(path)
    shown = shown_name or path.name
    if not is_release_folder(path):
        found = identify(path) if path.exists() else None
        what = f" (it is {KIND_NAMES[found]})" if found else ""
        raise CheckpointError(f"'{shown}' is not a Kiwi-Edit release folder{what}: expected a folder in models/kiwi/ "
                              "holding transformer/, vae/, mllm_encoder/, processor/ and source_embedder/.")
    _check_release_part(path, "kiwi-release", shown)


# --------------------------------------------------------------------------------------------------
# umT5 folders (ImVideoEdit's caption encoder) in models/text_encoders/
# --------------------------------------------------------------------------------------------------

UMT5_MODEL_TYPES = ("umt5", "t5")


def is_umt5_folder(path: Path) -> bool:
    """A transformers umT5 folder (config.json model_type umt5/t5), or a diffusers root with text_encoder/."""
    return any(config.is_file() and _model_type(config) in UMT5_MODEL_TYPES
               for config in (path / "config.json", path / "text_encoder" / "config.json"))


def umt5_choices() -> list[str]:
    """umT5 folders under every text_encoders model folder (relative names)."""
    return _find_folders(comfy_adapter.model_folders("text_encoders"), is_umt5_folder)


def resolve_umt5(name: str) -> Path:
    """The umT5 folder behind a loader entry; a clear error when it is missing or not a umT5 folder."""
    folders = comfy_adapter.model_folders("text_encoders")
    for root in folders:
        path = Path(root) / (name or "").strip()
        if name and name.strip() and path.is_dir():
            if not is_umt5_folder(path):
                raise CheckpointError(f"'{name}' is not a umT5 folder: expected config.json with model_type "
                                      "umt5 (or a diffusers Wan2.1 folder with text_encoder/ and tokenizer/).")
            return path
    raise CheckpointError(f"umT5 folder '{name}' was not found in {', '.join(map(str, folders))}; put the "
                          "Wan2.1 umT5 encoder folder there, press R in ComfyUI to refresh, and pick it.")


# --------------------------------------------------------------------------------------------------
# stock transformers folders of the judge / reward / SAM loaders
# --------------------------------------------------------------------------------------------------
# The VLM judge: a stock Qwen2.5-VL folder in models/text_encoders/ (where the MLLM loader looks too).
# CLIP / PickScore: a transformers CLIPModel folder in models/clip_vision/. SAM: models/sams/.
# A folder may sit one level down (e.g. text_encoders/Qwen/Qwen2.5-VL-7B-Instruct). An absolute path is
# accepted as the value too (API prompts, scripts).

# kind: (model folder, config.json model_type, what it is, loader node, download command)
STOCK_FOLDERS = {
    "vlm": ("text_encoders", "qwen2_5_vl", "a Qwen2.5-VL model folder", "Kiwi VLM Loader",
            "hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir models/text_encoders/Qwen2.5-VL-7B-Instruct"),
    "clip": ("clip_vision", "clip", "a CLIP model folder (transformers CLIPModel, e.g. clip-vit-large-patch14 "
             "or PickScore_v1)", "Kiwi CLIP / PickScore Loader",
             "hf download openai/clip-vit-large-patch14 --local-dir models/clip_vision/clip-vit-large-patch14"),
    "sam": ("sams", "sam", "a Segment Anything folder (transformers SamModel, e.g. sam-vit-base)", "Kiwi SAM Loader",
            "hf download facebook/sam-vit-base --local-dir models/sams/sam-vit-base"),
}
NO_FOLDER = "none"


def stock_folder_choices(kind: str) -> list[str]:
    """Folders of ``kind`` under its ComfyUI model folder(s), relative names; ["none"] when there is none."""
    sub, model_type = STOCK_FOLDERS[kind][:2]
    found = _find_folders(comfy_adapter.model_folders(sub), lambda p: _model_type(p / "config.json") == model_type)
    return found or [NO_FOLDER]


def resolve_stock_folder(kind: str, name: str) -> Path:
    """The folder behind a loader entry (or an absolute path), checked to be the right kind of model:
    a CheckpointError with what to do otherwise (headers only, nothing is loaded)."""
    sub, model_type, what, loader, download = STOCK_FOLDERS[kind]
    name = (name or "").strip()
    roots = [Path(r) for r in comfy_adapter.model_folders(sub)]
    where = ", ".join(map(str, roots)) or f"models/{sub}"
    if not name or name == NO_FOLDER:
        raise CheckpointError(f"no model selected: the {loader} needs {what} in models/{sub}/ (e.g. `{download}`); "
                              "press R in ComfyUI to refresh the list, then pick it.")
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = next((r / name for r in roots if (r / name).exists()), None)
        if path is None:
            raise CheckpointError(f"'{name}' was not found in {where}; it may have been moved or deleted. Press R "
                                  "in ComfyUI to refresh the lists and pick the model again.")
    if not path.is_dir():
        raise CheckpointError(f"'{name}' is not a folder: the {loader} needs {what} (the whole Hugging Face "
                              f"repository folder, with config.json), in models/{sub}/.")
    found = _model_type(path / "config.json")
    if found != model_type:
        other = {v[1]: v[3] for v in STOCK_FOLDERS.values()}.get(found)
        if other:
            hint = f"it is a {dict(qwen2_5_vl='Qwen2.5-VL', clip='CLIP', sam='SAM')[found]} model: load it with {other}"
        elif (path / "mllm_encoder").is_dir() or (path / "transformer").is_dir():
            hint = "it is a Kiwi-Edit release / MLLM encoder, not a stock model; the judge needs the original model"
        elif found:
            hint = f"its config.json says model_type '{found}'"
        else:
            hint = "it has no readable config.json"
        raise CheckpointError(f"'{name}' is not {what}: {hint}. Download it with `{download}`.")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"'{name}' holds no .safetensors weights (only safetensors are loaded); the download "
                              "may be incomplete.")
    if kind == "clip" and not (path / "preprocessor_config.json").is_file():
        raise CheckpointError(f"'{name}' has no preprocessor_config.json (image size, crop, mean and std); download "
                              "the whole repository folder.")
    return path
