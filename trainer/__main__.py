"""``python -m trainer <verb>`` (installed: ``comfy-kiwi-train <verb>``): ``train --config FILE.toml|PRESET
[--set SECTION.KEY=VALUE ...] [--resume PATH|auto]``, ``export`` and ``memory``."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from comfy_kiwi.errors import InputError

PRESETS = Path(__file__).resolve().parent / "presets"


def build_parser() -> argparse.ArgumentParser:
    from comfy_kiwi.errors import prog_name
    p = argparse.ArgumentParser(prog=prog_name(__package__), description="The comfy-kiwi trainer.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    t = sub.add_parser("train", help="train a method from a TOML config")
    _add_config_options(t)
    t.add_argument("--resume", default=None, help="a checkpoint folder, or 'auto' for the latest one")
    t.add_argument("--max-steps", type=int, default=None,
                   help="stop this run after N optimiser steps (a resumable checkpoint); the LR schedule still "
                        "spans schedule.max_steps")
    t.add_argument("--schedule-steps", type=int, default=None,
                   help="override schedule.max_steps, the length of the schedule (LR tail, final export)")
    t.set_defaults(run=_train)
    e = sub.add_parser("export", help="a Kiwi/InstructX run as a release folder, a Kiwi checkpoint or a ComfyUI LoRA")
    _add_config_options(e)
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


def _add_config_options(p) -> None:
    p.add_argument("--config", required=True,
                   help="the run's TOML file (its relative paths are relative to its folder), or the name of a "
                        "shipped preset, e.g. imvideoedit-wan2.1-1.3b (its relative paths are relative to the "
                        f"current folder; the presets are in {PRESETS})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set model.dit=/models/wan.safetensors "
                        "--set schedule.batch_size=2; VALUE is read as TOML (numbers, true/false, [lists]) or "
                        "else as text; relative paths are relative to the current folder")


def config_path(name: str) -> Path:
    """``--config``: an existing file, else a shipped preset by name (``kiwi-stage1`` or ``kiwi-stage1.toml``)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if path.parent == Path(".") and preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.toml")))
    raise InputError(f"--config {name}: no such file, and not a shipped preset ({names}).")


def parse_overrides(items: list[str]) -> dict:
    """``["model.dit=x", "schedule.max_steps=4"]`` → nested dict; path keys made absolute against the
    current folder (a path typed in a shell means that, not the preset's folder)."""
    from .config import PATH_KEYS
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(p.strip() for p in parts):
            raise InputError(f"--set {item!r}: write SECTION.KEY=VALUE, e.g. --set model.dit=/models/dit.safetensors.")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        if tuple(parts) in PATH_KEYS and isinstance(value, str) and value:
            value = os.path.abspath(os.path.expanduser(value))
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: {part} was already set to a value, not a table.")
        node[parts[-1]] = value
    return out


def _load(args, extra: dict | None = None):
    from .config import _merge, load_config
    overrides = parse_overrides(args.overrides)
    _merge(overrides, extra or {})
    path = config_path(args.config)
    # a shipped preset's relative paths (models/..., runs/...) mean the current folder, not the install's
    return load_config(path, overrides, base=Path.cwd() if path.parent == PRESETS else None)


def _train(args) -> int:
    from .loop import train
    for flag, value in (("--max-steps", args.max_steps), ("--schedule-steps", args.schedule_steps)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: give a number of optimiser steps ≥ 1.")
    schedule = {k: v for k, v in (("stop_at", args.max_steps), ("max_steps", args.schedule_steps)) if v is not None}
    cfg = _load(args, {"schedule": schedule} if schedule else None)
    if args.resume not in (None, "auto") and not Path(args.resume).exists():    # before models load and caches fill
        raise InputError(f"--resume {args.resume}: no such checkpoint folder; give a checkpoints/step-N folder "
                         "of this run, or 'auto' for its latest one.")
    from comfy_kiwi.output_paths import check_writable_folder
    check_writable_folder(cfg.output_dir, f"checkpoint.output_dir {cfg.output_dir}")
    result = train(cfg, resume=args.resume)
    print(f"done: step {result['step']}, outputs in {result['output_dir']}")
    return 0


def _export(args) -> int:
    from .export import export
    path = export(_load(args), args.to, args.out, args.weights, args.keep_dit_lora)
    print(f"wrote {path}")
    return 0


def _memory(args) -> int:
    from .memory import estimate, estimate_kiwi_lora, format_estimate, format_kiwi_lora
    for flag, value, low in (("--width", args.width, 16), ("--height", args.height, 16),
                             ("--batch-size", args.batch_size, 1), ("--frames", args.frames or 1, 1),
                             ("--rank", args.rank, 1), ("--block-swap", args.block_swap, 0)):
        if not low <= value <= 1 << 20:
            raise InputError(f"{flag} {value}: use a value from {low} to {1 << 20}.")
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
