"""``python -m comfy_kiwi edit --viva WEIGHTS`` / ``--rvedit WEIGHTS``: the command line's VIVA and RVEDiT paths.

Each loads its parts and calls its method's one whole-edit function (``methods.viva.edit``,
``methods.rvedit_streams.edit``), which run the same encode and sample calls as the nodes.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

METHOD_FLAGS = ("--imvideoedit", "--viva", "--rvedit")


def add_method_arguments(parser) -> None:
    g = parser.add_argument_group("VIVA and RVEDiT (trained weights from `python -m trainer train`)")
    g.add_argument("--viva", default=None, metavar="WEIGHTS",
                   help="VIVA weights (viva.safetensors); --model is a Kiwi-Edit release, or a Wan2.2 TI2V DiT "
                        "with --vae and --mllm; samples with CFG 2.0 on the instruction unless --cfg is given")
    g.add_argument("--mllm", default=None,
                   help="with --viva: the Qwen2.5-VL instructor folder the VIVA weights were trained with "
                        "(default: the release's mllm_encoder)")
    g.add_argument("--rvedit", default=None, metavar="WEIGHTS",
                   help="RVEDiT weights (rvedit.safetensors); --model is the Kiwi-Edit release the run started "
                        "from and --text-encoder the umT5 folder (X_ℓ = the instruction's umT5 rows)")
    g.add_argument("--split", type=int, default=None,
                   help="with --rvedit: L_s, the first block that sees [X_e; X_v; X_ℓ] (default: as trained)")


def selected(args) -> str | None:
    """The method flag given (``viva`` / ``rvedit``), None for the release and ImVideoEdit paths."""
    return "viva" if args.viva else "rvedit" if args.rvedit else None


def check_options(args) -> None:
    """Wrong combinations are named before anything loads; fills ``--cfg`` with the method's default."""
    given = [flag for flag in METHOD_FLAGS if getattr(args, flag[2:])]
    if len(given) > 1:
        raise InputError(f"{' and '.join(given)}: give one method's weights per edit.")
    method = selected(args)
    if args.cfg is None:
        from .methods.viva import VIVA_CFG
        args.cfg = VIVA_CFG if method == "viva" else 1.0
    for flag, value, owner in (("--mllm", args.mllm, "viva"), ("--split", args.split, "rvedit")):
        if value is not None and method != owner:
            raise InputError(f"{flag} only applies with --{owner} WEIGHTS.")
    if method is None:
        return
    if args.model is None:
        raise InputError(f"--{method} needs --model: the Kiwi-Edit release (or, for VIVA, the Wan2.2 TI2V DiT) "
                         "the weights were trained on.")
    if args.window is not None:
        raise InputError(f"--window is a Kiwi-Edit/InstructX option; --{method} edits the clip in one run.")
    if args.text_len is not None and method != "rvedit":
        raise InputError("--text-len applies with --imvideoedit or --rvedit (the umT5 context length).")
    release = _is_release(args.model)
    if method == "viva":
        if args.text_encoder:
            raise InputError("--viva reads the instruction through the Qwen2.5-VL instructor, not umT5; "
                             "drop --text-encoder.")
        if args.reference and len(args.reference) > 1:
            raise InputError("--viva takes at most one --reference image (the instructor and the DiT read one).")
        if release and args.vae:
            raise InputError(f"--model {args.model} is a Kiwi-Edit release with its own VAE; drop --vae.")
        missing = [] if release else [f for f, v in (("--vae", args.vae), ("--mllm", args.mllm)) if not v]
        if missing:
            raise InputError(f"--viva with the DiT file {args.model} also needs {' and '.join(missing)}: the Wan2.2 "
                             "VAE and the Qwen2.5-VL instructor folder (or give a Kiwi-Edit release as --model).")
    else:
        if not release:
            raise InputError(f"--rvedit needs --model = the Kiwi-Edit release folder the run started from "
                             f"(transformer/, mllm_encoder/, ...); {args.model} is not one.")
        if not args.text_encoder:
            raise InputError("--rvedit also needs --text-encoder: the umT5 folder of Wan (X_ℓ = the instruction's "
                             "umT5 rows, as in training).")
        if args.vae:
            raise InputError(f"--model {args.model} is a Kiwi-Edit release with its own VAE; drop --vae.")
        if args.reference:
            raise InputError("--rvedit edits from the instruction alone; drop --reference.")


def input_paths(args) -> dict:
    return {"--viva": args.viva, "--rvedit": args.rvedit, "--mllm": args.mllm}


def run(args, frames, refs, settings, dtype, device):
    """The edit of the method ``selected(args)``: an ``EditResult``."""
    from .pipeline import EditPipeline
    if selected(args) == "viva":
        from .methods import viva
        pipe = _viva_pipeline(args, dtype, device)
        weights = viva.read_viva(Path(args.viva).expanduser(), pipe.dit)
        return viva.edit(pipe, weights, frames, args.instruction, refs[0] if refs else None, settings)
    from .methods import rvedit_streams
    from .text_encoders.umt5 import UMT5TextEncoder
    pipe = EditPipeline.from_pretrained(args.model, dtype=dtype, device=device, attention=args.attention)
    path = Path(args.rvedit).expanduser()
    streams = rvedit_streams.load_rvedit(path, pipe.dit, args.split)
    pipe.mllm = rvedit_streams.trained_mllm(pipe.mllm, path)
    encoder = UMT5TextEncoder(Path(args.text_encoder).expanduser(), dtype=dtype, device=device)
    if encoder.width != pipe.dit.config.text_dim:
        raise InputError(f"--text-encoder {args.text_encoder} is {encoder.width} wide but the DiT reads "
                         f"{pipe.dit.config.text_dim}-wide umT5 features: use the umT5-XXL encoder of Wan.")
    return rvedit_streams.edit(pipe, streams, encoder, frames, args.instruction, settings, args.text_len)


def _viva_pipeline(args, dtype, device):
    import torch

    from .loading.dit_loader import load_dit
    from .loading.vae_loader import load_vae
    from .mllm.loader import load_mllm_encoder
    from .pipeline import EditPipeline
    if _is_release(args.model):
        pipe = EditPipeline.from_pretrained(args.model, dtype=dtype, device=device, attention=args.attention)
    else:
        home = torch.device("cpu") if torch.device(device).type != "cpu" else device   # one stage on the GPU at a time
        dit = load_dit(Path(args.model).expanduser(), dtype=dtype, device=home, attention=args.attention)
        vae = load_vae(Path(args.vae).expanduser(), dtype=dtype, device=home)
        if vae.config.z_dim != dit.config.in_dim:
            raise InputError(f"--vae {args.vae} makes {vae.config.z_dim}-channel latents but the DiT takes "
                             f"{dit.config.in_dim}: use the VAE that belongs to the DiT (Wan2.2).")
        pipe = EditPipeline(dit, vae, None, device=device)
    if args.mllm:
        pipe.mllm = load_mllm_encoder(Path(args.mllm).expanduser(), dtype=dtype, device="cpu")
    return pipe


def _is_release(model) -> bool:
    from .loading.inspect import is_release_folder
    return is_release_folder(Path(model).expanduser())
