"""``python -m comfy_kiwi judge``: score one edit with a local Qwen2.5-VL judge; prints JSON.

Exit status: 0 when the judge's answer was scored, 3 when every attempt failed to parse (the JSON
then has ``"ok": false``, the answers and the reasons), 2 for input errors (from the CLI wrapper).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_judge_parser", "run_judge"]

_DTYPES = ("bf16", "fp16", "fp32")


def add_judge_parser(subparsers) -> argparse.ArgumentParser:
    from .rubrics import OPENVE_CATEGORIES, REFVIE_CATEGORIES
    p = subparsers.add_parser(
        "judge", help="score an edit with a local Qwen2.5-VL judge and a published rubric (JSON out)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vlm", required=True, help="local Qwen2.5-VL folder (config.json, model*.safetensors, tokenizer)")
    p.add_argument("--source", required=True, help="source video (or image)")
    p.add_argument("--edited", required=True, help="edited video (or image)")
    p.add_argument("--instruction", required=True, help="the editing instruction")
    p.add_argument("--reference", default=None, help="reference image (needed by the refvie rubrics)")
    p.add_argument("--rubric", default="vie-bench",
                   help="vie-bench | refvie | openve | imvideoedit-100 | rvedit-100 (or refvie-subject, "
                        "openve-local_add, ...)")
    p.add_argument("--category", default=None,
                   help=f"openve: {', '.join(OPENVE_CATEGORIES)}; refvie: {', '.join(REFVIE_CATEGORIES)}")
    p.add_argument("--attempts", type=int, default=3, help="answers to try before reporting a failure")
    p.add_argument("--seed", type=int, default=0, help="seed of attempt 1 (attempt i uses seed+i-1)")
    p.add_argument("--temperature", type=float, default=0.0, help="first attempt (0 = greedy)")
    p.add_argument("--retry-temperature", type=float, default=0.7, help="later attempts")
    p.add_argument("--max-new-tokens", type=int, default=512)
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--cap", dest="cap", action="store_true", default=None,
                     help="enforce 'later scores may not exceed the first' (default: the rubric's rule)")
    cap.add_argument("--no-cap", dest="cap", action="store_false", help="never apply the cap rule")
    p.add_argument("--truncate-decimals", action="store_true", help="int(float(score)) as the released OpenVE script")
    p.add_argument("--frames", type=int, default=None, help="read at most the first N frames of each video")
    p.add_argument("--max-frames", type=int, default=16, help="frames shown to the judge per video (uniform)")
    p.add_argument("--max-pixels", type=int, default=262144, help="pixel budget per video frame")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=_DTYPES, default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.set_defaults(run=run_judge)
    return p


def run_judge(args) -> int:
    from ..dtypes import parse_dtype
    from ..frames import load_image
    from ..video_io import read_video
    from .vlm import VLMSettings, load_vlm
    from .vlm_judge import JudgeSettings, judge_edit

    dtype = parse_dtype(args.dtype)
    if args.device:
        from ..comfyui.placement import parse_device
        parse_device(args.device)          # a device this machine lacks: one clear line before any loading
    source, source_fps = read_video(args.source, max_frames=args.frames)
    edited, edited_fps = read_video(args.edited, max_frames=args.frames)
    reference = load_image(args.reference) if args.reference else None
    settings = JudgeSettings(attempts=args.attempts, seed=args.seed, temperature=args.temperature,
                             retry_temperature=args.retry_temperature, max_new_tokens=args.max_new_tokens,
                             enforce_cap=args.cap, truncate_decimals=args.truncate_decimals)
    vlm = load_vlm(args.vlm, dtype=dtype, device=args.device,
                   settings=VLMSettings(max_frames=args.max_frames, max_pixels_per_frame=args.max_pixels))
    result = judge_edit(vlm, source, edited, args.instruction, reference, args.rubric, args.category, settings,
                        source_fps=source_fps, edited_fps=edited_fps)
    out = result.to_dict()
    out.update(source=args.source, edited=args.edited, reference=args.reference, instruction=args.instruction)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    if not result.ok:
        print(f"judge failed: {' | '.join(result.errors)}", file=sys.stderr)
        return 3
    return 0
