"""Draw a ComfyUI UI-format workflow as a PNG (nodes, sockets, widget values, links, groups) with Pillow.

    python tools/render_workflow.py workflows/kiwi_instruction_video_edit.json docs/images/kiwi_instruction_video_edit.png

A static picture for the docs, drawn in the spirit of ComfyUI's dark canvas; widget names come from the
node definitions (tools/build_workflows.py), values from the workflow file.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_workflows as B  # noqa: E402

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
TYPE_COLORS = {"IMAGE": "#64b5f6", "VIDEO": "#a1887f", "FLOAT": "#aed581", "INT": "#81c784", "AUDIO": "#ba68c8",
               "MASK": "#81c784", "KIWI_DIT": "#b39ddb", "KIWI_VAE": "#ff6e6e", "KIWI_MLLM": "#ffd500",
               "KIWI_CONDITIONING": "#ffa931", "KIWI_SOURCE": "#4dd0e1", "KIWI_LATENT": "#ff9cf9",
               "KIWI_VLM": "#f48fb1", "KIWI_CLIP": "#fff59d", "STRING": "#e0e0e0", "BOOLEAN": "#90caf9"}
NATIVE_TITLES = {"LoadVideo": "Load Video", "GetVideoComponents": "Get Video Components", "CreateVideo": "Create Video",
                 "SaveVideo": "Save Video", "LoadImage": "Load Image", "SaveImage": "Save Image", "Note": "Note",
                 "PreviewImage": "Preview Image", "PreviewAny": "Preview as Text"}
TITLE_H, ROW_H, MARGIN = 30, 22, 40


def _font(size: int, bold: bool = False):
    path = FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default()


FONT, SMALL, BOLD, GROUP = _font(13), _font(12), _font(14, True), _font(20, True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _widget_rows(graph: B.Graph, node: dict) -> list[tuple[str, str]]:
    """(name, value) per visible widget, in order, skipping widgets turned into sockets."""
    socket_widgets = {i["name"] for i in node.get("inputs", []) if "widget" in i}
    values = list(node.get("widgets_values") or [])
    rows = []
    for name, value in zip(graph.layout(node["type"])["widgets"], values):
        if name == "+upload" or name in socket_widgets:
            continue
        rows.append(("control after generate" if name == "+control" else name, _fmt(value)))
    return rows


def render(workflow: dict, out: Path, pack=None) -> Path:
    graph = B.Graph(pack or B.load_pack())
    names = dict(NATIVE_TITLES, **graph.pack.NODE_DISPLAY_NAME_MAPPINGS)
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]] + [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                                              g["bounding"][1] + g["bounding"][3]) for g in workflow["groups"]]
    x0, y0 = min(b[0] for b in boxes) - MARGIN, min(b[1] for b in boxes) - MARGIN
    x1, y1 = max(b[2] for b in boxes) + MARGIN, max(b[3] for b in boxes) + MARGIN
    img = Image.new("RGB", (int(x1 - x0), int(y1 - y0)), "#1e1e1e")
    draw = ImageDraw.Draw(img, "RGBA")

    def p(x, y):
        return x - x0, y - y0

    for gx in range(0, img.width, 40):                       # canvas grid
        draw.line([(gx, 0), (gx, img.height)], fill="#262626")
    for gy in range(0, img.height, 40):
        draw.line([(0, gy), (img.width, gy)], fill="#262626")

    for g in workflow["groups"]:
        bx, by, bw, bh = g["bounding"]
        rgb = tuple(int(g["color"][i:i + 2], 16) for i in (1, 3, 5))
        draw.rounded_rectangle([p(bx, by), p(bx + bw, by + bh)], 8, fill=rgb + (60,), outline=rgb + (160,))
        draw.text(p(bx + 12, by + 8), g["title"], font=GROUP, fill="#e8e8e8")

    sockets: dict[tuple[int, str, int], tuple[float, float]] = {}
    for n in workflow["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        for i, entry in enumerate(n.get("inputs", [])):
            sockets[(n["id"], "in", i)] = (x, y + 14 + i * ROW_H)
        for i, _ in enumerate(n.get("outputs", [])):
            sockets[(n["id"], "out", i)] = (x + w, y + 14 + i * ROW_H)

    for _, origin, o_slot, target, t_slot, typ in workflow["links"]:   # links under the nodes
        (ax, ay), (bx, by) = sockets[(origin, "out", o_slot)], sockets[(target, "in", t_slot)]
        bend = max(60.0, abs(bx - ax) * 0.5)
        pts = []
        for k in range(41):
            t = k / 40
            cx = (1 - t) ** 3 * ax + 3 * (1 - t) ** 2 * t * (ax + bend) + 3 * (1 - t) * t ** 2 * (bx - bend) + t ** 3 * bx
            cy = (1 - t) ** 3 * ay + 3 * (1 - t) ** 2 * t * ay + 3 * (1 - t) * t ** 2 * by + t ** 3 * by
            pts.append(p(cx, cy))
        draw.line(pts, fill=TYPE_COLORS.get(typ, "#cccccc"), width=3, joint="curve")

    for n in workflow["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        note = n["type"] == "Note"
        body, head = ("#4d4a32", "#3d3a22") if note else (n.get("bgcolor", "#353535"), n.get("color", "#222222"))
        draw.rounded_rectangle([p(x, y - TITLE_H), p(x + w, y + h)], 8, fill=body, outline="#111111", width=2)
        draw.rounded_rectangle([p(x, y - TITLE_H), p(x + w, y)], 8, fill=head)
        draw.ellipse([p(x + 10, y - 20), p(x + 20, y - 10)], fill="#999999")
        draw.text(p(x + 28, y - 23), _fit(draw, n.get("title") or names.get(n["type"], n["type"]), BOLD, w - 36),
                  font=BOLD, fill="#eeeeee")
        if note:
            lines = [ln for para in str(n["widgets_values"][0]).split("\n")
                     for ln in (textwrap.wrap(para, width=max(20, int(w / 7.2))) or [""])]
            for k, line in enumerate(lines):
                draw.text(p(x + 10, y + 8 + k * 17), line, font=SMALL, fill="#e0e0d0")
            continue
        rows = max(len(n.get("inputs", [])), len(n.get("outputs", [])))
        for i, entry in enumerate(n.get("inputs", [])):
            sx, sy = sockets[(n["id"], "in", i)]
            color = TYPE_COLORS.get(entry["type"], "#cccccc")
            draw.ellipse([p(sx - 5, sy - 5), p(sx + 5, sy + 5)], fill=color if entry.get("link") else None, outline=color,
                         width=2)
            draw.text(p(sx + 12, sy - 8), entry["name"], font=FONT, fill="#bbbbbb")
        for i, entry in enumerate(n.get("outputs", [])):
            sx, sy = sockets[(n["id"], "out", i)]
            color = TYPE_COLORS.get(entry["type"], "#cccccc")
            draw.ellipse([p(sx - 5, sy - 5), p(sx + 5, sy + 5)], fill=color if entry.get("links") else None,
                         outline=color, width=2)
            label = entry["name"]
            draw.text(p(sx - 12 - draw.textlength(label, font=FONT), sy - 8), label, font=FONT, fill="#bbbbbb")
        wy = y + 8 + rows * ROW_H
        for name, value in _widget_rows(graph, n):
            multiline = "\n" in value or draw.textlength(name + value, font=SMALL) > w - 40
            if multiline:       # long text: a text box like ComfyUI's multiline widget
                lines = textwrap.wrap(value, width=max(20, int((w - 24) / 7)))[:4]
                box_h = 8 + 16 * len(lines)
                draw.rounded_rectangle([p(x + 10, wy), p(x + w - 10, wy + box_h)], 5, fill="#1b1b1b")
                for k, line in enumerate(lines):
                    draw.text(p(x + 16, wy + 4 + 16 * k), line, font=SMALL, fill="#dddddd")
                wy += box_h + 6
                continue
            draw.rounded_rectangle([p(x + 10, wy), p(x + w - 10, wy + 20)], 10, fill="#222222")
            draw.text(p(x + 20, wy + 3), name, font=SMALL, fill="#999999")
            shown = _fit(draw, value, SMALL, w - 50 - draw.textlength(name, font=SMALL))
            draw.text(p(x + w - 20 - draw.textlength(shown, font=SMALL), wy + 3), shown, font=SMALL, fill="#eeeeee")
            wy += 24
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    print(render(json.loads(Path(argv[0]).read_text()), Path(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
