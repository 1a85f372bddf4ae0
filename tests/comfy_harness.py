"""A small stand-in for ComfyUI's loader and executor, for the layer-3 node and workflow tests.

- :func:`load_pack` imports the repository's root ``__init__.py`` the way ComfyUI imports a custom
  node folder (``spec_from_file_location`` under a path-like module name).
- :func:`definitions` turns node classes into ``/object_info``-style definitions; :func:`ui_to_prompt`
  converts a UI-format workflow into an API prompt using such definitions — the same function
  converts workflows for a real ComfyUI server from its ``/object_info`` (tests/test_real_comfyui.py).
- :func:`validate_prompt` and :func:`execute_prompt` follow ComfyUI's semantics for classic nodes:
  linked types must match, constants must be in range / in the combo list unless the node's
  VALIDATE_INPUTS takes that input, then nodes run in dependency order with keyword arguments.
- ``NATIVE_DOUBLES``: test doubles of the native ComfyUI nodes the workflows use (LoadVideo,
  GetVideoComponents, CreateVideo, SaveVideo, LoadImage, SaveImage, PreviewImage, PreviewAny), with the same
  inputs, widget order and outputs, doing file IO through comfy_kiwi.video_io. Only this layer uses them.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}   # frontend-only, never sent to the server
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "upload")


# --------------------------------------------------------------------------------------------------
# loading the pack
# --------------------------------------------------------------------------------------------------

def load_pack(root: Path):
    """Import ``root/__init__.py`` as ComfyUI's ``load_custom_node`` does (module name = the path)."""
    name = str(root).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, Path(root) / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _listify(spec):
    return [list(spec[0]) if isinstance(spec[0], (list, tuple)) else spec[0], dict(spec[1]) if len(spec) > 1 else {}]


def definitions(classes: dict) -> dict:
    """``/object_info``-style definitions of classic node classes."""
    out = {}
    for name, cls in classes.items():
        types = cls.INPUT_TYPES()
        out[name] = {
            "input": {sec: {k: _listify(v) for k, v in types.get(sec, {}).items()} for sec in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
            "category": getattr(cls, "CATEGORY", ""),
        }
    return out


# --------------------------------------------------------------------------------------------------
# UI workflow → API prompt
# --------------------------------------------------------------------------------------------------

def is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if opts.get("forceInput") or opts.get("rawLink"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == DYNAMIC_COMBO


def has_control_widget(name: str, spec) -> bool:
    """The frontend adds "control after generate" to widgets asking for it and to every INT named seed /
    noise_seed; a saved workflow holds its value after theirs."""
    opts = spec[1] if len(spec) > 1 else {}
    return bool(opts.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def _take_widgets(inputs: dict, values: list, out: dict, prefix: str = "") -> None:
    """Assign widget values in declaration order, as the frontend saved them."""
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            if not is_widget(spec):
                continue
            opts = spec[1] if len(spec) > 1 else {}
            if opts.get("hidden"):
                continue                       # hidden widgets are not shown, nor saved
            if not values:
                return                         # older saves lack trailing optional widgets: defaults apply
            value = values.pop(0)
            out[prefix + name] = value
            if has_control_widget(name, spec) and values:
                values.pop(0)                  # "fixed" / "randomize" ...: frontend-only
            if any(opts.get(flag) for flag in UPLOAD_FLAGS) and values:
                values.pop(0)                  # the upload button's value
            if spec[0] == DYNAMIC_COMBO:
                option = next((o for o in opts.get("options", []) if o.get("key") == value), None)
                if option is not None:
                    _take_widgets(option.get("inputs", {}), values, out, prefix + name + ".")


def ui_to_prompt(workflow: dict, defs: dict) -> dict:
    """API prompt ``{id: {"class_type", "inputs"}}`` of a UI-format (version 0.4) workflow."""
    links = {link[0]: link for link in workflow["links"]}
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            if node.get("mode", 0) == 4:
                raise NotImplementedError("bypassed nodes are not supported by this converter")
            continue
        if node["type"] not in defs:
            raise KeyError(f"node {node['id']}: unknown node type {node['type']!r}")
        inputs: dict = {}
        _take_widgets(defs[node["type"]]["input"], list(node.get("widgets_values") or []), inputs)
        for entry in node.get("inputs", []):
            if entry.get("link") is None:
                continue
            _, origin, slot, _, _, _ = links[entry["link"]]
            if nodes[origin]["type"] in VIRTUAL_NODES:
                raise NotImplementedError("links from frontend-only nodes are not supported")
            inputs[entry["name"]] = [str(origin), int(slot)]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# --------------------------------------------------------------------------------------------------
# validation and execution (classic nodes)
# --------------------------------------------------------------------------------------------------

class WorkflowError(Exception):
    """Validation or execution failed; ``str()`` is what ComfyUI would show the user."""


def _types_match(received: str, expected) -> bool:
    if isinstance(expected, list):
        expected = "COMBO"
    return received == expected or "*" in (received, expected) or \
        set(str(received).split(",")) & set(str(expected).split(","))


def validate_prompt(prompt: dict, classes: dict) -> list[str]:
    """ComfyUI-like checks; returns the error messages (empty when the prompt may run)."""
    errors = []
    for nid, node in prompt.items():
        cls = classes[node["class_type"]]
        types = cls.INPUT_TYPES()
        custom = getattr(cls, "VALIDATE_INPUTS", None)
        custom_args = set(inspect.signature(custom).parameters) if custom else set()
        constants = {}
        for section in ("required", "optional"):
            for name, spec in types.get(section, {}).items():
                kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
                if name not in node["inputs"]:
                    if section == "required":
                        errors.append(f"{node['class_type']} #{nid}: required input '{name}' is missing")
                    continue
                value = node["inputs"][name]
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    src = classes[prompt[value[0]]["class_type"]].RETURN_TYPES[value[1]]
                    if not _types_match(src, kind):
                        errors.append(f"{node['class_type']} #{nid}: input '{name}' receives {src}, expects {kind}")
                    continue
                constants[name] = value
                if name in custom_args:
                    continue
                if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
                    errors.append(f"{node['class_type']} #{nid}: {name}={value} outside [{opts.get('min')}, "
                                  f"{opts.get('max')}]")
                if isinstance(kind, list) and value not in kind:
                    errors.append(f"{node['class_type']} #{nid}: {name}={value!r} not in the list {kind[:8]}")
        if custom:
            result = custom(**{k: v for k, v in constants.items() if k in custom_args})
            if result is not True:
                errors.append(f"{node['class_type']} #{nid}: {result}")
    return errors


def _order(prompt: dict) -> list[str]:
    done, order = set(), []

    def visit(nid: str, stack=()):
        if nid in done:
            return
        if nid in stack:
            raise WorkflowError(f"dependency cycle through node {nid}")
        for value in prompt[nid]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                visit(value[0], (*stack, nid))
        done.add(nid)
        order.append(nid)

    for nid in prompt:
        visit(nid)
    return order


def execute_prompt(prompt: dict, classes: dict) -> dict:
    """Validate, then run every node in dependency order; returns ``{node id: outputs tuple}``."""
    errors = validate_prompt(prompt, classes)
    if errors:
        raise WorkflowError("Prompt outputs failed validation:\n" + "\n".join(errors))
    results: dict = {}
    for nid in _order(prompt):
        node = prompt[nid]
        cls = classes[node["class_type"]]
        kwargs = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                value = results[value[0]][value[1]]
            kwargs[name] = value
        try:
            results[nid] = getattr(cls(), cls.FUNCTION)(**kwargs)
        except Exception as e:
            raise WorkflowError(f"{node['class_type']} #{nid}: {type(e).__name__}: {e}") from e
    return results


# --------------------------------------------------------------------------------------------------
# test doubles of ComfyUI's native nodes
# --------------------------------------------------------------------------------------------------

@dataclass
class Dirs:
    input: Path = Path(".")
    output: Path = Path(".")


DIRS = Dirs()


@dataclass
class VideoDouble:
    images: torch.Tensor       # [F, H, W, 3]
    fps: float
    audio: object = None


class LoadVideo:
    CATEGORY, FUNCTION, RETURN_TYPES = "video", "load", ("VIDEO",)

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(p.name for p in DIRS.input.iterdir() if p.suffix in (".mp4", ".webm", ".mov", ".mkv"))
        return {"required": {"file": (files, {"video_upload": True})}}

    def load(self, file):
        from comfy_kiwi.video_io import read_video
        frames, fps = read_video(DIRS.input / file)
        return (VideoDouble(frames, float(fps)),)


class GetVideoComponents:
    CATEGORY, FUNCTION = "video", "split"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "INT", "COMBO")
    RETURN_NAMES = ("images", "audio", "fps", "bit_depth", "color_space")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",)}}

    def split(self, video):
        return (video.images, video.audio, video.fps, 8, "auto")


class CreateVideo:
    CATEGORY, FUNCTION, RETURN_TYPES = "video", "create", ("VIDEO",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0})},
                "optional": {"audio": ("AUDIO",), "bit_depth": ("INT", {"default": 8, "min": 8, "max": 10})}}

    def create(self, images, fps, audio=None, bit_depth=8):
        assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == torch.float32
        return (VideoDouble(images, float(Fraction(fps)), audio),)


class SaveVideo:
    CATEGORY, FUNCTION, RETURN_TYPES, OUTPUT_NODE = "video", "save", ("VIDEO",), True
    saved: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                             "format": (["auto", "mp4", "mkv", "webm"],), "codec": (["auto", "h264", "av1"],)}}

    def save(self, video, filename_prefix, format, codec):
        from comfy_kiwi.video_io import write_video
        path = DIRS.output / f"{filename_prefix}_{len(SaveVideo.saved):05}_.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video.images, video.fps)
        SaveVideo.saved.append(path)
        return (video,)


class LoadImage:
    CATEGORY, FUNCTION, RETURN_TYPES = "image", "load", ("IMAGE", "MASK")

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(p.name for p in DIRS.input.iterdir() if p.suffix in (".png", ".jpg", ".webp"))
        return {"required": {"image": (files, {"image_upload": True})}}

    def load(self, image):
        from comfy_kiwi.frames import load_image
        img = load_image(DIRS.input / image)
        return (img, torch.zeros(1, img.shape[1], img.shape[2]))


class SaveImage:
    CATEGORY, FUNCTION, RETURN_TYPES, OUTPUT_NODE = "image", "save", ("IMAGE",), True
    RETURN_NAMES = ("images",)
    saved: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def save(self, images, filename_prefix="ComfyUI"):
        from comfy_kiwi.frames import to_pil
        for img in images:
            path = DIRS.output / f"{filename_prefix}_{len(SaveImage.saved):05}_.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            to_pil(img).save(path)
            SaveImage.saved.append(path)
        return (images,)


class PreviewImage(SaveImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}


class PreviewAny:
    """Shows any value as text (ComfyUI's "Preview as Text"); the double records what it was given."""
    CATEGORY, FUNCTION, RETURN_TYPES, OUTPUT_NODE = "utilities", "main", ("STRING",), True
    shown: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    def main(self, source=None):
        PreviewAny.shown.append(source)
        return (source if isinstance(source, str) else str(source),)


NATIVE_DOUBLES = {c.__name__: c for c in (LoadVideo, GetVideoComponents, CreateVideo, SaveVideo, LoadImage,
                                          SaveImage, PreviewImage, PreviewAny)}


# --------------------------------------------------------------------------------------------------
# environment: tiny models + input files
# --------------------------------------------------------------------------------------------------

def write_inputs(input_dir: Path) -> None:
    """The input files the shipped workflows name: a short video, a source image, a reference image."""
    from comfy_kiwi.frames import to_pil
    from comfy_kiwi.testing.tiny_release import tiny_video_frames
    from comfy_kiwi.video_io import write_video
    input_dir.mkdir(parents=True, exist_ok=True)
    write_video(input_dir / "kiwi_source.mp4", tiny_video_frames(6, 72, 88), 8)   # 6 frames: trimmed to 5
    to_pil(tiny_video_frames(1, 80, 96, seed=1)[0]).save(input_dir / "kiwi_source.png")
    to_pil(tiny_video_frames(1, 40, 56, seed=2)[0]).save(input_dir / "kiwi_reference.png")
    to_pil(tiny_video_frames(1, 96, 128, seed=3)[0]).save(input_dir / "kiwi_object_photo.png")


# the folder names the judging workflows pick (the Hugging Face repository names)
JUDGE_VLM = "Qwen2.5-VL-7B-Instruct"
JUDGE_CLIPS = ("clip-vit-large-patch14", "PickScore_v1")


def write_judge_models(models_dir: Path) -> dict[str, Path]:
    """Tiny stand-ins for the judge models, where the loaders look and under the workflows' names:
    a tiny Qwen2.5-VL base folder in ``text_encoders/`` and two tiny CLIP folders in ``clip_vision/``
    (the "PickScore" one with another seed and logit scale ln 100). The tiny VLM answers gibberish:
    the workflows' on_failure settings let them complete anyway."""
    import math

    from comfy_kiwi.testing.tiny_clip import write_tiny_clip
    from comfy_kiwi.testing.tiny_qwen import write_tiny_base
    models_dir = Path(models_dir)
    out = {"vlm": models_dir / "text_encoders" / JUDGE_VLM}
    if not (out["vlm"] / "model.safetensors").exists():
        write_tiny_base(out["vlm"])
    for i, name in enumerate(JUDGE_CLIPS):
        out[name] = models_dir / "clip_vision" / name
        if not (out[name] / "model.safetensors").exists():
            write_tiny_clip(out[name], seed=i, logit_scale=math.log(100.0) if i else None)
    return out


def write_method_models(models) -> None:
    """Tiny stand-ins under the names the VIVA / RVEDiT / ImVideoEdit workflows use: the Wan2.2 TI2V DiT (the tiny
    DiT file), a stock Qwen2.5-VL-3B folder, a umT5 folder, a Wan2.1 T2V DiT and VAE, and method weights shaped for
    those (as the trainer saves them)."""
    import shutil

    from comfy_kiwi.methods import viva
    from comfy_kiwi.methods.rvedit_streams import RVEDiTStreams
    from comfy_kiwi.testing.tiny_qwen import TINY_HIDDEN, write_tiny_base
    from comfy_kiwi.testing.tiny_release import tiny_kiwi_dit
    root = Path(models.models_dir)
    if not (root / "loras" / "viva.safetensors").exists():
        shutil.copy(models.parts["dit"], root / "diffusion_models" / "wan2.2_ti2v_5B_fp16.safetensors")
        write_tiny_base(root / "text_encoders" / "Qwen2.5-VL-3B-Instruct", seed=1)
        dit = tiny_kiwi_dit(seed=1)
        viva.save_viva(root / "loras" / "viva.safetensors", dit, viva.attach_viva(dit, TINY_HIDDEN))
        RVEDiTStreams.for_dit(tiny_kiwi_dit(seed=1)).save(root / "loras" / "rvedit.safetensors")
    tuned = root / "diffusion_models" / "rvedit-dit.safetensors"      # the RVEDiT run's DiT, as the trainer saves it
    if not tuned.exists():
        from trainer.methods.dit_state import save_dit
        save_dit(tuned, tiny_kiwi_dit(seed=1))
    umt5 = root / "text_encoders" / "Wan2.1-T2V-1.3B-Diffusers"      # the RVEDiT workflow's X_ℓ encoder
    if not umt5.exists():
        from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
        write_tiny_umt5(umt5, d_model=32)
    wan21 = root / "diffusion_models" / "wan2.1_t2v_1.3B_fp16.safetensors"     # the ImVideoEdit workflow's DiT
    if not wan21.exists():
        write_imvideoedit_models(root, wan21)


def write_imvideoedit_models(root: Path, dit_path: Path) -> None:
    """A tiny Wan2.1 T2V DiT (umT5-wide text path, as the tiny umT5 folder), the Wan2.1 VAE, and ImVideoEdit weights
    for that DiT."""
    from comfy_kiwi.testing import tiny_dit, tiny_vae
    dit = tiny_dit.tiny_dit("2.1", seed=3)
    tiny_vae.write_original_file(tiny_vae.tiny_vae("2.1", seed=4), root / "vae" / "wan_2.1_vae.safetensors")
    randomised_imvideoedit_weights(dit, root / "loras" / "imvideoedit.safetensors")
    tiny_dit.write_original_file(dit, dit_path)            # last: its presence marks the set as written


def randomised_imvideoedit_weights(dit, path: Path, seed: int = 1) -> Path:
    """ImVideoEdit weights for ``dit`` as after some training (as the trainer saves them): every tensor moved, the
    zero-initialised linears included, so the modules change the edit. The DiT is left unhooked."""
    from comfy_kiwi.methods import imvideoedit
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adapter = imvideoedit.attach(dit)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    adapter.save(path)
    adapter.detach()
    return path


def setup_environment(base: Path):
    """Tiny models (``comfy_kiwi.testing.tiny_release``) as the models folder, plus input/output folders.
    Returns the TinyKiwiModels description."""
    from comfy_kiwi.comfyui import adapter as comfy_adapter
    from comfy_kiwi.testing.tiny_release import tiny_models_dir
    models = tiny_models_dir()
    write_judge_models(models.models_dir)
    write_method_models(models)
    comfy_adapter.set_models_dir(models.models_dir)
    DIRS.input, DIRS.output = base / "input", base / "output"
    write_inputs(DIRS.input)
    DIRS.output.mkdir(parents=True, exist_ok=True)
    return models
