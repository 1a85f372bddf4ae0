"""``python -m trainer <verb>``: ``train --config FILE.toml [--resume PATH|auto]`` and ``memory``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description="The comfy-kiwi trainer.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    t = sub.add_parser("train", help="train a method from a TOML config")
    t.add_argument("--config", required=True, help="TOML config (see trainer/presets/)")
    t.add_argument("--resume", default=None, help="a checkpoint folder, or 'auto' for the latest one")
    t.add_argument("--max-steps", type=int, default=None, help="override schedule.max_steps")
    t.set_defaults(run=_train)
    m = sub.add_parser("memory", help="estimate training memory of ImVideoEdit on a Wan DiT")
    m.add_argument("--model", default="wan2.1-t2v-1.3b")
    m.add_argument("--width", type=int, default=832)
    m.add_argument("--height", type=int, default=480)
    m.add_argument("--batch-size", type=int, default=1)
    m.add_argument("--no-checkpointing", action="store_true")
    m.set_defaults(run=_memory)
    return p


def _train(args) -> int:
    from .config import load_config
    from .loop import train
    overrides = {"schedule": {"max_steps": args.max_steps}} if args.max_steps else None
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    print(f"done: step {result['step']}, outputs in {result['output_dir']}")
    return 0


def _memory(args) -> int:
    from .memory import estimate, format_estimate
    print(format_estimate(estimate(args.model, args.height, args.width, args.batch_size,
                                   checkpointing=not args.no_checkpointing)))
    return 0


def main(argv=None) -> int:
    from comfy_kiwi.cli import run_verb
    return run_verb(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
