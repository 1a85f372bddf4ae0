"""``python -m comfy_kiwi edit``: one whole edit from the shell, through :mod:`comfy_kiwi.methods.kiwi_edit` (a
Kiwi-Edit release; ``--window``: :mod:`comfy_kiwi.methods.instructx`'s long-video windows) or, with
``--imvideoedit``, through :mod:`comfy_kiwi.methods.imvideoedit_pipeline` (Wan2.1 + ImVideoEdit weights);
``--viva`` / ``--rvedit`` go through :mod:`comfy_kiwi.method_edit`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from . import method_edit
from .dtypes import COMPUTE_DTYPES, parse_dtype
from .errors import InputError
from .loading.registry import default_model_kind, kinds, model_folder_kind
from .output_paths import check_writable_folder, replacing
from .comfyui.placement import parse_device
from .sampling.schedule import MAX_STEPS
from .user_text import check_user_text


def add_edit_parser(sub) -> None:
    from .pipeline import EditSettings
    d = EditSettings()
    p = sub.add_parser("edit", help="edit a video (or image) with an instruction and an optional reference")
    p.add_argument("--model", default=None,
                   help="a Kiwi-Edit release folder (transformer/, vae/, mllm_encoder/, ...); with --imvideoedit, "
                        "the Wan2.1 T2V DiT (file or folder) the ImVideoEdit weights were trained on; with --viva / "
                        "--rvedit, the Kiwi-Edit release the weights were trained from; "
                        "default: the embedded toy model (edits toy-world videos, see docs/TOY_BENCHMARK.md)")
    p.add_argument("--video", required=True, help="source video (mp4, webm, ...) or image")
    p.add_argument("--instruction", required=True,
                   help='e.g. "replace the sofa with a brown leather one"; with --imvideoedit, the caption of the '
                        'edited video, e.g. "a brown leather sofa in a living room"')
    p.add_argument("--reference", action="append", default=None,
                   help="reference image (repeat for several); switches to reference-guided editing")
    p.add_argument("--out", required=True, help="output .mp4 (a one-frame edit may also be .png/.jpg)")
    p.add_argument("--steps", type=int, default=d.steps, help="denoising steps; the release uses 50")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the starting noise (torch.randn on a CPU generator): same seed, same edit")
    p.add_argument("--shift", type=float, default=d.shift,
                   help="σ schedule shift: σ = shift·s/(1+(shift−1)·s); larger spends more steps at high noise")
    p.add_argument("--cfg", type=float, default=None,
                   help=f"classifier-free guidance; 1.0 disables it (default {d.cfg:g}, the release; 2.0 with --viva)")
    p.add_argument("--schedule", choices=["kiwi", "diffusers"], default=d.schedule,
                   help="σ_min 0 (kiwi) or 0.003/1.002 (diffusers release)")
    p.add_argument("--denoise", type=float, default=d.denoise,
                   help="share of the schedule to run, in (0, 1]: below 1 starts from the source latents noised "
                        "to that level, keeping more of the source")
    p.add_argument("--frames", type=int, default=d.num_frames,
                   help="use the first N source frames (4k+1); 0 = all")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per-frame pixel budget (W·H)")
    p.add_argument("--fps", type=float, default=None, help="output fps (default: the source's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=COMPUTE_DTYPES, default=None,
                   help="compute dtype (default: bf16 on a GPU, fp16 where it lacks bf16, fp32 on the CPU)")
    p.add_argument("--attention", default="auto",
                   help="attention kernel: auto (the fastest installed), sdpa, xformers, flash, sage")
    p.add_argument("--tiled-vae", action="store_true", help="encode/decode the VAE in tiles (less memory)")
    p.add_argument("--block-swap", type=int, default=0,
                   help="DiT blocks kept in CPU RAM and moved to the GPU one at a time (less VRAM, slower; "
                        "default 0: none); see `python -m comfy_kiwi plan` for a value that fits your card")
    p.add_argument("--step-cache", type=float, default=d.step_cache, metavar="THRESHOLD",
                   help="skip the DiT blocks at steps that change little "
                        "(0 = off, exact; 0.04 mild, 0.1 fast, 0.2 aggressive)")
    p.add_argument("--window", type=int, default=None,
                   help="long videos (InstructX): edit in windows of this many frames (4k+1), each window "
                        "starting from the previous window's last edited frame; use with --frames 0 for all frames")
    p.add_argument("--save-latents", default=None,
                   help="also write the final latents (key 'latents') and context (key 'context') here")
    g = p.add_argument_group("ImVideoEdit (Wan2.1 T2V + trained Predict-Update modules)")
    g.add_argument("--imvideoedit", default=None, metavar="WEIGHTS",
                   help="ImVideoEdit weights (imvideoedit.blocks.N.* safetensors from the trainer); --model is "
                        "then a Wan2.1 T2V DiT and --vae / --text-encoder are required")
    g.add_argument("--vae", default=None,
                   help="with --imvideoedit: the Wan2.1 VAE file or folder; with --viva and a DiT file: the Wan2.2 VAE")
    g.add_argument("--text-encoder", default=None,
                   help="with --imvideoedit or --rvedit: the umT5 folder (transformers model + tokenizer, or a "
                        "diffusers root with text_encoder/ and tokenizer/)")
    g.add_argument("--text-len", type=int, default=None,
                   help="with --imvideoedit or --rvedit: context length the weights were trained with (trainer "
                        "data.text_len; default 512, as Wan)")
    method_edit.add_method_arguments(p)
    p.set_defaults(run=run_edit)


def run_edit(args) -> int:
    from safetensors.torch import save_file

    from .frames import load_image
    from .methods import instructx, kiwi_edit
    from .pipeline import EditResult, EditSettings
    from .video_io import read_video, write_video

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm", ".png", ".jpg", ".jpeg", ".webp"):
        raise InputError(f"--out {out}: use an .mp4 (or .mov/.mkv/.webm) file, or .png/.jpg for one frame.")
    check_user_text(args.instruction, "--instruction")
    if not args.instruction.strip():
        raise InputError("--instruction is empty; say what to change, e.g. \"make the car red\".")
    method_edit.check_options(args)
    _check_imvideoedit_options(args)
    _check_numbers(args)
    _check_output_paths(args)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)

    if args.window is not None and (args.imvideoedit or args.save_latents):
        raise InputError("--window edits window by window: it cannot be combined with --imvideoedit or "
                         "--save-latents (there is no single latent tensor).")
    if args.block_swap < 0:
        raise InputError(f"--block-swap must be ≥ 0, got {args.block_swap}.")
    max_frames = args.frames or None
    frames, fps = read_video(args.video, max_frames=max_frames)
    refs = [load_image(r) for r in args.reference] if args.reference else None
    settings = EditSettings(steps=args.steps, shift=args.shift, schedule=args.schedule, cfg=args.cfg,
                            seed=args.seed, denoise=args.denoise, max_pixels=args.max_pixels,
                            num_frames=max_frames, vae_tiled=args.tiled_vae, block_swap=args.block_swap,
                            step_cache=args.step_cache)
    if args.imvideoedit and args.model is None:
        raise InputError("--imvideoedit needs --model: the Wan2.1 T2V DiT the ImVideoEdit weights were trained on.")
    kind, model = _folder_kind(args, frames)          # kind None: a Kiwi-Edit release
    print(f"loading {model} on {device} ({str(dtype).removeprefix('torch.')})", file=sys.stderr)
    if args.imvideoedit:
        result = _run_imvideoedit(args, frames, settings, dtype, device)
    elif method_edit.selected(args):
        result = method_edit.run(args, frames, refs, settings, dtype, device)
    else:
        if kind is not None:
            pipe, frames = kind.load_pipeline(model, device, dtype), kind.edit.prepare_frames(frames)
        else:
            pipe = kiwi_edit.load(args.model, dtype=dtype, device=device, attention=args.attention,
                                  dit_device="cpu" if args.block_swap else None)
        if args.window is not None:
            edited = instructx.edit(pipe, frames, args.instruction, refs, settings, window=args.window)
            result = EditResult(edited, None, None, settings)
        elif kind is not None:
            result = pipe.edit(frames, args.instruction, refs, settings)      # the kind's own pipeline
        else:
            result = kiwi_edit.edit(pipe, frames, args.instruction, refs, settings)

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        from .frames import to_pil
        with replacing(out) as tmp:
            to_pil(result.frames[0]).save(tmp)          # the temporary name keeps the suffix: same format
    else:
        write_video(out, result.frames, args.fps or fps)       # writes a temporary file, then renames it
    if args.save_latents:
        latents = Path(args.save_latents)
        latents.parent.mkdir(parents=True, exist_ok=True)
        with replacing(latents) as tmp:
            save_file({"latents": result.latents.float().cpu().contiguous(),
                       "context": result.context.float().cpu().contiguous()}, str(tmp))
    report = {"out": str(out), "frames": int(result.frames.shape[0]),
              "size": [int(result.frames.shape[2]), int(result.frames.shape[1])],
              "latents": None if result.latents is None else list(result.latents.shape)}
    for other in kinds():                   # e.g. the toy judge's scores, for a toy video with a sidecar
        report.update(other.edit.report(args.video, args.instruction, refs, result.frames))
    print(json.dumps(report))
    return 0


def _folder_kind(args, frames):
    """The registered folder kind of --model (or the kind whose default model runs when --model is
    absent) and the model folder; ``(None, args.model)`` for a Kiwi-Edit release."""
    if args.model is not None:
        kind = model_folder_kind(args.model)
        return kind, (args.model if kind is None else Path(args.model).expanduser())
    kind = default_model_kind()
    if kind is None:
        raise InputError("--model is required: a Kiwi-Edit release folder (transformer/, vae/, mllm_encoder/, ...).")
    kind.edit.check_default_input(frames, args.video)
    return kind, kind.default_model


def _check_numbers(args) -> None:
    """Every number before anything loads: NaN, infinities and values no edit can use are named here."""
    def bad(flag, value, accepted):
        raise InputError(f"{flag} {value}: {accepted}.")
    for flag, value in (("--shift", args.shift), ("--cfg", args.cfg), ("--denoise", args.denoise),
                        ("--step-cache", args.step_cache)):
        if not math.isfinite(value):
            bad(flag, value, "must be a finite number")
    if args.step_cache < 0:
        bad("--step-cache", args.step_cache, "must be a threshold ≥ 0 (0 = off)")
    if not 1 <= args.steps <= MAX_STEPS:
        bad("--steps", args.steps, f"use 1 … {MAX_STEPS} denoising steps (the release uses 50)")
    if args.shift <= 0:
        bad("--shift", args.shift, "must be > 0 (the release uses 5)")
    if args.cfg < 0:
        bad("--cfg", args.cfg, "must be ≥ 0 (1.0 disables guidance)")
    if not 0 < args.denoise <= 1:
        bad("--denoise", args.denoise, "must be in (0, 1]")
    if not 0 <= args.seed < 2 ** 64:
        bad("--seed", args.seed, "must be in 0 … 2^64 − 1")
    if args.frames < 0:
        bad("--frames", args.frames, "must be ≥ 0 (0 = every frame)")
    if args.max_pixels < 32 * 32:
        bad("--max-pixels", args.max_pixels, "must be at least 1024 (32×32, the smallest frame)")
    if args.fps is not None and not (math.isfinite(args.fps) and 0 < args.fps <= 1000):
        bad("--fps", args.fps, "must be a frame rate in (0, 1000]")
    if args.window is not None and (args.window < 5 or args.window % 4 != 1):
        bad("--window", args.window, "must be 4k+1 frames and at least 5 (e.g. 81)")
    if args.text_len is not None and not 1 <= args.text_len <= 4096:
        bad("--text-len", args.text_len, "must be in 1 … 4096 (Wan uses 512)")


def _check_output_paths(args) -> None:
    """Outputs never replace an input, and their folder is writable, before minutes of work."""
    inputs = {"--video": args.video, "--model": args.model, "--imvideoedit": args.imvideoedit, "--vae": args.vae}
    inputs.update({"--reference": r for r in args.reference or []})
    inputs.update(method_edit.input_paths(args))
    outputs = {"--out": args.out}
    if args.save_latents:
        if Path(args.save_latents).suffix.lower() != ".safetensors":
            raise InputError(f"--save-latents {args.save_latents}: use a .safetensors file name.")
        outputs["--save-latents"] = args.save_latents
    for flag, path in outputs.items():
        path = Path(path).expanduser()
        for other, given in inputs.items():
            if given and _same_file(path, Path(given).expanduser()):
                raise InputError(f"{flag} {path} is the {other} input; write the result to another file.")
        if path.is_dir():
            raise InputError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'edited.mp4'}.")
        check_writable_folder(path.absolute().parent, f"{flag} {path}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _check_imvideoedit_options(args) -> None:
    """--vae / --text-encoder / --text-len belong to --imvideoedit; the release path takes none of them."""
    given = [flag for flag, value in (("--vae", args.vae), ("--text-encoder", args.text_encoder),
                                      ("--text-len", args.text_len)) if value is not None]
    if not args.imvideoedit:
        if method_edit.selected(args):
            return                                  # method_edit.check_options checked them
        if given:
            raise InputError(f"{', '.join(given)} only apply with --imvideoedit WEIGHTS; a Kiwi-Edit release folder "
                             "(--model) brings its own VAE and MLLM encoder.")
        return
    missing = [flag for flag, value in (("--vae", args.vae), ("--text-encoder", args.text_encoder)) if not value]
    if missing:
        raise InputError(f"--imvideoedit also needs {' and '.join(missing)}: the Wan2.1 VAE file "
                         "(wan_2.1_vae.safetensors) and the umT5 text-encoder folder of Wan2.1.")
    if args.reference:
        raise InputError("--imvideoedit does not take --reference images; describe the edited video in "
                         "--instruction instead.")
    if args.cfg != 1.0 or args.denoise != 1.0:
        raise InputError("--imvideoedit samples without guidance from pure noise; leave --cfg and --denoise at 1.0.")


def _run_imvideoedit(args, frames, settings, dtype, device):
    from .methods.imvideoedit_pipeline import edit_with_imvideoedit, load_parts
    from .text_encoders.umt5 import WAN_TEXT_LEN

    dit, vae, encoder, weights = load_parts(args.model, args.vae, args.text_encoder, args.imvideoedit, dtype,
                                            device, attention=args.attention)
    return edit_with_imvideoedit(dit, vae, encoder, weights, frames, args.instruction, settings,
                                 text_len=args.text_len or WAN_TEXT_LEN)
