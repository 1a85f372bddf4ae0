"""Table (markdown) and plot (PNG, drawn with PIL: no plotting library needed) of the toy benchmark."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"kiwi": (200, 40, 40), "plain_add": (240, 140, 20), "concat": (40, 140, 60), "none": (120, 120, 120),
           "no_image": (40, 90, 210), "image_only": (150, 60, 180)}
LABELS = {"kiwi": "Kiwi: σ-scaled add, image+video+ref (shipped)", "plain_add": "plain add",
          "concat": "channel concat", "none": "no source latents", "no_image": "σ-add without image co-training",
          "image_only": "image pairs only (ImVideoEdit data)"}
METRICS = ("compliance", "preservation", "temporal", "overall")


def load_runs(out: Path) -> tuple[dict, dict | None]:
    runs = {}
    for name in COLOURS:
        f = out / f"{name}.json"
        if f.exists():
            runs[name] = json.loads(f.read_text())
    base = out / "baselines.json"
    return runs, (json.loads(base.read_text()) if base.exists() else None)


def _row(label: str, scores: dict) -> str:
    cells = [f"{scores[d]['overall']:.3f}" for d in ("image", "video", "reference")]
    a = scores["all"]
    return (f"| {label} | " + " | ".join(f"{a[m]:.3f}" for m in METRICS) + " | " + " | ".join(cells) + " |")


def table(runs: dict, base: dict | None) -> str:
    lines = ["| model | compliance | preservation | temporal | overall | overall image | overall video | "
             "overall reference |", "|---|---|---|---|---|---|---|---|"]
    if base:
        lines.append(_row("identity (return the source)", base["identity"]))
        lines.append(_row("random model (untrained)", base["random"]))
    for name, r in runs.items():
        lines.append(_row(f"{LABELS[name]} — {r['config']['steps']} steps, {r['seconds'] / 60:.0f} min", r["final"]))
    return "\n".join(lines)


def _panel(draw: ImageDraw.ImageDraw, box, runs: dict, base: dict | None, metric: str, dataset: str, title: str):
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 6, y0 - 16), title, fill=(0, 0, 0))
    max_step = max((h["step"] for r in runs.values() for h in r["history"]), default=1) or 1
    sx = lambda s: x0 + (x1 - x0) * s / max_step                         # noqa: E731
    sy = lambda v: y1 - (y1 - y0) * max(0.0, min(1.0, v))                 # noqa: E731
    for v in (0.25, 0.5, 0.75, 1.0):
        draw.line([(x0, sy(v)), (x1, sy(v))], fill=(225, 225, 225))
        draw.text((x0 - 30, sy(v) - 6), f"{v:.2f}", fill=(0, 0, 0))
    draw.text((x0 - 30, y1 - 6), "0", fill=(0, 0, 0))
    draw.text((x1 - 60, y1 + 4), f"{max_step} steps", fill=(0, 0, 0))
    if base:
        for key, colour in (("identity", (0, 0, 0)), ("random", (160, 160, 160))):
            v = base[key][dataset][metric]
            for x in range(int(x0), int(x1), 8):
                draw.line([(x, sy(v)), (x + 4, sy(v))], fill=colour, width=1)
            draw.text((x1 - 70, sy(v) - 12), key, fill=colour)
    for name, r in runs.items():
        pts = [(sx(h["step"]), sy(h["eval"][dataset][metric])) for h in r["history"]]
        if len(pts) > 1:
            draw.line(pts, fill=COLOURS[name], width=2)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLOURS[name])


def plot(runs: dict, base: dict | None, path: Path) -> None:
    img = Image.new("RGB", (1100, 520), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 8), "Toy benchmark: held-out toy edits scored by the toy judge vs training steps "
                    "(20 sampling steps; dashed: baselines)", fill=(0, 0, 0))
    _panel(d, (60, 60, 520, 400), runs, base, "overall", "all", "overall (compliance × preservation × temporal), "
                                                                   "mean of image/video/reference")
    _panel(d, (600, 60, 1060, 400), runs, base, "temporal", "video", "temporal consistency on videos")
    y = 430
    for i, name in enumerate(runs):
        x = 60 + (i % 3) * 340
        yy = y + (i // 3) * 20
        d.rectangle([x, yy + 3, x + 14, yy + 11], fill=COLOURS[name])
        d.text((x + 20, yy), LABELS[name], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_report(out: Path) -> None:
    out = Path(out)
    runs, base = load_runs(out)
    (out / "results.md").write_text(table(runs, base) + "\n")
    plot(runs, base, out / "toy_edit.png")
