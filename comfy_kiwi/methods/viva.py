"""VIVA on the shared Wan DiT: attach the trainable parts, save/load them, build the sampler's conditioning.

Parts (all opt-in; a base DiT's keys and outputs are unchanged until they are attached):

- ``refiner``: :class:`~comfy_kiwi.methods.viva_refiner.TokenRefiner` from the VLM instructor's
  hidden width to the DiT width; the DiT reads its output directly (``context_embedding = "none"``).
- ``source_mixer``: VIVA eq. 2 channel-concat source conditioning, attached to the DiT itself
  (``WanDiT.attach_source_strategy(CHANNEL_CONCAT)``; ``source_mode = "concat"``).
- ``ref_embedder``: the reference image's VAE latents join the noisy tokens (VIVA Fig. 2) as extra
  frame tokens after the video (the DiT's ``reference_latents`` path; a zero-initialised Conv3d patch
  embedding, ``WanDiT.attach_condition_embedders(reference=True)``).

Weights file (safetensors): ``refiner.*``, ``source_mixer.*`` and ``ref_embedder.*`` tensors, metadata ``viva_in_dim``,
``viva_heads``, ``viva_depth`` so the refiner can be rebuilt without a config.

Inference preset: CFG 2.0 on the instruction only (VIVA's default) — the negative is the
instructor's encoding of the empty instruction with the same first frame and reference, so only
the instruction is guided (``viva_settings``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .viva_refiner import TokenRefiner
from .viva_source import CHANNEL_CONCAT

REFINER_PREFIX = "refiner."
MIXER_PREFIX = "source_mixer."
REF_PREFIX = "ref_embedder."
VIVA_CFG = 2.0               # VIVA: classifier-free guidance 2.0 on the instruction only


def attach_viva(dit, in_dim: int, num_heads: int | None = None, depth: int = 2,
                concat_source: bool = True, reference: bool = False) -> TokenRefiner:
    """Prepare ``dit`` for VIVA and return a fresh refiner (same device and dtype as the DiT).

    ``num_heads`` defaults to the DiT's head count (the refiner works at the DiT width)."""
    if not isinstance(in_dim, int) or in_dim < 1:
        raise InputError(f"VIVA instructor width must be a positive whole number, got {in_dim!r}.")
    dim = dit.config.dim
    refiner = TokenRefiner(in_dim, dim, num_heads or dit.config.num_heads, depth)
    refiner.to(dit.device, dit.dtype)
    dit.context_embedding = "none"           # the refined tokens are DiT-wide already
    if concat_source:
        dit.attach_source_strategy(CHANNEL_CONCAT)
    if reference:
        dit.attach_condition_embedders(source=False, reference=True)
    return refiner


def viva_state_dict(dit, refiner: TokenRefiner) -> dict[str, torch.Tensor]:
    out = {REFINER_PREFIX + k: v for k, v in refiner.state_dict().items()}
    if dit.source_mixer is not None:
        out.update({MIXER_PREFIX + k: v for k, v in dit.source_mixer.state_dict().items()})
    if dit.ref_embedder is not None:
        out.update({REF_PREFIX + k: v for k, v in dit.ref_embedder.state_dict().items()})
    return out


def refiner_metadata(refiner: TokenRefiner) -> dict[str, str]:
    return {"viva_in_dim": str(refiner.in_dim), "viva_heads": str(refiner.blocks[0].num_heads),
            "viva_depth": str(len(refiner.blocks)), "format": "pt"}


def save_viva(path, dit, refiner: TokenRefiner) -> Path:
    from safetensors.torch import save_file
    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in viva_state_dict(dit, refiner).items()}, str(path),
              metadata=refiner_metadata(refiner))
    return path


def load_viva_state(dit, refiner: TokenRefiner, state: dict[str, torch.Tensor], source: str = "state") -> None:
    """Copy ``refiner.*`` / ``source_mixer.*`` tensors in (attaching the channel-concat embedder when present)."""
    if any(k.startswith(MIXER_PREFIX) for k in state):
        dit.attach_source_strategy(CHANNEL_CONCAT)
    if any(k.startswith(REF_PREFIX) for k in state):
        dit.attach_condition_embedders(source=False, reference=True)
    targets = {REFINER_PREFIX: refiner.state_dict()}
    if dit.source_mixer is not None:
        targets[MIXER_PREFIX] = dit.source_mixer.state_dict()
    if dit.ref_embedder is not None:
        targets[REF_PREFIX] = dit.ref_embedder.state_dict()
    own = {p + k: v for p, sd in targets.items() for k, v in sd.items()}
    unknown = sorted(set(state) - set(own))
    missing = sorted(k for k in own if k.startswith(REFINER_PREFIX) and k not in state)
    if unknown or missing:
        raise CheckpointError(f"{source}: not VIVA weights for this DiT (unexpected {unknown[:4]}, missing "
                              f"{missing[:4]}); expected refiner.* and optionally source_mixer.* tensors.")
    bad = [f"{k} {list(v.shape)} vs {list(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: VIVA tensors do not fit this DiT: {', '.join(bad[:4])}.")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


@dataclass
class VivaWeights:
    """VIVA's trained parts, kept outside the DiT so a shared (cached) DiT is never changed: ``applied``
    hooks the channel-concat embedder in for one sampling run."""

    refiner: TokenRefiner
    mixer: torch.nn.Module | None        # ChannelConcatSourceEmbedder, or None (no source conditioning)
    ref_embedder: torch.nn.Module | None = None   # reference latents → tokens beside the noisy ones (Fig. 2)


def read_viva(path, dit) -> VivaWeights:
    """VIVA weights from ``path``, shaped for ``dit`` (which is not modified)."""
    from ..loading.files import open_state_dict
    from .viva_source import ChannelConcatSourceEmbedder
    state = open_state_dict(Path(path))
    meta = state.metadata
    try:
        in_dim, heads, depth = int(meta["viva_in_dim"]), int(meta["viva_heads"]), int(meta["viva_depth"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: no VIVA metadata (viva_in_dim, viva_heads, viva_depth); is this a VIVA "
                              "weights file written by the trainer?") from None
    c = dit.config
    if c.dim % heads:
        raise CheckpointError(f"{path}: VIVA refiner with {heads} heads does not fit this DiT's width {c.dim}.")
    refiner = TokenRefiner(in_dim, c.dim, heads, depth).to(dit.device, dit.dtype)
    mixer = ref = None
    if any(k.startswith(MIXER_PREFIX) for k in state):
        mixer = ChannelConcatSourceEmbedder(c.in_dim, c.dim, c.patch_size).to(dit.device, dit.dtype)
    if any(k.startswith(REF_PREFIX) for k in state):
        from ..models.conditioning import ConditionEmbedder
        ref = ConditionEmbedder(c.in_dim, c.dim, c.patch_size).to(dit.device, dit.dtype)
    own = {REFINER_PREFIX + k: v for k, v in refiner.state_dict().items()}
    for prefix, part in ((MIXER_PREFIX, mixer), (REF_PREFIX, ref)):
        if part is not None:
            own.update({prefix + k: v for k, v in part.state_dict().items()})
    unknown, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
    if unknown or missing:
        raise CheckpointError(f"{path}: not VIVA weights for this DiT (unexpected {unknown[:4]}, missing "
                              f"{missing[:4]}); expected refiner.* and optionally source_mixer.* tensors.")
    bad = [f"{k} {list(state.shape(k))} vs {list(v.shape)}" for k, v in own.items() if tuple(state.shape(k)) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{path}: VIVA tensors do not fit this DiT (another model size?): {', '.join(bad[:4])}.")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.dtype))
    return VivaWeights(*(None if m is None else m.eval().requires_grad_(False) for m in (refiner, mixer, ref)))


def load_viva(path, dit) -> TokenRefiner:
    """Read a VIVA weights file, attach its parts to ``dit`` for good (trainer use) and return the refiner."""
    w = read_viva(path, dit)
    dit.context_embedding = "none"
    if w.mixer is not None:
        dit.source_mixer, dit.source_mode = w.mixer, "concat"
    if w.ref_embedder is not None:
        dit.ref_embedder = w.ref_embedder
    return w.refiner


@contextlib.contextmanager
def applied(dit, weights: VivaWeights):
    """``dit`` with VIVA's channel-concat source, reference embedder and DiT-wide context for the block;
    restored after."""
    saved = (dit.source_mixer, dit.source_mode, dit.context_embedding, dit.ref_embedder)
    try:
        dit.context_embedding = "none"
        if weights.mixer is not None:
            dit.source_mixer, dit.source_mode = weights.mixer.to(dit.device, dit.dtype), "concat"
        if weights.ref_embedder is not None:
            dit.ref_embedder = weights.ref_embedder.to(dit.device, dit.dtype)
        yield dit
    finally:
        dit.source_mixer, dit.source_mode, dit.context_embedding, dit.ref_embedder = saved


@dataclass
class RefinedContext:
    """VIVA's per-step context, the sampler's ``EditConditioning.step_context``: the refiner turns the instructor's
    hidden states into the DiT context at every step's timestep t (= 1000σ); the negative branch refines the empty
    instruction's hidden states (instruction-only CFG)."""

    refiner: TokenRefiner
    hidden: torch.Tensor                        # [1, L, C_in] instructor hidden states of the instruction
    mask: torch.Tensor | None                   # [1, L] real-token mask
    negative: torch.Tensor | None = None        # [1, L', C_in] of the empty instruction (same frame and reference)
    negative_mask: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor, negative: bool) -> torch.Tensor:
        hidden, mask = (self.negative, self.negative_mask) if negative else (self.hidden, self.mask)
        dtype = next(self.refiner.parameters()).dtype
        return self.refiner.refine(hidden.to(t.device, dtype), t.to(dtype), None if mask is None else mask.to(t.device))


def conditioning(refiner: TokenRefiner, hidden: torch.Tensor, mask: torch.Tensor | None,
                 negative: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None):
    """The sampler's conditioning of VIVA: the hidden states as ``context`` / ``negative`` and the refiner as the
    per-step context hook that turns them into the DiT context."""
    from ..pipeline import EditConditioning
    hook = RefinedContext(refiner, hidden, mask, negative, negative_mask)
    return EditConditioning(hidden, negative, step_context=hook)


def encode(encoder, weights: VivaWeights, instruction: str, frames, reference=None, with_negative: bool = True,
           system_prompt: str | None = None):
    """An ``EditConditioning`` for the sampler: instructor hidden states (+ the empty instruction's, same frame and
    reference, for instruction-only CFG) and the refiner that turns them into context per step (``RefinedContext``)."""
    from ..mllm.instructor import VIVA_SYSTEM_PROMPT, VivaInstructor
    if weights.refiner.in_dim != encoder.config.hidden_size:
        raise InputError(f"the VIVA refiner reads {weights.refiner.in_dim}-wide hidden states but this MLLM's are "
                         f"{encoder.config.hidden_size} wide: load the Qwen2.5-VL the VIVA weights were trained with.")
    inst = VivaInstructor(encoder, system_prompt or VIVA_SYSTEM_PROMPT)
    with torch.no_grad():
        if with_negative:
            (h, m), (hn, mn) = inst.encode_pair(instruction, frames, reference)
        else:
            (h, m), hn, mn = inst.hidden_states(instruction, frames, reference), None, None
    return conditioning(weights.refiner, h.cpu(), m.cpu(), None if hn is None else hn.cpu(),
                        None if mn is None else mn.cpu())


def refiner_of(conditioning) -> TokenRefiner | None:
    """The refiner of a VIVA conditioning (None: not a VIVA encoding)."""
    hook = getattr(conditioning, "step_context", None)
    return hook.refiner if isinstance(hook, RefinedContext) else None


def sample(dit, weights: VivaWeights, conditioning, source, settings, device=None) -> torch.Tensor:
    """VIVA's sampler, the one entry point of the nodes and the trainer's evaluation: ``weights`` hooked into
    ``dit`` for the run (``applied``), the refiner turning the instructor's hidden states into the context at every
    step, CFG on the instruction only (``settings.cfg``; VIVA: 2.0, ``viva_settings``), the source by channel
    concatenation and the reference latents as tokens beside the noisy ones. Returns latents [1, C, f, h, w]."""
    from ..pipeline import sample_edit
    if refiner_of(conditioning) is not weights.refiner:
        raise InputError("the conditioning was encoded with other VIVA weights than the ones given here (its refiner "
                         "differs); encode and sample with the same weights (one Kiwi VIVA Loader for both nodes).")
    if source.reference_latents is not None and weights.ref_embedder is None:
        raise InputError("these VIVA weights have no reference embedder (trained without reference images); "
                         "sample without reference latents.")
    with applied(dit, weights):
        return sample_edit(dit, conditioning, source, settings, device=device)


def edit(pipe, weights: VivaWeights, frames, instruction: str, reference=None, settings=None):
    """One whole VIVA edit on a loaded ``EditPipeline`` (its DiT, VAE and Qwen2.5-VL instructor as ``pipe.mllm``):
    prepare the frames, ``encode`` (the negative when ``settings.cfg`` ≠ 1), VAE-encode the source (+ reference),
    ``sample``, decode — the command line's ``edit --viva``, the same calls the nodes chain. ``reference``: one
    image ([1, H, W, 3] as ``frames.load_image`` reads it) or None."""
    from ..comfyui.placement import on_device
    from ..pipeline import EditResult
    s = settings or viva_settings()
    frames = pipe.prepare(frames, s)
    with on_device(pipe.mllm, pipe.device):
        cond = encode(pipe.mllm, weights, instruction, frames, reference, with_negative=s.cfg != 1.0)
    source = pipe.encode_source(frames, reference, tiled=s.vae_tiled)
    with on_device(pipe.dit, pipe.device):
        weights.refiner.to(pipe.device)
        latents = sample(pipe.dit, weights, cond, source, s, device=pipe.device)
    return EditResult(pipe.decode(latents, tiled=s.vae_tiled), latents, cond.context, s)


def viva_settings(**overrides):
    """``EditSettings`` with VIVA's inference default: CFG 2.0 on the instruction only."""
    from ..pipeline import EditSettings
    return EditSettings(**{"cfg": VIVA_CFG, **overrides})
