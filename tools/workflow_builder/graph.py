"""A UI-format (version 0.4) ComfyUI graph built node by node: ids, slots and link ids assigned here, widget
values written in the order each node declares its widgets (see tools/build_workflows.py)."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

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
