"""``python -m comfy_kiwi plan``: print the memory plan of an edit (see ``memory/planner.py``)."""

from __future__ import annotations

import json

from ..errors import InputError
from .planner import MODELS, format_plan, plan


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like WIDTHxHEIGHT (e.g. 1280x704), got {text!r}.") from None
    return w, h


def _run(args) -> int:
    w, h = parse_size(args.size)
    p = plan(args.model, w, h, args.frames, args.vram, cfg=args.cfg, reference=args.reference,
             block_swap=args.block_swap, fp8=args.fp8, steps=args.steps, step_cache=args.step_cache)
    if args.json:
        print(json.dumps({"fits": p.fits, "tokens": p.tokens, "settings": p.settings,
                          "stages": [{"name": s.name, "peak_bytes": s.peak, "arithmetic": s.lines}
                                     for s in p.stages], "time": p.time}, indent=2))
    else:
        print(format_plan(p))
    return 0 if p.fits else 1


def add_plan_parser(subparsers) -> None:
    sp = subparsers.add_parser("plan", help="estimate peak memory per stage and the settings that fit a GPU")
    sp.add_argument("--model", required=True, choices=sorted(MODELS), help="the Wan model the edit runs on")
    sp.add_argument("--size", required=True, help="video size WIDTHxHEIGHT, e.g. 1280x704")
    sp.add_argument("--frames", type=int, default=81, help="frame count, 4k+1 (default 81)")
    sp.add_argument("--vram", type=float, required=True, help="GPU memory in GiB")
    sp.add_argument("--cfg", action="store_true", help="classifier-free guidance (batch 2 in the DiT)")
    sp.add_argument("--reference", action="store_true", help="a reference image (Kiwi-Edit 5B only)")
    sp.add_argument("--block-swap", type=int, default=None, help="fix the swapped block count instead of searching")
    fp8 = sp.add_mutually_exclusive_group()
    fp8.add_argument("--fp8", dest="fp8", action="store_true", default=None, help="force fp8 block weights")
    fp8.add_argument("--no-fp8", dest="fp8", action="store_false", help="never use fp8")
    sp.add_argument("--steps", type=int, default=50, help="sampling steps (default 50, the release)")
    sp.add_argument("--step-cache", type=float, default=0.0, metavar="THRESHOLD",
                    help="the edit's --step-cache threshold (0 = off): its memory and the forwards it may skip")
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.set_defaults(run=_run)
