"""The edit pipeline: prepare → MLLM encode → VAE-encode source (+ reference) → sample → decode.

One object serves the ComfyUI nodes (stage by stage), the command line and the trainer's sample
edits (whole). Defaults reproduce the Kiwi-Edit release: 50 Euler steps, shift 5, no CFG, noise from
a CPU float32 generator seeded with ``seed``; see ``EditSettings``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

import torch

from .comfyui import adapter as comfy_adapter
from .errors import CheckpointError, InputError
from .frames import frames_to_vae, pad_reference, prepare_frames, vae_to_frames
from .comfyui.placement import on_device
from .sampling import flow_sigmas, noise_like, sample_euler, sigma_to_timestep, start_latents
from .sampling.step_cache import step_cache


@dataclass
class EditSettings:
    """Sampling and preparation settings. Defaults = the Kiwi-Edit release (see README)."""

    steps: int = 50
    shift: float = 5.0
    schedule: str = "kiwi"          # σ_min 0 ("kiwi", training/benchmark code) or "diffusers" (0.003/1.002)
    cfg: float = 1.0                # 1.0 = no guidance (the release); VIVA uses 2.0 on the instruction
    seed: int = 0
    denoise: float = 1.0            # < 1 starts from the noised source latents
    max_pixels: int = 921600        # 1280×720 budget of the release's benchmark
    num_frames: int | None = 81     # first N frames; None = all
    frame_mode: str = "trim"        # non-4k+1 counts: "trim" (with a warning) or "error"
    vae_tiled: bool = False
    kv_cache: bool = True           # cross-attention K/V of the context computed once per run (exact)
    block_swap: int = 0             # DiT blocks kept in CPU RAM, brought to the compute device one at a time
    step_cache: float = 0.0         # > 0: skip the DiT blocks at steps that change little (sampling/step_cache.py)
    progress: bool = True

    def replace(self, **kw) -> "EditSettings":
        return replace(self, **kw)


class StepContext(Protocol):
    """The per-step context hook of :class:`EditConditioning`: called at every sampling step with the step's
    timestep ``t`` [B] (the DiT's dtype, on the compute device) and the branch; returns the context [B, L, dim]
    on ``t``'s device (the sampler casts it to the DiT's dtype)."""

    def __call__(self, t: torch.Tensor, negative: bool) -> torch.Tensor: ...


@dataclass
class EditConditioning:
    """DiT context tokens of one instruction (and of the empty instruction, for CFG)."""

    context: torch.Tensor                    # [1, L, dim]
    negative: torch.Tensor | None = None     # [1, L', dim] — empty instruction, same visual inputs
    # A context that changes with the timestep: ``step_context(t, negative)`` → the DiT context of that step
    # for the positive (``negative=False``) or negative branch, where ``context``/``negative`` hold what it is
    # made from. The sampler then calls the DiT once per branch (CFG as two calls; the lengths may differ) and
    # keeps no cross-attention K/V cache. A method supplies it (VIVA: ``methods.viva.RefinedContext``).
    step_context: StepContext | None = None
    # Per-block contexts fixed for the whole run: ``routing.routed(dit, context)`` installs them for the run
    # (RVEDiT: ``methods.rvedit_streams.RoutedStreams``); the K/V cache stays exact.
    routing: object | None = None


@dataclass
class SourceConditioning:
    """What the sampler gets besides the context: source latents and optional reference latents."""

    source_latents: torch.Tensor | None                 # [1, C, f, h, w] (None: plain text-to-video)
    reference_latents: torch.Tensor | None = None       # [1, C, n_refs, h, w]
    reference_first: bool | None = None                 # None = the model's default (ref_pad_first)
    # False: the latents only size the run (and seed denoise < 1); the DiT gets no source input (e.g. RVEDiT
    # on a plain Wan DiT, where the source reaches the deep blocks as X_v tokens instead)
    feed_dit: bool = True

    @property
    def latent_shape(self) -> tuple[int, ...]:
        if self.source_latents is None:
            raise InputError("no source latents: the sampler needs the encoded source video for its size.")
        return tuple(self.source_latents.shape)


@dataclass
class EditResult:
    frames: torch.Tensor                  # [F, H, W, 3] in 0..1
    latents: torch.Tensor | None          # [1, C, f, h, w] (None for window-by-window long videos)
    context: torch.Tensor | None          # [1, L, dim]
    settings: EditSettings = field(default_factory=EditSettings)


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The compute dtype of a module: its first floating-point, non-fp8 parameter's dtype."""
    for p in module.parameters():
        if p.dtype.is_floating_point and p.dtype.itemsize > 1:
            return p.dtype
    return torch.float32


def model_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _check_sampling_inputs(cond, source, settings: EditSettings) -> None:
    """What no sampling run can use, named before the first step (NaN latents would otherwise give a
    black video; a seed beyond 64 bits an overflow from inside torch)."""
    if not isinstance(cond, EditConditioning) or not isinstance(source, SourceConditioning):
        raise InputError("the sampler needs the conditioning of an encoder node and the source of an encode-source "
                         f"node; got {type(cond).__name__} and {type(source).__name__}.")
    if not 0 <= int(settings.seed) < 2 ** 64:
        raise InputError(f"seed must be in 0 … 2^64 − 1, got {settings.seed}.")
    if not (math.isfinite(settings.cfg) and settings.cfg >= 0):
        raise InputError(f"cfg must be a finite number ≥ 0 (1.0 disables guidance), got {settings.cfg!r}.")
    for name, t in (("source latents", source.source_latents), ("reference latents", source.reference_latents),
                    ("conditioning", cond.context), ("negative conditioning", cond.negative)):
        if isinstance(t, torch.Tensor) and not torch.isfinite(t).all():
            raise InputError(f"the {name} hold NaN or infinite values; encode them again from valid frames.")


def sample_edit(dit, cond: EditConditioning, source: SourceConditioning, settings: EditSettings,
                init_latents: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Run the flow-match sampler of one edit; returns the edited latents [1, C, f, h, w].

    ``device`` is where the DiT computes (default: where its weights are); with ``settings.block_swap``
    the DiT may wait in CPU RAM and only its blocks visit ``device`` one at a time."""
    _check_sampling_inputs(cond, source, settings)
    dtype = model_dtype(dit)
    device = torch.device(device) if device is not None else model_device(dit)
    shape = source.latent_shape
    sigmas = flow_sigmas(settings.steps, settings.shift, settings.schedule, settings.denoise)
    noise = noise_like(shape, settings.seed, dtype=dtype, device=device)
    if settings.denoise < 1.0 and init_latents is None:
        init_latents = source.source_latents  # edit-strength mode starts from the source itself
    x = start_latents(noise, float(sigmas[0]), None if init_latents is None else init_latents.to(device, dtype))

    use_cfg = settings.cfg != 1.0
    if use_cfg and cond.negative is None:
        raise InputError("cfg is not 1.0 but the conditioning has no negative (empty-instruction) "
                         "encoding; encode with cfg enabled or set cfg to 1.0.")
    per_step = cond.step_context is not None
    if per_step and cond.routing is not None:
        raise InputError("a per-step context and per-block routing cannot be combined in one sampler run.")
    src = None if source.source_latents is None or not source.feed_dit else source.source_latents.to(device, dtype)
    ref = None if source.reference_latents is None else source.reference_latents.to(device, dtype)
    if per_step:
        velocity, ctx = _per_step_velocity(dit, cond.step_context, src, ref, source.reference_first, settings.cfg,
                                           device, dtype), None
    else:
        velocity, ctx = _batched_velocity(dit, cond, src, ref, source.reference_first, settings.cfg, device, dtype)

    from .memory import block_swap, kv_cache
    swap = block_swap(dit, settings.block_swap, compute_device=device) if settings.block_swap else nullcontext()
    # routing: each block's context is fixed for the whole run, so the K/V cache stays exact; a per-step context
    # changes the cross-attention K/V at every step: no cache
    routed = cond.routing.routed(dit, ctx) if cond.routing is not None else nullcontext()
    with swap, routed, kv_cache(dit, enabled=settings.kv_cache and not per_step), \
            step_cache(dit, settings.step_cache) as cache:      # with CFG as two calls: one cache state per branch
        return sample_euler(velocity, x, sigmas, progress=settings.progress, step_cache=cache)


def _batched_velocity(dit, cond: EditConditioning, src, ref, reference_first, cfg: float, device, dtype):
    """v(x, σ) with one context for the whole run; with CFG the negative and positive branches run as one batch
    (their contexts must have one length). Also returns that context (what per-block routing installs)."""
    use_cfg = cfg != 1.0
    ctx = cond.context.to(device, dtype)
    if use_cfg:
        neg = cond.negative.to(device, dtype)
        if neg.shape[1] != ctx.shape[1]:
            raise InputError(f"positive and negative contexts have different lengths "
                             f"({ctx.shape[1]} vs {neg.shape[1]}); both must come from the same visual inputs.")
        ctx = torch.cat([neg, ctx])            # one batch: [negative; positive]
        src = None if src is None else torch.cat([src, src])
        ref = None if ref is None else torch.cat([ref, ref])

    def velocity(x: torch.Tensor, sigma: float, i: int) -> torch.Tensor:
        xb = torch.cat([x, x]) if use_cfg else x
        t = sigma_to_timestep(sigma, xb.shape[0], dtype, device)
        v = dit(xb, t, ctx, source_latents=src, source_scale=sigma,
                reference_latents=ref, reference_first=reference_first)
        if use_cfg:
            v_neg, v_pos = v.chunk(2)
            return v_neg + cfg * (v_pos - v_neg)
        return v
    return velocity, ctx


def _per_step_velocity(dit, step_context: StepContext, src, ref, reference_first, cfg: float, device, dtype):
    """v(x, σ) with the context of every step from ``step_context``; with CFG (on the context only: source and
    reference are the same in both branches) the positive and negative branches are two DiT calls."""
    def call(negative: bool, x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        ctx = step_context(t, negative).to(dtype)
        return dit(x, t, ctx, source_latents=src, source_scale=sigma, reference_latents=ref,
                   reference_first=reference_first)

    def velocity(x: torch.Tensor, sigma: float, i: int) -> torch.Tensor:
        t = sigma_to_timestep(sigma, x.shape[0], dtype, device)
        v = call(False, x, t, sigma)
        if cfg != 1.0:
            v_neg = call(True, x, t, sigma)
            return v_neg + cfg * (v - v_neg)
        return v
    return velocity


class EditPipeline:
    """All parts of an edit: DiT (with source/reference embedders), VAE and MLLM encoder.

    Each stage (MLLM encode, VAE encode, sampling, VAE decode) runs its own model on ``device``; a model whose
    home is the CPU (``from_pretrained(offload=True)``, the default on a GPU) is moved there for its stage only
    (``placement.on_device``), so one stage's weights are on the GPU at a time — what ``plan`` assumes. With
    block swap the DiT stays home and only its swapped blocks move."""

    def __init__(self, dit, vae, mllm=None, device: torch.device | str | None = None,
                 offload_mllm: bool | None = None):
        self.dit, self.vae, self.mllm = dit, vae, mllm
        self.device = torch.device(device) if device is not None else model_device(dit)
        # Offloading only pays where the compute device is not the CPU.
        self.offload_mllm = (self.device.type != "cpu") if offload_mllm is None else offload_mllm

    @classmethod
    def from_pretrained(cls, folder, dtype: torch.dtype | None = torch.bfloat16, device=None,
                        attention: str = "auto", dit_device=None, offload: bool | None = None,
                        mllm_preset=None) -> "EditPipeline":
        """Load a whole Kiwi-Edit release folder (transformer/, vae/, mllm_encoder/, processor/, embedders).

        ``offload`` (default: on when ``device`` is not the CPU) keeps every model in RAM between its stages;
        off keeps DiT and VAE on ``device`` (faster for repeated edits, needs room for all at once).
        ``dit_device="cpu"`` keeps the DiT in RAM regardless (for block swap: see ``EditSettings.block_swap``).
        ``mllm_preset``: the MLLM encoder settings the release's ``mllm_encoder/config.json`` values go over
        (``mllm.config`` preset name or config; default Kiwi-Edit's)."""
        from .loading.dit_loader import load_dit
        from .loading.inspect import is_release_folder
        from .loading.vae_loader import load_vae
        from .mllm.loader import load_mllm_encoder

        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder; expected a Kiwi-Edit release folder.")
        missing = [p for p in ("transformer", "vae", "mllm_encoder", "processor") if not (folder / p).exists()]
        if missing or not is_release_folder(folder):
            raise CheckpointError(
                f"{folder}: not a complete Kiwi-Edit release folder; missing part(s): {', '.join(missing)} "
                "(expected transformer/, vae/, mllm_encoder/, processor/, source_embedder/, ref_embedder/).")
        device = torch.device(device) if device is not None else comfy_adapter.compute_device()
        home = torch.device("cpu") if (device.type != "cpu" if offload is None else offload) else device
        dit = load_dit(folder, dtype=dtype, device=dit_device or home, attention=attention)
        vae = load_vae(folder / "vae", dtype=dtype, device=home)
        mllm = load_mllm_encoder(folder, dtype=dtype, device="cpu" if device.type != "cpu" else device,
                                 preset=mllm_preset)
        return cls(dit, vae, mllm, device=device)

    # --- stages -----------------------------------------------------------------------------------
    def prepare(self, frames: torch.Tensor, settings: EditSettings) -> torch.Tensor:
        return prepare_frames(frames, max_pixels=settings.max_pixels, num_frames=settings.num_frames,
                              frame_mode=settings.frame_mode)

    def encode_instruction(self, instruction: str, frames: torch.Tensor, reference=None,
                           with_negative: bool = False) -> EditConditioning:
        if self.mllm is None:
            raise InputError("this pipeline has no MLLM encoder; load one or pass a ready conditioning.")
        if isinstance(reference, (list, tuple)):
            # The MLLM reads one reference image (as released); further ones only reach the DiT.
            reference = reference[0] if reference else None
        mllm = self.mllm
        if self.offload_mllm:
            mllm.to(self.device)
        try:
            if with_negative:  # one vision-tower pass for both
                ctx, neg = mllm.encode_pair(instruction, frames, reference)
            else:
                ctx, neg = mllm.encode(instruction, frames, reference), None
        finally:
            if self.offload_mllm:
                mllm.to("cpu")
                comfy_adapter.soft_empty_cache()
        return EditConditioning(ctx, neg)

    def encode_video(self, frames: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Frames [F,H,W,3] in 0..1 → normalised latents [1, C, f, h, w]."""
        x = frames_to_vae(frames).to(self.device, model_dtype(self.vae))
        with torch.no_grad(), on_device(self.vae, self.device):
            return self.vae.encode(x, tiled=tiled)

    def encode_source(self, frames: torch.Tensor, reference=None, reference_first: bool | None = None,
                      tiled: bool = False) -> SourceConditioning:
        """Source latents, plus reference latents (each reference padded onto a white canvas of the
        source size, as the release does)."""
        src = self.encode_video(frames, tiled)
        ref = None
        if reference is not None:
            refs = reference if isinstance(reference, (list, tuple)) else [reference]
            h, w = frames.shape[1], frames.shape[2]
            ref = torch.cat([self.encode_video(pad_reference(r, w, h), tiled) for r in refs], dim=2)
        return SourceConditioning(src, ref, reference_first)

    def decode(self, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        with torch.no_grad(), on_device(self.vae, self.device):
            x = self.vae.decode(latents.to(self.device, model_dtype(self.vae)), tiled=tiled)
        return vae_to_frames(x)

    # --- whole edit -------------------------------------------------------------------------------
    def edit(self, frames: torch.Tensor, instruction: str, reference=None, settings: EditSettings | None = None,
             sample: Callable[..., torch.Tensor] = sample_edit) -> EditResult:
        """prepare → encode → VAE-encode → ``sample(dit, cond, source, settings, device=...)`` → decode; a method
        passes its sampler (``methods.kiwi_edit.sample``), the default is the bare core sampler."""
        s = settings or EditSettings()
        has_reference = reference is not None and not (isinstance(reference, (list, tuple)) and not reference)
        if has_reference and getattr(self.dit, "ref_embedder", False) is None:
            raise InputError("a reference image was given, but this model has no reference branch (no "
                             "ref_embedder weights, as in the instruct-only release); edit without a reference, "
                             "or load the instruct-reference or reference-only release.")
        frames = self.prepare(frames, s)
        cond = self.encode_instruction(instruction, frames, reference, with_negative=s.cfg != 1.0)
        source = self.encode_source(frames, reference, tiled=s.vae_tiled)
        with nullcontext() if s.block_swap else on_device(self.dit, self.device):
            latents = sample(self.dit, cond, source, s, device=self.device)
        return EditResult(self.decode(latents, tiled=s.vae_tiled), latents, cond.context, s)
