"""Tables (markdown) and plot (PNG, drawn with PIL: no plotting library needed) of the toy benchmark.

Reads ``OUT/baselines.json``, ``OUT/shipped.json`` (the shipped model's trainer run) and
``OUT/ablations/seed{N}/*.json`` (every variant trained for the same, shorter budget, once per training seed;
the older flat ``OUT/ablations/*.json`` are read too, as the seed in their config). The ablation table shows
the mean over seeds, the overall score also per seed in parentheses; the plot draws each seed's curve.
Scores missing from older JSONs (cleanliness) show as "–"."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"shipped": (120, 0, 0), "kiwi": (200, 40, 40), "plain_add": (240, 140, 20), "concat": (40, 140, 60), "none": (120, 120, 120),
           "no_image": (40, 90, 210), "image_only": (150, 60, 180)}
LABELS = {"shipped": "shipped: python -m trainer, toy-kiwi-stage1/2/3/4",
          "kiwi": "Kiwi: sigma-scaled add, image+video+ref", "plain_add": "plain add (no sigma)",
          "concat": "channel concat", "none": "no source latents", "no_image": "sigma add, no image co-training",
          "image_only": "image pairs only (ImVideoEdit data)"}
METRICS = ("compliance", "preservation", "temporal", "overall", "cleanliness")
DATASETS = ("image", "video", "reference")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


# (dataset, metric) of each table column after the label
COLUMNS = [("all", m) for m in METRICS] + [(d, "overall") for d in DATASETS] + [("video", "temporal")]
HEADER = ["| model | compliance | preservation | temporal | overall | cleanliness | overall image | overall video | "
          "overall reference | temporal video |", "|---|---|---|---|---|---|---|---|---|---|"]


def _cell(values: list, per_seed: bool = False) -> str:
    """Mean of one score over runs ("–" when a run lacks it), with each run's value when ``per_seed``."""
    if any(v is None for v in values):
        return "–"
    text = f"{sum(values) / len(values):.3f}"
    if per_seed and len(values) > 1:
        text += " (" + ", ".join(f"{v:.3f}" for v in values) + ")"
    return text


def _row(label: str, *scores: dict, extra: str = "") -> str:
    """One table row: the mean over ``scores`` (one score dict per seed), overall also per seed."""
    cells = [_cell([s[d].get(m) for s in scores], per_seed=(d, m) == ("all", "overall")) for d, m in COLUMNS]
    return f"| {label} | " + " | ".join(cells) + " |" + (f" {extra} |" if extra else "")


def main_table(kiwi: dict | None, base: dict | None) -> str:
    lines = list(HEADER)
    if base:
        lines.append(_row("return the source unchanged (identity)", base["identity"]))
        lines.append(_row("random model (untrained weights)", base["random"]))
    if kiwi:
        lines.append(_row(f"shipped toy model (python -m trainer, {kiwi['config']['steps']} steps, "
                          f"{kiwi['seconds'] / 60:.0f} min)",
                          kiwi["final"]))
    return "\n".join(lines)


def kind_table(kiwi: dict | None) -> str:
    if not kiwi or "by_kind" not in kiwi["final"]:
        return ""
    lines = ["| edit kind | compliance | preservation | temporal | overall | cleanliness |", "|" + "---|" * 6]
    for kind, s in kiwi["final"]["by_kind"].items():
        lines.append(f"| {kind} | " + " | ".join(_cell([s.get(m)]) for m in METRICS) + " |")
    return "\n".join(lines)


def load_ablations(folder: Path) -> dict[str, dict[int, dict]]:
    """{variant: {training seed: run}} from ``seed{N}/{variant}.json`` and the older flat ``{variant}.json``
    (a seed folder's run wins over a flat one of the same seed)."""
    runs = {}
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("seed*/*.json")):
        if path.stem in LABELS and path.stem != "shipped":
            run = json.loads(path.read_text())
            runs.setdefault(path.stem, {})[run["config"]["seed"]] = run
    return {n: dict(sorted(runs[n].items())) for n in LABELS if n in runs}


def ablation_table(runs: dict[str, dict[int, dict]]) -> str:
    """Mean over training seeds per variant; the overall column lists each seed's value in parentheses."""
    lines = [HEADER[0] + " seeds |", HEADER[1] + "---|"]
    for name, by_seed in runs.items():
        steps = sorted({r["config"]["steps"] for r in by_seed.values()})
        lines.append(_row(f"{LABELS[name]} ({'/'.join(map(str, steps))} steps)",
                          *(r["final"] for r in by_seed.values()), extra=", ".join(map(str, by_seed))))
    return "\n".join(lines)


def _axes(draw, box, title: str, values: list[float]):
    """Frame, title and a 0..top value axis with grid lines (top: the largest value + 15 %, at least 0.1);
    returns value → y."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0, y0 - 16), title, fill=(0, 0, 0))
    top = min(1.0, round(max([0.1] + values) * 1.15 + 0.049, 1))
    sy = lambda v: y1 - (y1 - y0) * max(0.0, min(1.0, v / top))                     # noqa: E731
    for i in range(1, 5):
        v = top * i / 4
        draw.line([(x0, sy(v)), (x1, sy(v))], fill=(225, 225, 225))
        draw.text((x0 - 34, sy(v) - 6), f"{v:.2f}", fill=(0, 0, 0))
    draw.text((x0 - 10, y1 - 6), "0", fill=(0, 0, 0))
    return sy


def _panel(draw, box, curves: dict, base: dict | None, metric: str, dataset: str, title: str):
    x0, y0, x1, y1 = box
    histories = [h for rs in curves.values() for r in rs for h in r["history"]]
    max_step = max((h["step"] for h in histories), default=1) or 1
    sy = _axes(draw, box, title, [h["eval"][dataset][metric] for h in histories]
               + ([base[k][dataset][metric] for k in ("identity", "random")] if base else []))
    sx = lambda s: x0 + (x1 - x0) * s / max_step                                    # noqa: E731
    draw.text((x1 - 70, y1 + 4), f"{max_step} steps", fill=(0, 0, 0))
    if base:
        for key, colour in (("identity", (0, 0, 0)), ("random", (150, 150, 150))):
            v = base[key][dataset][metric]
            for x in range(int(x0), int(x1), 8):
                draw.line([(x, sy(v)), (x + 4, sy(v))], fill=colour, width=1)
            draw.text((x0 + 6, sy(v) - 12), key, fill=colour)
    for name, rs in curves.items():
        for r in rs:        # one curve per training seed
            pts = [(sx(h["step"]), sy(h["eval"][dataset][metric])) for h in r["history"]]
            width = 3 if name in ("kiwi", "shipped") else 2
            if len(pts) > 1:
                draw.line(pts, fill=COLOURS[name], width=width)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=COLOURS[name])


def _bars(draw, box, runs: dict, title: str):
    """Final overall per variant (runs without curves, ``--eval-every 0``): a bar at the mean over training
    seeds, a dot per seed."""
    x0, y0, x1, y1 = box
    finals = {n: [r["final"]["all"]["overall"] for r in rs.values()] for n, rs in runs.items()}
    sy = _axes(draw, box, title, [v for vs in finals.values() for v in vs])
    slot = (x1 - x0) / max(1, len(finals))
    for i, (name, values) in enumerate(finals.items()):
        left, mean = x0 + i * slot + slot * 0.2, sum(values) / len(values)
        draw.rectangle([left, sy(mean), left + slot * 0.6, y1], fill=COLOURS[name])
        draw.text((left, sy(max(values)) - 18), f"{mean:.3f}", fill=(0, 0, 0))
        for v in values:
            draw.ellipse([left + slot * 0.3 - 3, sy(v) - 3, left + slot * 0.3 + 3, sy(v) + 3], outline=(0, 0, 0))


def plot(kiwi: dict | None, runs: dict, base: dict | None, path: Path) -> None:
    img = Image.new("RGB", (1180, 560), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 8), "Toy benchmark: held-out toy edits scored by the toy judge vs training steps "
                    "(20 sampling steps; dashed: baselines)", fill=(0, 0, 0))
    curves = {"shipped": [kiwi]} if kiwi else {}
    _panel(d, (60, 60, 540, 400), curves, base, "overall", "all",
           "shipped model (trainer checkpoints): overall (mean of image / video / reference)")
    if any(r["history"] for rs in runs.values() for r in rs.values()):
        _panel(d, (660, 60, 1140, 400), {n: list(rs.values()) for n, rs in runs.items()}, base, "overall", "all",
               "ablations (same budget, a curve per training seed): overall")
    else:
        _bars(d, (660, 60, 1140, 400), runs, "ablations (same budget): final overall, 50 sampling steps "
                                             "(dots: training seeds)")
    y = 440
    for i, name in enumerate(COLOURS):
        x = 60 + (i % 4) * 280
        yy = y + (i // 4) * 22
        d.rectangle([x, yy + 3, x + 14, yy + 11], fill=COLOURS[name])
        d.text((x + 20, yy), LABELS[name], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_report(out: Path) -> None:
    out = Path(out)
    base, kiwi = _load(out / "baselines.json"), _load(out / "shipped.json")
    runs = load_ablations(out / "ablations")
    text = ["## Shipped model vs baselines (held-out edits, 50 sampling steps)", "", main_table(kiwi, base), "",
            "## Shipped model per edit kind", "", kind_table(kiwi), "",
            "## Ablations (same training budget each; mean over training seeds, overall per seed in parentheses)", "", ablation_table(runs), ""]
    (out / "results.md").write_text("\n".join(text))
    plot(kiwi, runs, base, out / "toy_edit.png")


GALLERY = ((1_000_001, "remove"), (1_000_002, "background"), (1_000_003, "replace"), (1_000_004, "ref_replace"),
           (1_000_005, "recolour"), (1_000_006, "add"), (1_000_007, "ref_add"))


def gallery(model_folder, path: Path, examples=GALLERY, steps: int = 50) -> None:
    """Held-out edits by a saved toy model: per row source / edited / ground truth at frames 0, 8, 16
    (each 32×32 frame drawn ×4), with the instruction and the toy judge's overall score."""
    import numpy as np

    from comfy_kiwi.pipeline import EditSettings
    from comfy_kiwi.toy.data import example_frames, example_reference
    from comfy_kiwi.toy.judge import score_edit, to_uint8_frames
    from comfy_kiwi.toy.release import load_toy_pipeline
    from comfy_kiwi.toy.world import make_example
    pipe = load_toy_pipeline(model_folder)
    frames, scale, gap = (0, 8, 16), 4, 6
    cell = 32 * scale
    width = 3 * (len(frames) * cell + gap) + 40
    img = Image.new("RGB", (width, len(examples) * (cell + 40) + 30), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 6), "held-out toy edits: source | edited by the shipped toy model | ground truth (frames 0, 8, 16)",
           fill=(0, 0, 0))
    for row, (seed, kind) in enumerate(examples):
        ex = make_example(seed, (kind,))
        out = pipe.edit(example_frames(ex), ex.instruction, example_reference(ex),
                        EditSettings(steps=steps, progress=False))
        edited = to_uint8_frames(out.frames)
        s = score_edit(edited, ex)
        y = 30 + row * (cell + 40)
        d.text((10, y), f"{kind}: \"{ex.instruction}\" - compliance {s.compliance:.2f}, preservation {s.preservation:.2f}, "
                        f"overall {s.overall:.2f}", fill=(0, 0, 0))
        for col, video in enumerate((ex.source, edited, ex.target)):
            for k, f in enumerate(frames):
                tile = Image.fromarray(np.ascontiguousarray(video[f])).resize((cell, cell), Image.NEAREST)
                img.paste(tile, (20 + col * (len(frames) * cell + gap) + k * cell, y + 16))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
