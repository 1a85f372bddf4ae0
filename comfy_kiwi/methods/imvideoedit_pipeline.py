"""ImVideoEdit inference: source video + edited caption → edited video, on a frozen Wan2.1 DiT.

Stages (shared by ``python -m comfy_kiwi edit --imvideoedit`` and the ComfyUI nodes):

    prepare frames (frames.prepare_frames) → umT5 context of the caption, zero-padded to ``text_len``
    → VAE-encode the source → ImVideoEdit sampling (methods.imvideoedit.sample, modules applied only
    for this call) → VAE-decode.

The caption describes the *edited* video (the trainer's ``edited_prompt``), not an instruction.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import InputError
from ..pipeline import EditPipeline, EditResult, EditSettings
from ..text_encoders.umt5 import WAN_TEXT_LEN, pad_context
from . import imvideoedit as ive

WAN21_LATENT_CHANNELS = 16


def check_dit(dit) -> None:
    """ImVideoEdit runs on Wan2.1 T2V DiTs (16 latent channels, umT5 text path); anything else is refused."""
    c = dit.config
    if c.in_dim != WAN21_LATENT_CHANNELS:
        raise InputError(f"ImVideoEdit needs a Wan2.1 T2V DiT (16 latent channels), but this DiT takes {c.in_dim} "
                         "channels (a Wan2.2 / Kiwi-Edit 5B model?). Load e.g. Wan2.1-T2V-1.3B or -14B.")
    if dit.context_embedding == "none" or getattr(dit, "source_embedder", None) is not None:
        raise InputError("ImVideoEdit needs a plain Wan2.1 T2V DiT that reads umT5 text through its "
                         "text_embedding; this one is a Kiwi-Edit model (MLLM context, source embedder). "
                         "Load the base Wan2.1 T2V DiT the ImVideoEdit weights were trained on.")


def check_inputs(dit, source_latents: torch.Tensor, context: torch.Tensor) -> None:
    """Source latents from the Wan2.1 VAE and a umT5 context as wide as the DiT's text_dim."""
    c = dit.config
    if source_latents.dim() != 5 or source_latents.shape[0] != 1:
        raise InputError(f"ImVideoEdit edits one video at a time: source latents must be [1, C, f, h, w], got "
                         f"{tuple(source_latents.shape)}.")
    if source_latents.shape[1] != c.in_dim:
        raise InputError(f"the source latents have {source_latents.shape[1]} channels but this DiT takes {c.in_dim}: "
                         "encode the source with the Wan2.1 VAE (wan_2.1_vae.safetensors).")
    if context.dim() != 3 or context.shape[-1] != c.text_dim:
        raise InputError(f"the caption context is {tuple(context.shape)} but this DiT reads umT5 features of width "
                         f"{c.text_dim}: encode the caption with the umT5 encoder that belongs to the DiT.")


def check_settings(settings: EditSettings) -> None:
    if settings.cfg != 1.0:
        raise InputError(f"ImVideoEdit samples without classifier-free guidance; cfg must be 1.0, "
                         f"got {settings.cfg:g}.")
    if settings.denoise != 1.0:
        raise InputError(f"ImVideoEdit starts from pure noise; denoise must be 1.0, got {settings.denoise:g}.")


def caption_context(text_encoder, caption: str, text_len: int = WAN_TEXT_LEN) -> torch.Tensor:
    """The umT5 context [1, text_len, C] of the edited caption, zero-padded as in training."""
    if not isinstance(caption, str) or not caption.strip():
        raise InputError("the caption is empty; describe the edited video, e.g. \"a red car on a street\".")
    if int(text_len) < 1:
        raise InputError(f"text_len must be at least 1, got {text_len}.")
    rows = text_encoder.encode([caption.strip()])
    return pad_context([r[: int(text_len)] for r in rows], int(text_len))


def sample_imvideoedit(dit, weights, source_latents: torch.Tensor, context: torch.Tensor,
                       settings: EditSettings | None = None, while_applied=None) -> torch.Tensor:
    """Edited latents [1, C, f, h, w]; the modules are hooked into ``dit`` only during this call.

    ``while_applied``: a callable returning a context manager entered *after* the modules are attached,
    e.g. ``DiTHandle.applied`` for LoRAs. The order matters: attaching copies the blocks' attention
    layers, and a copy made while LoRA forward hooks sit on them would keep those hooks for good.
    """
    s = settings or EditSettings()
    check_dit(dit)
    check_settings(s)
    check_inputs(dit, source_latents, context)
    with ive.applied(dit, weights), (while_applied() if while_applied is not None else nullcontext()):
        return ive.sample(dit, source_latents, context.to(dit.dtype), steps=s.steps, shift=s.shift, seed=s.seed,
                          schedule=s.schedule, progress=s.progress, step_cache=s.step_cache)


def edit_with_imvideoedit(dit, vae, text_encoder, weights, frames: torch.Tensor, caption: str,
                          settings: EditSettings | None = None, text_len: int = WAN_TEXT_LEN) -> EditResult:
    """One whole edit. ``weights``: an ImVideoEdit safetensors path or its state dict (``read_weights``);
    ``frames`` [F, H, W, 3] in 0..1 (prepared here with ``settings``)."""
    s = settings or EditSettings()
    check_dit(dit)
    check_settings(s)
    if isinstance(weights, (str, Path)):
        weights = ive.read_weights(weights)
    pipe = EditPipeline(dit, vae, None, device=dit.device)
    frames = pipe.prepare(frames, s)
    context = caption_context(text_encoder, caption, text_len)
    source = pipe.encode_video(frames, tiled=s.vae_tiled)
    latents = sample_imvideoedit(dit, weights, source, context, s)
    return EditResult(pipe.decode(latents, tiled=s.vae_tiled), latents, context, s)


def load_parts(model, vae, text_encoder, weights, dtype: torch.dtype, device, attention: str = "auto"):
    """(dit, vae, text encoder, weights) from paths, each checked with a message naming the wrong file."""
    from ..loading.dit_loader import load_dit
    from ..loading.vae_loader import load_vae
    from ..text_encoders.umt5 import UMT5TextEncoder

    state = ive.read_weights(Path(weights).expanduser())
    dit = load_dit(Path(model).expanduser(), dtype=dtype, device=device, attention=attention)
    check_dit(dit)
    with ive.applied(dit, state):          # block count and widths checked now, before the VAE and umT5 load
        pass
    wan_vae = load_vae(Path(vae).expanduser(), dtype=dtype, device=device)
    if wan_vae.config.z_dim != dit.config.in_dim:
        raise InputError(f"--vae {vae} makes {wan_vae.config.z_dim}-channel latents but the DiT takes "
                         f"{dit.config.in_dim}: use the Wan2.1 VAE (wan_2.1_vae.safetensors).")
    encoder = UMT5TextEncoder(Path(text_encoder).expanduser(), dtype=dtype, device=device)
    if encoder.width != dit.config.text_dim:
        raise InputError(f"--text-encoder {text_encoder} is {encoder.width} wide but the DiT reads "
                         f"{dit.config.text_dim}-wide umT5 features: use the umT5-XXL encoder of Wan2.1.")
    return dit, wan_vae, encoder, state
