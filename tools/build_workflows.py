"""Write the ComfyUI workflows in workflows/ (UI format, version 0.4) from one description each.

    python tools/build_workflows.py          # rewrites workflows/*.json

Node ids, slots and link ids are assigned here, so every file stays consistent with the node
definitions: widget values are given by input name and written in the order the node declares its
widgets (with the extra "control_after_generate" value after seeds, and the upload-button value
after LoadImage / LoadVideo file pickers, as ComfyUI's frontend saves them).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

HF = "https://huggingface.co"
RELEASES = {
    "instruct-only": "kiwi-edit-5b-instruct-only-diffusers",
    "reference-only": "kiwi-edit-5b-reference-only-diffusers",
    "instruct-reference": "kiwi-edit-5b-instruct-reference-diffusers",
}
# weight files of a release (config/tokenizer files come with the folder: see docs/COMFYUI.md)
RELEASE_FILES = ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "mllm_encoder/diffusion_pytorch_model.safetensors", "mllm_encoder/model-00001-of-00002.safetensors",
                 "mllm_encoder/model-00002-of-00002.safetensors", "source_embedder/diffusion_pytorch_model.safetensors"]
REF_FILES = ["ref_embedder/diffusion_pytorch_model.safetensors"]
WAN22_VAE = {"name": "wan2.2_vae.safetensors", "directory": "vae",
             "url": f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/vae/wan2.2_vae.safetensors"}


def release_models(kind: str, parts=None) -> list[dict]:
    """Download hints of a release's weight files (all, or those under the given part folders)."""
    repo = RELEASES[kind]
    files = RELEASE_FILES + (REF_FILES if kind != "instruct-only" else [])
    if parts:
        files = [f for f in files if f.split("/")[0] in parts]
    return [{"name": f"{repo}/{f}", "url": f"{HF}/linyq/{repo}/resolve/main/{f}", "directory": "kiwi"} for f in files]


# Native ComfyUI nodes the workflows use: sockets and widgets in ComfyUI's order (checked against a real
# ComfyUI by tests/test_real_comfyui.py). (name, type, optional) for inputs; widgets as names.
NATIVE = {
    "LoadVideo": {"inputs": [], "widgets": ["file", "+upload"], "outputs": [("VIDEO", "VIDEO")]},
    "GetVideoComponents": {"inputs": [("video", "VIDEO", False)], "widgets": [],
                           "outputs": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT"),
                                       ("bit_depth", "INT"), ("color_space", "COMBO")]},
    "CreateVideo": {"inputs": [("images", "IMAGE", False), ("audio", "AUDIO", True)],
                    "widgets": ["fps", "bit_depth"], "widget_types": {"fps": "FLOAT", "bit_depth": "INT"},
                    "outputs": [("VIDEO", "VIDEO")]},
    "SaveVideo": {"inputs": [("video", "VIDEO", False)], "widgets": ["filename_prefix", "format", "codec"],
                  "outputs": [("video", "VIDEO")], "output_node": True},
    "LoadImage": {"inputs": [], "widgets": ["image", "+upload"], "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "SaveImage": {"inputs": [("images", "IMAGE", False)], "widgets": ["filename_prefix"],
                  "outputs": [("images", "IMAGE")], "output_node": True},
    "PreviewImage": {"inputs": [("images", "IMAGE", False)], "widgets": [], "outputs": [], "output_node": True},
    "PreviewAny": {"inputs": [("source", "*", False)], "widgets": [], "outputs": [("STRING", "STRING")],
                   "output_node": True},
    "Note": {"inputs": [], "widgets": ["text"], "outputs": []},
}
UPLOAD_VALUE = "image"          # what the frontend stores for the upload button of LoadImage / LoadVideo


def load_pack():
    """The node pack, imported the way ComfyUI imports custom nodes (path-like module name)."""
    name = str(ROOT).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def has_control_widget(name: str, spec) -> bool:
    """The frontend adds "control after generate" to widgets asking for it and to every INT named seed /
    noise_seed (a saved workflow then holds one more value after it)."""
    opts = spec[1] if len(spec) > 1 else {}
    return bool(opts.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def kiwi_layout(cls) -> dict:
    """Sockets, widgets and outputs of one of our node classes, in declaration order."""
    types = cls.INPUT_TYPES()
    inputs, widgets, wtypes = [], [], {}
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if _is_widget(spec):
                widgets.append(name)
                wtypes[name] = "COMBO" if isinstance(spec[0], list) else spec[0]
                if has_control_widget(name, spec):
                    widgets.append("+control")
            else:
                inputs.append((name, spec[0], section == "optional"))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return {"inputs": inputs, "widgets": widgets, "widget_types": wtypes,
            "outputs": list(zip(names, cls.RETURN_TYPES)), "output_node": getattr(cls, "OUTPUT_NODE", False)}


class Graph:
    def __init__(self, pack):
        self.pack = pack
        self.nodes, self.links, self.groups = [], [], []

    def layout(self, type_: str) -> dict:
        if type_ in NATIVE:
            return NATIVE[type_]
        return kiwi_layout(self.pack.NODE_CLASS_MAPPINGS[type_])

    def add(self, type_: str, pos, widgets: dict | None = None, *, title: str | None = None, models=None,
            width: int = 320, height: int | None = None, color: str | None = None) -> dict:
        lay, widgets = self.layout(type_), dict(widgets or {})
        values = []
        for w in lay["widgets"]:
            if w == "+control":
                values.append(widgets.pop("control_after_generate", "fixed"))
            elif w == "+upload":
                values.append(UPLOAD_VALUE)
            else:
                if w not in widgets:
                    raise KeyError(f"{type_}: no value for widget {w!r}")
                values.append(widgets.pop(w))
        if widgets:
            raise KeyError(f"{type_}: unknown widgets {sorted(widgets)}")
        node = {
            "id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": [width, 0], "flags": {},
            "order": len(self.nodes), "mode": 0,
            "inputs": [dict({"name": n, "type": t, "link": None}, **({"shape": 7} if opt else {}))
                       for n, t, opt in lay["inputs"]],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(lay["outputs"])],
            "properties": {"Node name for S&R": type_},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        if color:
            node["color"], node["bgcolor"] = color, color
        if models:
            node["properties"]["models"] = models
        if type_ in ("Note",):
            node["properties"] = {"text": ""}
        n_widgets = len([w for w in lay["widgets"] if w != "+upload"])
        tall = 60 if any(isinstance(v, str) and ("\n" in v or len(v) > 40) for v in values) else 0
        node["size"][1] = height or 20 + 22 * max(len(node["inputs"]), len(node["outputs"])) + 24 * n_widgets + tall
        self.nodes.append(node)
        return node

    def link(self, src: dict, output: str, dst: dict, input_: str) -> None:
        out_slot = next(i for i, o in enumerate(src["outputs"]) if o["name"] == output)
        entry = next((i for i in dst["inputs"] if i["name"] == input_), None)
        if entry is None:  # a widget turned into a socket: the frontend lists it with a "widget" marker
            wtype = self.layout(dst["type"]).get("widget_types", {}).get(input_)
            if wtype is None:
                raise KeyError(f"{dst['type']} has no input {input_!r}")
            entry = {"name": input_, "type": wtype, "widget": {"name": input_}, "link": None}
            dst["inputs"].append(entry)
        in_slot = dst["inputs"].index(entry)
        src_type = src["outputs"][out_slot]["type"]
        if src_type != entry["type"] and entry["type"] != "*":       # "*": any type (PreviewAny)
            raise TypeError(f"{src['type']}.{output} → {dst['type']}.{input_}: type mismatch")
        link_id = len(self.links) + 1
        self.links.append([link_id, src["id"], out_slot, dst["id"], in_slot, src_type])
        entry["link"] = link_id
        src["outputs"][out_slot]["links"].append(link_id)

    def group(self, title: str, nodes: list[dict], color: str = "#3f789e") -> None:
        x0 = min(n["pos"][0] for n in nodes) - 20
        y0 = min(n["pos"][1] for n in nodes) - 60
        x1 = max(n["pos"][0] + n["size"][0] for n in nodes) + 20
        y1 = max(n["pos"][1] + n["size"][1] for n in nodes) + 20
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def to_json(self, name: str) -> dict:
        for n in self.nodes:
            for o in n["outputs"]:
                o["links"] = o["links"] or None
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfy-kiwi/workflows/" + name)), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [40, 60]}, "comfy-kiwi": {"builder": "tools/build_workflows.py"}},
                "version": 0.4}


# --------------------------------------------------------------------------------------------------
# the workflows
# --------------------------------------------------------------------------------------------------

SAMPLER = {"seed": 42, "control_after_generate": "fixed", "steps": 50, "shift": 5.0, "cfg": 1.0, "denoise": 1.0,
           "schedule": "kiwi", "block_swap": -1, "step_cache": 0.0}
LOADER = {"dtype": "auto", "device": "auto", "attention": "auto"}


# Download size of a release, computed (not read off the hub): 5.00e9 DiT + 3.75e9 MLLM (Qwen2.5-VL-3B)
# + 0.70e9 VAE parameters (counted from the architectures, comfy_kiwi.memory.planner) × 2 bytes (bf16).
RELEASE_SIZE = "about 19 GB"


def _download_note(kinds) -> str:
    lines = [f"Needs the Kiwi-Edit {' or '.join(kinds)} release ({RELEASE_SIZE}: 9.45e9 parameters in bf16). "
             "Download the whole release folder into ComfyUI/models/kiwi/:", ""]
    for kind in kinds:
        lines.append(f"hf download linyq/{RELEASES[kind]} --local-dir models/kiwi/{RELEASES[kind]}")
    lines += ["", "Then press R to refresh the model lists. Details: docs/COMFYUI.md of comfy-kiwi."]
    return "\n".join(lines)


def _edit_chain(g: Graph, loader: dict, frames: dict, instruction: str, y: int = 60, reference: dict | None = None,
                steps: int = 50, reference_output: str = "IMAGE", frames_output: str = "images"):
    """MLLM encode + source encode + sampler + decode, wired to a release loader and prepared frames."""
    enc = g.add("KiwiMLLMEncode", (760, y), {"instruction": instruction, "encode_negative": False}, width=360)
    src = g.add("KiwiEncodeSource", (760, y + 250), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiSampler", (1160, y), dict(SAMPLER, steps=steps))
    dec = g.add("KiwiVAEDecode", (1160, y + 300), {"tiled": False})
    g.link(loader, "mllm", enc, "mllm")
    g.link(frames, frames_output, enc, "source")
    g.link(loader, "vae", src, "vae")
    g.link(frames, frames_output, src, "source")
    if reference is not None:
        g.link(reference, reference_output, enc, "reference")
        g.link(reference, reference_output, src, "reference")
    g.link(loader, "dit", smp, "dit")
    g.link(enc, "conditioning", smp, "conditioning")
    g.link(src, "source", smp, "source")
    g.link(smp, "latent", dec, "latent")
    g.link(loader, "vae", dec, "vae")
    g.group("Kiwi-Edit", [enc, src, smp, dec], "#8a6a3a")
    return dec


def _video_in_out(g: Graph, video_file: str):
    load = g.add("LoadVideo", (20, 420), {"file": video_file}, width=300)
    comps = g.add("GetVideoComponents", (20, 580), {}, width=300)
    prep = g.add("KiwiPrepareFrames", (360, 420), {"max_pixels": 921600, "num_frames": 81, "frame_mode": "trim"})
    g.link(load, "VIDEO", comps, "video")
    g.link(comps, "images", prep, "images")
    g.group("Source video", [load, comps, prep], "#3f789e")
    return comps, prep


def _video_out(g: Graph, decoded: dict, comps: dict, y: int = 60):
    create = g.add("CreateVideo", (1560, y), {"fps": 16.0, "bit_depth": 8}, width=260)
    save = g.add("SaveVideo", (1560, y + 200), {"filename_prefix": "video/kiwi-edit", "format": "auto",
                                                "codec": "auto"}, width=420)
    g.link(decoded, "images", create, "images")
    g.link(comps, "fps", create, "fps")          # keep the source's frame rate
    g.link(create, "VIDEO", save, "video")
    g.group("Output", [create, save], "#3a8a4a")


def instruction_video_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    g.add("Note", (20, 60), {"text": "Instruction-guided video edit (Kiwi-Edit).\n\n" + _download_note([kind])},
          width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = _video_in_out(g, "kiwi_source.mp4")
    dec = _edit_chain(g, loader, prep, "Replace the red car with a blue bicycle.")
    _video_out(g, dec, comps)
    return g


def reference_video_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"
    g.add("Note", (20, 60), {"text": "Reference-guided video edit: the reference image shows what to insert or how "
                                     "the result should look.\n\n" + _download_note([kind])}, width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = _video_in_out(g, "kiwi_source.mp4")
    ref = g.add("LoadImage", (360, 780), {"image": "kiwi_reference.png"}, title="Reference image", width=300)
    dec = _edit_chain(g, loader, prep, "Replace the dog with the toy in the reference image.", reference=ref)
    _video_out(g, dec, comps)
    return g


def image_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    g.add("Note", (20, 60), {"text": "Image edit: one frame through the same models.\n\n" + _download_note([kind])},
          width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    img = g.add("LoadImage", (20, 420), {"image": "kiwi_source.png"}, width=300)
    prep = g.add("KiwiPrepareFrames", (360, 420), {"max_pixels": 921600, "num_frames": 1, "frame_mode": "trim"})
    g.link(img, "IMAGE", prep, "images")
    dec = _edit_chain(g, loader, prep, "Make it look like a watercolor painting.")
    save = g.add("SaveImage", (1560, 60), {"filename_prefix": "kiwi-edit"}, width=360)
    g.link(dec, "images", save, "images")
    return g


def all_parts(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    rel = "kiwi release: " + RELEASES[kind]
    g.add("Note", (20, 60), {"text": "Every block wired separately: DiT, LoRA, VAE and MLLM loaded on their own. "
                                     "Each loader lists its ComfyUI model folder and the parts of the releases in "
                                     "models/kiwi/.\n\n" + _download_note([kind]) +
                                     "\nVAE: wan2.2_vae.safetensors in models/vae/ (or pick the release's vae)."},
          width=320, height=270)
    dit = g.add("KiwiDiTLoader", (20, 420), dict(LOADER, dit_name=rel),
                models=release_models(kind, ("transformer", "source_embedder")))
    lora = g.add("KiwiLoraLoader", (20, 610), {"lora_name": "none", "strength": 1.0})
    vae = g.add("KiwiVAELoader", (20, 760), {"vae_name": WAN22_VAE["name"], "dtype": "auto", "device": "auto"},
                models=[WAN22_VAE])
    mllm = g.add("KiwiMLLMLoader", (20, 930), {"mllm_name": rel, "kiwi_checkpoint": "none", "dtype": "auto",
                                                "device": "auto"}, models=release_models(kind, ("mllm_encoder",)))
    g.link(dit, "dit", lora, "dit")
    g.group("Models", [dit, lora, vae, mllm], "#3f789e")
    load = g.add("LoadVideo", (380, 420), {"file": "kiwi_source.mp4"}, width=300)
    comps = g.add("GetVideoComponents", (380, 580), {}, width=300)
    prep = g.add("KiwiPrepareFrames", (380, 780), {"max_pixels": 921600, "num_frames": 81, "frame_mode": "trim"})
    g.link(load, "VIDEO", comps, "video")
    g.link(comps, "images", prep, "images")
    enc = g.add("KiwiMLLMEncode", (760, 60), {"instruction": "Turn the scene into a snowy winter day.",
                                              "encode_negative": False}, width=360)
    src = g.add("KiwiEncodeSource", (760, 310), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiSampler", (1160, 60), dict(SAMPLER))
    dec = g.add("KiwiVAEDecode", (1160, 360), {"tiled": False})
    for a, out, b, inp in ((mllm, "mllm", enc, "mllm"), (prep, "images", enc, "source"), (vae, "vae", src, "vae"),
                           (prep, "images", src, "source"), (lora, "dit", smp, "dit"),
                           (enc, "conditioning", smp, "conditioning"), (src, "source", smp, "source"),
                           (smp, "latent", dec, "latent"), (vae, "vae", dec, "vae")):
        g.link(a, out, b, inp)
    _video_out(g, dec, comps)
    return g


# judge / reward models (stock Hugging Face folders; see docs/JUDGING.md)
QWEN_VL = {"Qwen2.5-VL-7B-Instruct": 5, "Qwen2.5-VL-3B-Instruct": 2}      # folder name: weight shards
CLIP_FOLDERS = {"clip-vit-large-patch14": "openai", "PickScore_v1": "yuvalkirstain"}


def qwen_vl_models(name: str = "Qwen2.5-VL-7B-Instruct") -> list[dict]:
    n = QWEN_VL[name]
    files = [f"model-{i:05}-of-{n:05}.safetensors" for i in range(1, n + 1)]
    return [{"name": f"{name}/{f}", "url": f"{HF}/Qwen/{name}/resolve/main/{f}", "directory": "text_encoders"}
            for f in files]


def clip_models(name: str) -> list[dict]:
    return [{"name": f"{name}/model.safetensors", "url": f"{HF}/{CLIP_FOLDERS[name]}/{name}/resolve/main/"
             "model.safetensors", "directory": "clip_vision"}]


def _judge_download_note(clip: bool) -> str:
    lines = ["Judge / grounding model: a stock Qwen2.5-VL folder in ComfyUI/models/text_encoders/ (7B: about "
             "16.6 GB, 3B: about 7.5 GB; 8.29e9 / 3.75e9 parameters in bf16):", ""]
    lines += [f"hf download Qwen/{n} --local-dir models/text_encoders/{n}" for n in QWEN_VL]
    lines += ["", "(7B judges better; 3B fits smaller GPUs: pick it in Kiwi VLM Loader.)"]
    if clip:
        lines += ["", "CLIP and PickScore folders go in ComfyUI/models/clip_vision/ (about 1.7 GB and 3.9 GB: "
                      "0.43e9 / 0.99e9 parameters in fp32):", ""]
        lines += [f"hf download {org}/{n} --local-dir models/clip_vision/{n}" for n, org in CLIP_FOLDERS.items()]
    return "\n".join(lines)


VLM = {"dtype": "auto", "device": "auto", "max_frames": 16, "max_pixels_per_frame": 262144,
       "image_max_pixels": 802816}


def reference_synthesis_then_edit(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"
    instruction = "Replace the dog with the toy in the reference image."
    g.add("Note", (20, 60), {"text": "Reference synthesis, then a reference-guided edit (RefVIE recipe).\n\n" +
                                     _download_note([kind])}, width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = _video_in_out(g, "kiwi_source.mp4")
    photo = g.add("LoadImage", (20, 900), {"image": "kiwi_object_photo.png"}, title="Photo with the object",
                  width=300)
    vlm = g.add("KiwiVLMLoader", (360, 900), dict(VLM, vlm_name="Qwen2.5-VL-7B-Instruct"),
                models=qwen_vl_models())
    ground = g.add("KiwiGround", (360, 1130), {"description": "the toy", "target": "object", "frame_index": 0,
                                               "coordinate_space": "input", "combine": "largest", "attempts": 3,
                                               "seed": 0, "on_failure": "whole image"})
    ref = g.add("KiwiReferenceFromMask", (760, 900), {"kind": "local", "frame_index": 0, "threshold": 0.5,
                                                      "margin": 16, "dilate": 4, "fill": "pyramid",
                                                      "iterations": 200})
    quality = g.add("KiwiReferenceQuality", (760, 1180), {"instruction": instruction, "kind": "local",
                                                          "frame_index": 0, "threshold": 6.0, "attempts": 3,
                                                          "seed": 0, "on_failure": "report"})
    show_ref = g.add("PreviewImage", (1160, 900), {}, title="Reference", width=300, height=260)
    show_q = g.add("PreviewAny", (1160, 1180), {}, title="Reference quality (1-10; -1 = unreadable)", width=300)
    for a, out, b, inp in ((vlm, "vlm", ground, "vlm"), (photo, "IMAGE", ground, "image"),
                           (photo, "IMAGE", ref, "image"), (ground, "mask", ref, "mask"),
                           (vlm, "vlm", quality, "vlm"), (ref, "reference", quality, "reference"),
                           (photo, "IMAGE", quality, "edited"), (ref, "reference", show_ref, "images"),
                           (quality, "score", show_q, "source")):
        g.link(a, out, b, inp)
    note = g.add("Note", (20, 1040), {"text": "Qwen2.5-VL finds the object in the photo; its cut-out on white is the "
                                              "reference. If no box can be read, Kiwi Ground uses the whole photo "
                                              "(on_failure; set error to stop instead). A mask from any segmentation "
                                              "node can replace Kiwi Ground.\n\n" + _judge_download_note(clip=False)},
                 width=320, height=340)
    g.group("Reference synthesis", [photo, vlm, ground, ref, quality, show_ref, show_q, note], "#6a3a8a")
    dec = _edit_chain(g, loader, prep, instruction, reference=ref, reference_output="reference")
    _video_out(g, dec, comps)
    return g


def edit_then_judge(pack) -> Graph:
    g = Graph(pack)
    kind = "instruct-reference"         # one download serves every Kiwi workflow
    instruction = "Replace the red car with a blue bicycle."
    g.add("Note", (20, 60), {"text": "Edit, then score the edit with a VLM judge and CLIP rewards.\n\n" +
                                     _download_note([kind])}, width=320, height=270)
    loader = g.add("KiwiReleaseLoader", (360, 60), dict(LOADER, release=RELEASES[kind]), models=release_models(kind))
    comps, prep = _video_in_out(g, "kiwi_source.mp4")
    dec = _edit_chain(g, loader, prep, instruction)
    _video_out(g, dec, comps)
    vlm = g.add("KiwiVLMLoader", (20, 900), dict(VLM, vlm_name="Qwen2.5-VL-7B-Instruct"), models=qwen_vl_models())
    judge = g.add("KiwiJudge", (360, 900), {"instruction": instruction, "rubric": "vie-bench", "attempts": 3,
                                            "seed": 0, "cap": "rubric default", "on_failure": "report", "fps": 0.0,
                                            "max_new_tokens": 512}, width=360)
    show_judge = g.add("PreviewAny", (760, 900), {}, title="Judge scores", width=400, height=300)
    for a, out, b, inp in ((vlm, "vlm", judge, "vlm"), (prep, "images", judge, "source"),
                           (dec, "images", judge, "edited"), (comps, "fps", judge, "fps"),
                           (judge, "scores_json", show_judge, "source")):
        g.link(a, out, b, inp)
    note = g.add("Note", (1420, 900), {"text": "Kiwi Judge asks Qwen2.5-VL for the rubric's scores; on_failure = report "
                                               "gives overall -1 (reasons in the JSON) instead of stopping when no "
                                               "answer can be read. Kiwi CLIP Rewards: R_IF, R_SP, PickScore.\n\n" +
                                               _judge_download_note(clip=True)}, width=420, height=480)
    g.group("VLM judge", [vlm, judge, show_judge], "#6a3a8a")
    clip = g.add("KiwiCLIPLoader", (20, 1300), {"clip_name": "clip-vit-large-patch14", "dtype": "auto",
                                                "device": "auto"}, models=clip_models("clip-vit-large-patch14"))
    pick = g.add("KiwiCLIPLoader", (20, 1460), {"clip_name": "PickScore_v1", "dtype": "auto", "device": "auto"},
                 title="Kiwi CLIP / PickScore Loader (PickScore)", models=clip_models("PickScore_v1"))
    rewards = g.add("KiwiRewards", (360, 1300), {"instruction_edit": instruction,
                                                 "text_source": "A red car driving along a street.",
                                                 "weight_if": 1.0, "weight_sp": 1.0, "weight_pickscore": 0.0,
                                                 "weight_tc": 0.0, "max_frames": 8, "aggregation": "mean_embedding"},
                    width=360)
    for a, out, b, inp in ((clip, "clip", rewards, "clip"), (pick, "clip", rewards, "pickscore"),
                           (prep, "images", rewards, "source"), (dec, "images", rewards, "edited")):
        g.link(a, out, b, inp)
    shown = []
    for i, (out, title) in enumerate((("weighted", "Weighted reward"), ("r_if", "R_IF (instruction following)"),
                                      ("r_sp", "R_SP (source preservation)"), ("pickscore", "PickScore"))):
        node = g.add("PreviewAny", (760 + 320 * (i % 2), 1300 + 160 * (i // 2)), {}, title=title, width=300)
        g.link(rewards, out, node, "source")
        shown.append(node)
    g.group("CLIP rewards", [clip, pick, rewards, *shown], "#6a3a8a")
    return g


def _toy_edit(pack, reference: bool) -> Graph:
    """The embedded toy model edits a toy example, the toy judge scores it against the ground truth."""
    g = Graph(pack)
    kind = "any with reference" if reference else "any without reference"
    seed = 2000000
    g.add("Note", (20, 60), {"text": "Toy world: the embedded toy Kiwi model (a few MB, trained by comfy-kiwi on "
                                     "coloured shapes) edits a generated toy video; the Kiwi Toy Judge scores "
                                     "the result against the exact ground truth. No downloads needed.\n\n"
                                     "Change the seed for another example. docs/TOY_BENCHMARK.md of comfy-kiwi."},
          width=320, height=230)
    loader = g.add("KiwiToyModelLoader", (360, 60), {})
    example = g.add("KiwiToyExample", (20, 420), {"seed": seed, "kind": kind}, width=300)
    # the instruction the example node will output, shown in the encode node's (socket-driven) widget
    instruction = pack.NODE_CLASS_MAPPINGS["KiwiToyExample"]().make(seed, kind)[1]
    dec = _edit_chain(g, loader, example, instruction, steps=50, reference=example if reference else None,
                      reference_output="reference", frames_output="source")
    encode = next(n for n in g.nodes if n["type"] == "KiwiMLLMEncode")
    g.link(example, "instruction", encode, "instruction")      # the widget becomes a socket
    judge = g.add("KiwiToyJudge", (1560, 60), {}, width=300)
    g.link(dec, "images", judge, "edited")
    g.link(example, "example", judge, "example")
    scores = g.add("PreviewAny", (1900, 60), {}, title="Toy judge scores", width=360)
    g.link(judge, "report", scores, "source")
    show = g.add("PreviewImage", (1560, 300), {}, title="Edited frames", width=300)
    g.link(dec, "images", show, "images")
    truth = g.add("PreviewImage", (1560, 560), {}, title="Ground truth", width=300)
    g.link(example, "target", truth, "images")
    g.group("Toy judge", [judge, scores, show, truth], "#3a8a4a")
    return g


def toy_edit(pack) -> Graph:
    return _toy_edit(pack, reference=False)


def toy_reference_edit(pack) -> Graph:
    return _toy_edit(pack, reference=True)


# method workflows (docs/METHODS.md): the method weights come from `python -m trainer train`, not a download
WAN22_TI2V_5B = {"name": "wan2.2_ti2v_5B_fp16.safetensors", "directory": "diffusion_models",
                 "url": f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/diffusion_models/"
                        "wan2.2_ti2v_5B_fp16.safetensors"}
METHOD_SAMPLER = {"seed": 42, "control_after_generate": "fixed", "steps": 50, "shift": 5.0, "step_cache": 0.0}


def viva_edit(pack) -> Graph:
    """VIVA on Wan2.2 TI2V 5B: the Qwen2.5-VL instructor + trained refiner, CFG 2.0 on the instruction."""
    g = Graph(pack)
    qwen = "Qwen2.5-VL-3B-Instruct"
    g.add("Note", (20, 60), {"text": "VIVA edit (docs/METHODS.md): Wan2.2 TI2V 5B + the Qwen2.5-VL instructor + "
                                     "the VIVA weights you trained (preset viva-wan2.2-5b).\n\n"
                                     "Models (about 19 GB together: 5.00e9 DiT + 0.70e9 VAE + 3.75e9 Qwen "
                                     "parameters at 2 bytes): wan2.2_ti2v_5B_fp16.safetensors in "
                                     "models/diffusion_models/, wan2.2_vae.safetensors in models/vae/, and\n\n"
                                     f"hf download Qwen/{qwen} --local-dir models/text_encoders/{qwen}\n\n"
                                     "VIVA weights: copy runs/viva-wan2.2-5b/viva.safetensors into models/loras/ "
                                     "(comfy-kiwi-train train --config viva-wan2.2-5b). An Edit-GRPO LoRA goes "
                                     "between the DiT loader and the sampler through Kiwi Lora Loader."},
          width=320, height=400)
    dit = g.add("KiwiDiTLoader", (360, 60), dict(LOADER, dit_name=WAN22_TI2V_5B["name"]), models=[WAN22_TI2V_5B])
    vae = g.add("KiwiVAELoader", (360, 250), {"vae_name": WAN22_VAE["name"], "dtype": "auto", "device": "auto"},
                models=[WAN22_VAE])
    mllm = g.add("KiwiMLLMLoader", (360, 420), {"mllm_name": qwen, "kiwi_checkpoint": "none", "dtype": "auto",
                                                 "device": "auto"}, models=qwen_vl_models(qwen))
    weights = g.add("KiwiVIVALoader", (360, 620), {"weights_name": "viva.safetensors"})
    g.link(dit, "dit", weights, "dit")
    g.group("Models", [dit, vae, mllm, weights], "#3f789e")
    load = g.add("LoadVideo", (20, 520), {"file": "kiwi_source.mp4"}, width=300)
    comps = g.add("GetVideoComponents", (20, 680), {}, width=300)
    prep = g.add("KiwiPrepareFrames", (20, 880), {"max_pixels": 921600, "num_frames": 81, "frame_mode": "trim"})
    g.link(load, "VIDEO", comps, "video")
    g.link(comps, "images", prep, "images")
    g.group("Source video", [load, comps, prep], "#3f789e")
    enc = g.add("KiwiVIVAEncode", (760, 60), {"instruction": "Make the car red.", "encode_negative": True},
                width=360)
    src = g.add("KiwiEncodeSource", (760, 330), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiVIVASampler", (1160, 60), dict(METHOD_SAMPLER, cfg=2.0))
    dec = g.add("KiwiVAEDecode", (1160, 360), {"tiled": False})
    for a, out, b, inp in ((mllm, "mllm", enc, "mllm"), (weights, "viva", enc, "viva"), (prep, "images", enc, "source"),
                           (vae, "vae", src, "vae"), (prep, "images", src, "source"), (dit, "dit", smp, "dit"),
                           (weights, "viva", smp, "viva"), (enc, "conditioning", smp, "conditioning"),
                           (src, "source", smp, "source"), (smp, "latent", dec, "latent"), (vae, "vae", dec, "vae")):
        g.link(a, out, b, inp)
    g.group("VIVA", [enc, src, smp, dec], "#8a6a3a")
    _video_out(g, dec, comps)
    return g


WAN21_UMT5 = "Wan2.1-T2V-1.3B-Diffusers"           # a diffusers Wan2.1 folder: text_encoder/ + tokenizer/ (umT5)


def rvedit_edit(pack) -> Graph:
    """RVEDiT on the Kiwi-Edit instruct-reference release, as it trained: the run's fine-tuned DiT, X_e from the
    release's MLLM with the run's connector + LoRA, X_v from the trained embedder, X_ℓ = the instruction's umT5 rows."""
    g = Graph(pack)
    kind = "instruct-reference"
    instruction = "Replace the red car with a blue bicycle."
    g.add("Note", (20, 60), {"text": "RVEDiT edit (docs/METHODS.md), streams as in training: X_e = Kiwi MLLM Encode "
                                     "with the MLLM from Kiwi RVEDiT Loader (trained connector + LoRA), X_ℓ = Kiwi "
                                     "UMT5 Encode of the same instruction. umT5: hf download Wan-AI/" + WAN21_UMT5 +
                                     " --include 'text_encoder/*' 'tokenizer/*' --local-dir models/text_encoders/" +
                                     WAN21_UMT5 + "\n"
                                     "Weights (preset rvedit-kiwi-5b): runs/rvedit-kiwi-5b/rvedit.safetensors into "
                                     "models/loras/ and the fine-tuned DiT rvedit-dit.safetensors into "
                                     "models/diffusion_models/ (with dit_training = \"lora\": the release's DiT + "
                                     "Kiwi LoRA Loader).\n\n" + _download_note([kind])},
          width=320, height=400)
    rel = "kiwi release: " + RELEASES[kind]          # the release's VAE and MLLM; the DiT is the run's own
    tuned = g.add("KiwiDiTLoader", (360, 60), dict(LOADER, dit_name="rvedit-dit.safetensors"),
                  title="Kiwi DiT Loader (the RVEDiT run's DiT)")
    vae = g.add("KiwiVAELoader", (360, 250), {"vae_name": rel, "dtype": "auto", "device": "auto"},
                models=release_models(kind, ("vae",)))
    mllm = g.add("KiwiMLLMLoader", (360, 420), {"mllm_name": rel, "kiwi_checkpoint": "none", "dtype": "auto",
                                                 "device": "auto"}, models=release_models(kind, ("mllm_encoder",)))
    weights = g.add("KiwiRVEDiTLoader", (760, 560), {"weights_name": "rvedit.safetensors", "split": -1})
    g.link(tuned, "dit", weights, "dit")
    g.link(mllm, "mllm", weights, "mllm")
    umt5 = g.add("KiwiUMT5Loader", (360, 640), {"encoder_name": WAN21_UMT5, "dtype": "auto", "device": "auto"},
                 models=[{"name": f"{WAN21_UMT5}/text_encoder/model-{i:05}-of-00005.safetensors", "directory":
                          "text_encoders", "url": f"{HF}/Wan-AI/{WAN21_UMT5}/resolve/main/text_encoder/"
                                                  f"model-{i:05}-of-00005.safetensors"} for i in range(1, 6)])
    comps, prep = _video_in_out(g, "kiwi_source.mp4")
    enc = g.add("KiwiMLLMEncode", (760, 60), {"instruction": instruction, "encode_negative": False}, width=360)
    x_l = g.add("KiwiUMT5Encode", (760, 760), {"caption": instruction, "text_len": 512}, title="Kiwi UMT5 Encode (X_ℓ)",
                width=360)
    src = g.add("KiwiEncodeSource", (760, 310), {"reference_position": "model default", "tiled": False})
    smp = g.add("KiwiRVEDiTSampler", (1160, 60), dict(METHOD_SAMPLER, cfg=1.0))
    dec = g.add("KiwiVAEDecode", (1160, 360), {"tiled": False})
    for a, out, b, inp in ((weights, "mllm", enc, "mllm"), (prep, "images", enc, "source"), (vae, "vae", src, "vae"),
                           (prep, "images", src, "source"), (tuned, "dit", smp, "dit"),
                           (weights, "rvedit", smp, "rvedit"), (enc, "conditioning", smp, "conditioning"),
                           (umt5, "umt5", x_l, "umt5"), (x_l, "conditioning", smp, "instruction_text"),
                           (src, "source", smp, "source"), (smp, "latent", dec, "latent"),
                           (vae, "vae", dec, "vae")):
        g.link(a, out, b, inp)
    g.group("Models", [tuned, vae, mllm, umt5, weights], "#3f789e")
    g.group("RVEDiT", [enc, x_l, src, smp, dec], "#8a6a3a")
    _video_out(g, dec, comps)
    return g


WORKFLOWS = {
    "kiwi_instruction_video_edit.json": instruction_video_edit,
    "kiwi_reference_video_edit.json": reference_video_edit,
    "kiwi_image_edit.json": image_edit,
    "kiwi_all_parts.json": all_parts,
    "kiwi_reference_synthesis_then_edit.json": reference_synthesis_then_edit,
    "kiwi_edit_then_judge.json": edit_then_judge,
    "kiwi_viva_edit.json": viva_edit,
    "kiwi_rvedit_edit.json": rvedit_edit,
    "toy_edit.json": toy_edit,
    "toy_reference_edit.json": toy_reference_edit,
}


def build_all(pack=None) -> dict[str, dict]:
    pack = pack or load_pack()
    return {name: fn(pack).to_json(name.removesuffix(".json")) for name, fn in WORKFLOWS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, wf in build_all().items():
        (OUT / name).write_text(json.dumps(wf, indent=2) + "\n")
        print(f"wrote workflows/{name}: {len(wf['nodes'])} nodes, {len(wf['links'])} links")


if __name__ == "__main__":
    main()
