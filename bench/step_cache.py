"""Step cache: DiT forwards saved vs quality, for thresholds from 0 (off) to aggressive.

    python bench/step_cache.py                      # ~4 min on one core
    python bench/step_cache.py --count 4 --thresholds 0,0.05,0.2

Two measurements per threshold, each against the uncached run of the same inputs and noise:

- **toy**: held-out toy edits (seed split "test", ``--count`` per dataset: image / video / reference)
  edited by the shipped toy model (``comfy_kiwi/toy/default_model``) with 50 Euler steps, one edit at a
  time (the cache decides per DiT call, so batching edits would make their decisions jointly), scored
  by the toy judge: overall and per edit kind, and the share of DiT forwards (block runs) skipped.
- **tiny release**: the tiny random-weight Kiwi-Edit release (``comfy_kiwi.testing.tiny_release``)
  through ``sample_edit`` (50 steps, with a reference image), in float32 and in bfloat16: the relative
  latent error mean|x − x₀| / mean|x₀| against the uncached latents of the same dtype.

Writes ``--out``/results.json and results.md, and the plot ``--plot`` (PNG drawn with PIL).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_THRESHOLDS = "0,0.02,0.04,0.06,0.08,0.1,0.15,0.2,0.3,0.5"


def toy_rows(thresholds: list[float], count: int, seed: int) -> list[dict]:
    from comfy_kiwi.toy.evaluate import evaluate
    from comfy_kiwi.toy.release import load_toy_pipeline
    from toy_edit import eval_pools
    pipe = load_toy_pipeline(ROOT / "comfy_kiwi" / "toy" / "default_model")
    pools = eval_pools(pipe.mllm, count)
    rows = []
    for th in thresholds:
        log, start = [], time.time()
        scores = evaluate(pipe.dit, pipe.mllm, pools, "sigma_add", steps=50, seed=seed, batch=1, step_cache=th,
                          cache_log=log)
        calls = sum(c.forwards for c in log) or 50 * sum(len(p) for p in pools.values())
        skipped = sum(c.skipped for c in log)
        rows.append({"threshold": th, "forwards": calls, "skipped": skipped, "saved": skipped / calls,
                     "all": scores["all"], "by_kind": {k: v["overall"] for k, v in scores["by_kind"].items()},
                     "seconds": time.time() - start})
        print(f"toy  threshold {th:<5g} saved {skipped / calls:6.1%}  overall {scores['all']['overall']:.4f}  "
              f"({time.time() - start:.0f} s)", flush=True)
    return rows


def tiny_release_rows(thresholds: list[float]) -> list[dict]:
    import torch

    from comfy_kiwi.pipeline import EditPipeline, EditSettings, sample_edit
    from comfy_kiwi.testing.tiny_release import tiny_video_frames, write_tiny_kiwi_release
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        with tempfile.TemporaryDirectory() as tmp:
            pipe = EditPipeline.from_pretrained(write_tiny_kiwi_release(Path(tmp) / "release"), dtype=dtype,
                                                device="cpu")
        frames = pipe.prepare(tiny_video_frames(9, 72, 88), EditSettings())
        ref = tiny_video_frames(1, 40, 50, seed=3)
        cond = pipe.encode_instruction("make the sky red", frames, ref)
        source = pipe.encode_source(frames, ref)
        base, name = None, str(dtype).removeprefix("torch.")
        for th in thresholds:
            seen = []
            settings = EditSettings(steps=50, progress=False, step_cache=th)
            latents = _sample_logged(sample_edit, seen, pipe.dit, cond, source, settings).float()
            base = latents if th == 0 else base
            err = float((latents - base).abs().mean() / base.abs().mean())
            skipped = seen[0].skipped if seen else 0
            rows.append({"dtype": name, "threshold": th, "saved": skipped / 50, "latent_error": err})
            print(f"tiny {name} threshold {th:<5g} saved {skipped / 50:6.1%}  latent error {err:.4f}", flush=True)
    return rows


def _sample_logged(sample_edit, seen: list, *args):
    """``sample_edit`` with the run's StepCache kept in ``seen`` (it is otherwise internal to the run)."""
    from comfy_kiwi.sampling import step_cache as module
    original = module.StepCache.__post_init__

    def keep(self):
        original(self)
        seen.append(self)
    module.StepCache.__post_init__ = keep
    try:
        return sample_edit(*args)
    finally:
        module.StepCache.__post_init__ = original


def markdown(toy: list[dict], tiny: list[dict]) -> str:
    base = toy[0]["all"]["overall"]
    kinds = list(toy[0]["by_kind"])
    err = {(r["dtype"], r["threshold"]): r for r in tiny}
    lines = ["| threshold | toy: DiT forwards saved | toy overall (vs off) | compliance | preservation | temporal | "
             "cleanliness | "
             + " | ".join(f"overall {k}" for k in kinds) + " | tiny release fp32: saved / latent error | "
             "tiny release bf16: saved / latent error |",
             "|---" * (9 + len(kinds)) + "|"]
    for r in toy:
        a, th = r["all"], r["threshold"]
        rel = (a["overall"] / base - 1) if base else 0.0
        t1, t2 = err.get(("float32", th)), err.get(("bfloat16", th))
        cell = lambda t: "–" if t is None else f"{t['saved']:.0%} / {t['latent_error']:.4f}"   # noqa: E731
        lines.append(f"| {th:g} | {r['skipped']}/{r['forwards']} = **{r['saved']:.1%}** | "
                     f"{a['overall']:.4f} ({rel:+.1%}) | {a['compliance']:.3f} | {a['preservation']:.3f} | "
                     f"{a['temporal']:.3f} | {a['cleanliness']:.3f} | "
                     + " | ".join(f"{r['by_kind'][k]:.3f}" for k in kinds)
                     + f" | {cell(t1)} | {cell(t2)} |")
    return "\n".join(lines)


def plot(toy: list[dict], tiny: list[dict], path: Path) -> None:
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (1080, 460), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 8), "Step cache: quality vs share of DiT forwards skipped (labels: threshold; 50 Euler steps)",
           fill=(0, 0, 0))
    base = toy[0]["all"]["overall"]
    toy_pts = [(r["saved"], 100 * r["all"]["overall"] / base if base else 0.0, r["threshold"]) for r in toy]
    lo = min(90.0, min(y for _, y, _ in toy_pts) - 2)
    _panel(d, (70, 60, 510, 400), toy_pts, (lo, 102.0), "toy judge overall, % of uncached (shipped toy model)",
           (200, 40, 40), guides=(98.0, 0.4))
    top = max([r["latent_error"] for r in tiny] + [0.01]) * 1.1
    for dtype, colour in (("float32", (40, 90, 210)), ("bfloat16", (40, 140, 60))):
        pts = [(r["saved"], r["latent_error"], r["threshold"]) for r in tiny if r["dtype"] == dtype]
        _panel(d, (600, 60, 1040, 400), pts, (0.0, top), "tiny release: relative latent error vs uncached",
               colour, frame=dtype == "float32")
    d.text((600, 438), "blue: float32   green: bfloat16 (random-weight tiny DiT, with reference)", fill=(0, 0, 0))
    d.text((70, 438), "dashed: 98 % of the uncached score and 40 % of the forwards saved", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _panel(d, box, pts, yrange, title, colour, frame=True, guides=None):
    x0, y0, x1, y1 = box
    lo, hi = yrange
    sx = lambda v: x0 + (x1 - x0) * v                                           # noqa: E731
    sy = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)                        # noqa: E731
    if frame:
        d.rectangle(box, outline=(0, 0, 0))
        d.text((x0, y0 - 16), title, fill=(0, 0, 0))
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            d.line([(x0, sy(v)), (x1, sy(v))], fill=(228, 228, 228))
            d.text((x0 - 52, sy(v) - 6), f"{v:.3g}", fill=(0, 0, 0))
            d.text((sx(i / 4) - 10, y1 + 4), f"{25 * i}%", fill=(0, 0, 0))
        d.text((x1 - 120, y1 + 18), "DiT forwards saved", fill=(0, 0, 0))
    if guides:
        gy, gx = guides
        for x in range(int(x0), int(x1), 8):
            d.line([(x, sy(gy)), (x + 4, sy(gy))], fill=(120, 120, 120))
        for y in range(int(y0), int(y1), 8):
            d.line([(sx(gx), y), (sx(gx), y + 4)], fill=(120, 120, 120))
    xy = [(sx(s), sy(min(max(v, lo), hi))) for s, v, _ in pts]
    if len(xy) > 1:
        d.line(xy, fill=colour, width=2)
    groups = []                       # thresholds landing on the same point share one label "a-b"
    for (x, y), (_, _, th) in zip(xy, pts):
        if groups and abs(groups[-1][0] - x) < 2 and abs(groups[-1][1] - y) < 2:
            groups[-1][3] = th
        else:
            groups.append([x, y, th, th])
    for x, y, first, last in groups:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.text((x + 4, y - 14), f"{first:g}" if first == last else f"{first:g}-{last:g}", fill=colour)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--thresholds", default=DEFAULT_THRESHOLDS, help="comma-separated; the first must be 0")
    p.add_argument("--count", type=int, default=6, help="held-out toy edits per dataset (image, video, reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "step_cache"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "images" / "step_cache.png"))
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if thresholds[0] != 0:
        p.error("the first threshold must be 0 (the uncached reference)")
    tiny = tiny_release_rows(thresholds)
    toy = toy_rows(thresholds, args.count, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"toy": toy, "tiny_release": tiny, "count": args.count}, indent=1))
    table = markdown(toy, tiny)
    (out / "results.md").write_text(table + "\n")
    plot(toy, tiny, Path(args.plot))
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
