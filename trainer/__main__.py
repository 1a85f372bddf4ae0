"""``python -m trainer <verb>``: ``train --config FILE.toml [--resume PATH|auto]``, ``export`` and ``memory``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description="The comfy-kiwi trainer.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    t = sub.add_parser("train", help="train a method from a TOML config")
    t.add_argument("--config", required=True, help="TOML config (see trainer/presets/)")
    t.add_argument("--resume", default=None, help="a checkpoint folder, or 'auto' for the latest one")
    t.add_argument("--max-steps", type=int, default=None,
                   help="stop this run after N optimiser steps (a resumable checkpoint); the LR schedule still "
                        "spans schedule.max_steps")
    t.add_argument("--schedule-steps", type=int, default=None,
                   help="override schedule.max_steps, the length of the schedule (LR tail, final export)")
    t.set_defaults(run=_train)
    e = sub.add_parser("export", help="a Kiwi/InstructX run as a release folder, a Kiwi checkpoint or a ComfyUI LoRA")
    e.add_argument("--config", required=True, help="the run's TOML config")
    e.add_argument("--to", required=True, choices=["release", "kiwi", "comfyui-lora"])
    e.add_argument("--out", required=True, help="folder (release) or .safetensors file")
    e.add_argument("--weights", default=None,
                   help="kiwi.safetensors or a checkpoints/step-N folder (default: the run's latest checkpoint)")
    e.add_argument("--keep-dit-lora", action="store_true",
                   help="release: keep a DiT LoRA as dit_lora.safetensors instead of merging it")
    e.set_defaults(run=_export)
    m = sub.add_parser("memory", help="estimate training memory (ImVideoEdit, or a Kiwi DiT LoRA)")
    m.add_argument("--method", choices=["imvideoedit", "kiwi-lora"], default="imvideoedit")
    m.add_argument("--model", default=None, help="DiT preset (default: wan2.1-t2v-1.3b / wan2.2-ti2v-5b)")
    m.add_argument("--width", type=int, default=832)
    m.add_argument("--height", type=int, default=480)
    m.add_argument("--frames", type=int, default=None, help="kiwi-lora: frames per clip (default 81)")
    m.add_argument("--batch-size", type=int, default=1)
    m.add_argument("--no-checkpointing", action="store_true")
    m.add_argument("--rank", type=int, default=32, help="kiwi-lora: LoRA rank")
    m.add_argument("--storage", choices=["fp8", "bf16"], default="bf16", help="kiwi-lora: base DiT storage")
    m.add_argument("--block-swap", type=int, default=0, help="kiwi-lora: DiT blocks kept in CPU RAM")
    m.set_defaults(run=_memory)
    return p


def _train(args) -> int:
    from .config import load_config
    from .loop import train
    schedule = {k: v for k, v in (("stop_at", args.max_steps), ("max_steps", args.schedule_steps)) if v is not None}
    cfg = load_config(args.config, {"schedule": schedule} if schedule else None)
    result = train(cfg, resume=args.resume)
    print(f"done: step {result['step']}, outputs in {result['output_dir']}")
    return 0


def _export(args) -> int:
    from .config import load_config
    from .export import export
    path = export(load_config(args.config), args.to, args.out, args.weights, args.keep_dit_lora)
    print(f"wrote {path}")
    return 0


def _memory(args) -> int:
    from .memory import estimate, estimate_kiwi_lora, format_estimate, format_kiwi_lora
    if args.method == "kiwi-lora":
        print(format_kiwi_lora(estimate_kiwi_lora(args.model or "wan2.2-ti2v-5b", args.height, args.width,
                                                  args.frames or 81, args.batch_size, rank=args.rank,
                                                  storage=args.storage, block_swap=args.block_swap,
                                                  checkpointing=not args.no_checkpointing)))
        return 0
    print(format_estimate(estimate(args.model or "wan2.1-t2v-1.3b", args.height, args.width, args.batch_size,
                                   checkpointing=not args.no_checkpointing)))
    return 0


def main(argv=None) -> int:
    from comfy_kiwi.errors import run_verb
    return run_verb(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
