"""RVEDiT's three conditioning streams in this stack, and the trainable part that makes X_v.

- **X_e** (editing tokens): the instruction context the DiT already reads — the MLLM encoder's
  query tokens after the connector (Kiwi / InstructX encoders), DiT-wide. Every block sees X_e.
- **X_v** (source-video tokens): the source video's VAE latents patch-embedded to the DiT width by
  ``RVEDiTStreams.video_embedder`` (a Conv3d of the DiT's patch geometry, initialised as a copy of
  the DiT's ``patch_embedding`` so its tokens start in the DiT's own token space), average-pooled on
  the token grid by ``pool`` (default none) to bound their count.
- **X_ℓ** (language tokens): umT5 features of the *instruction* through the DiT's own
  ``text_embedding`` (Wan's native text path, frozen) — what the trainer feeds, so what inference
  must feed too (Kiwi UMT5 Encode of the same instruction).

Only blocks ≥ L_s (0-based; the paper's l > L_s) see [X_e; X_v; X_ℓ] (``rvedit.RoutedContext``);
``L_s`` defaults to half the depth. With ``L_s`` = depth the routing is off and the DiT is the base model.

Weights file (safetensors): ``rvedit.video_embedder.patch_embedding.{weight,bias}``, metadata
``rvedit_pool`` ("pt,ph,pw") and ``rvedit_split`` (L_s); and the MLLM parts RVEDiT trains with the
DiT, under the Kiwi training-checkpoint names: the connector (``mllm.connetor.*`` [sic]) and the
language model's LoRA (``mllm.model.model.language_model.…lora_{A,B}.default.weight``, metadata
``mllm_lora_alpha``) — ``trained_mllm`` applies them to the MLLM encoder that gives X_e.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..models.conditioning import ConditionEmbedder
from .rvedit import RoutedContext, source_video_tokens

PREFIX = "rvedit."


def default_split(num_blocks: int) -> int:
    """RVEDiT's default L_s: half the depth (rounded down)."""
    return num_blocks // 2


@dataclass
class RoutedStreams:
    """What the sampler needs to route: L_s and the deep-block streams (DiT-wide, batch 1 or B)."""

    split: int
    x_v: torch.Tensor | None = None        # [B, L_v, dim]
    x_l: torch.Tensor | None = None        # [B, L_ℓ, dim]

    def routed(self, dit, x_e: torch.Tensor) -> RoutedContext:
        """The context manager installing the routing on ``dit`` for one call (or one sampling run)."""
        dtype = dit.dtype
        return RoutedContext(dit, self.split, x_e.to(dtype),
                             None if self.x_v is None else self.x_v.to(x_e.device, dtype),
                             None if self.x_l is None else self.x_l.to(x_e.device, dtype))


class RVEDiTStreams(nn.Module):
    """The trainable X_v embedder + the routing split; ``streams(dit, source_latents, caption)``."""

    def __init__(self, in_dim: int, dim: int, patch_size=(1, 2, 2), split: int = 0, pool=(1, 1, 1)):
        super().__init__()
        self.video_embedder = ConditionEmbedder(in_dim, dim, patch_size, zero_init=False)
        self.split = int(split)
        self.pool = tuple(int(p) for p in pool)

    @classmethod
    def for_dit(cls, dit, split: int | None = None, pool=(1, 1, 1)) -> "RVEDiTStreams":
        n = len(dit.blocks)
        split = default_split(n) if split is None else int(split)
        if not 0 <= split <= n:
            raise InputError(f"RVEDiT split L_s must be between 0 and the DiT's {n} blocks, got {split}.")
        c, pe = dit.config, dit.patch_embedding
        out = cls(c.in_dim, c.dim, c.patch_size, split, pool).to(pe.weight.device, pe.weight.dtype)
        with torch.no_grad():
            out.video_embedder.patch_embedding.weight.copy_(pe.weight)
            out.video_embedder.patch_embedding.bias.copy_(pe.bias)
        return out

    def video_tokens(self, source_latents: torch.Tensor) -> torch.Tensor:
        """X_v [B, L_v, dim]."""
        return source_video_tokens(self.video_embedder, source_latents, self.pool)

    @staticmethod
    def caption_tokens(dit, caption: torch.Tensor) -> torch.Tensor:
        """X_ℓ [B, L, dim]: umT5 rows [B, L, text_dim] through the DiT's ``text_embedding``."""
        if not torch.is_tensor(caption) or caption.ndim != 3 or caption.shape[-1] != dit.config.text_dim:
            shape = tuple(caption.shape) if torch.is_tensor(caption) else type(caption).__name__
            raise InputError(f"RVEDiT caption features must be umT5 rows [B, L, {dit.config.text_dim}], got {shape}.")
        return dit.text_embedding(caption.to(dit.dtype))

    def streams(self, dit, source_latents: torch.Tensor | None, caption: torch.Tensor | None) -> RoutedStreams:
        x_v = None if source_latents is None else self.video_tokens(source_latents)
        x_l = None if caption is None else self.caption_tokens(dit, caption)
        return RoutedStreams(self.split, x_v, x_l)

    # --- files ------------------------------------------------------------------------------------------
    def prefixed_state_dict(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v for k, v in self.state_dict().items()}

    def metadata(self) -> dict[str, str]:
        return {"rvedit_split": str(self.split), "rvedit_pool": ",".join(map(str, self.pool)), "format": "pt"}

    def save(self, path) -> Path:
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().contiguous() for k, v in self.prefixed_state_dict().items()}, str(path),
                  metadata=self.metadata())
        return Path(path)

    def load_prefixed(self, state, source: str = "state") -> None:
        own = self.state_dict()
        keys = {k[len(PREFIX):] for k in state if k.startswith(PREFIX)}
        if keys != set(own):
            raise CheckpointError(f"{source}: not RVEDiT weights (expected {sorted(PREFIX + k for k in own)}, "
                                  f"found {sorted(state)[:4]}).")
        for k in keys:
            if tuple(state[PREFIX + k].shape) != tuple(own[k].shape):
                raise CheckpointError(f"{source}: {PREFIX + k} has shape {list(state[PREFIX + k].shape)}, this DiT "
                                      f"needs {list(own[k].shape)} (weights of another model size?).")
        with torch.no_grad():
            for k in keys:
                own[k].copy_(state[PREFIX + k].to(own[k].dtype))


def load_rvedit(path, dit, split: int | None = None) -> RVEDiTStreams:
    """An ``RVEDiTStreams`` for ``dit`` with the weights of ``path``; ``split`` overrides the file's L_s."""
    from ..loading.files import open_state_dict
    state = open_state_dict(Path(path))
    meta = state.metadata
    try:
        pool = tuple(int(p) for p in meta.get("rvedit_pool", "1,1,1").split(","))
        saved_split = int(meta["rvedit_split"]) if "rvedit_split" in meta else None
    except ValueError:
        raise CheckpointError(f"{path}: unreadable RVEDiT metadata {dict(meta)}.") from None
    out = RVEDiTStreams.for_dit(dit, saved_split if split is None else split, pool)
    out.load_prefixed({k: state[k] for k in state}, str(path))
    return out.eval().requires_grad_(False)


def trained_mllm(encoder, path):
    """A copy of ``encoder`` (the MLLM the run started from) with the run's trained connector copied in and its
    LoRA merged, read from an RVEDiT weights file; ``encoder`` itself is not changed. A file without MLLM parts
    (written before the MLLM trained with the DiT) gives ``encoder`` back unchanged."""
    import copy

    from ..loading.files import open_state_dict
    from ..mllm.lora import merge_lora_tensors
    from ..training_lib.checkpoint_export import from_kiwi_training_keys
    state = open_state_dict(Path(path))
    keys = [k for k in state if k.startswith("mllm.")]
    if not keys:
        return encoder
    parts = from_kiwi_training_keys({k: state[k] for k in keys})
    try:
        alpha = float(state.metadata["mllm_lora_alpha"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: MLLM LoRA tensors without a readable mllm_lora_alpha metadata entry.") from None
    out = copy.deepcopy(encoder)
    out.load_extras(parts["mllm"], source=str(path), strict=False)
    merge_lora_tensors(out, parts["mllm_lora"], alpha=alpha, source=str(path))
    return out.eval().requires_grad_(False)


def routed_conditioning(dit, streams: RVEDiTStreams, cond, source_latents: torch.Tensor,
                        caption: torch.Tensor | None):
    """An ``EditConditioning`` that routes: X_e = ``cond.context`` (and its CFG negative), X_v from the
    source latents, X_ℓ from umT5 caption rows [1, L, text_dim] (None: no X_ℓ)."""
    from ..pipeline import EditConditioning
    with torch.no_grad():
        routing = streams.streams(dit, source_latents.to(dit.device), None if caption is None else caption.to(dit.device))
    return EditConditioning(cond.context, cond.negative, routing=routing)


def sample(dit, streams: RVEDiTStreams, conditioning, source, language: torch.Tensor, settings, device=None):
    """RVEDiT's sampler, the one entry point of the nodes and the trainer's evaluation, fed the streams training
    used: X_e = ``conditioning.context`` (the MLLM with the run's connector + LoRA, ``trained_mllm``), X_v from
    ``source.source_latents``, X_ℓ from ``language`` = the instruction's umT5 rows [1, L, text_dim]. A DiT without
    a Kiwi source embedder gets the source only as X_v. Returns latents [1, C, f, h, w]."""
    from ..pipeline import SourceConditioning, sample_edit
    if source.source_latents is None:
        raise InputError("RVEDiT needs the source latents (they size the run and give X_v).")
    if language is None:
        raise InputError("RVEDiT's deep blocks read X_ℓ = the instruction's umT5 rows, as in training; give them.")
    cond = routed_conditioning(dit, streams, conditioning, source.source_latents, language)
    if dit.source_embedder is None:
        source = SourceConditioning(source.source_latents, feed_dit=False)
    return sample_edit(dit, cond, source, settings, device=device)


def edit(pipe, streams: RVEDiTStreams, text_encoder, frames, instruction: str, settings=None,
         text_len: int | None = None):
    """One whole RVEDiT edit on a loaded ``EditPipeline`` whose ``mllm`` is the run's (``trained_mllm``): prepare the
    frames, X_e = the MLLM encoding of the instruction (its negative when ``settings.cfg`` ≠ 1), X_ℓ = the same
    instruction's umT5 rows zero-padded to ``text_len`` (as trained; default Wan's 512), the source latents (X_v),
    ``sample``, decode — the command line's ``edit --rvedit``, the same calls the nodes chain."""
    from ..comfyui.placement import on_device
    from ..pipeline import EditResult, EditSettings
    from ..text_encoders.umt5 import WAN_TEXT_LEN
    from .imvideoedit_pipeline import caption_context
    s = settings or EditSettings()
    frames = pipe.prepare(frames, s)
    cond = pipe.encode_instruction(instruction, frames, None, with_negative=s.cfg != 1.0)
    language = caption_context(text_encoder, instruction, text_len or WAN_TEXT_LEN)
    source = pipe.encode_source(frames, tiled=s.vae_tiled)
    with on_device(pipe.dit, pipe.device):
        streams.to(pipe.device)
        latents = sample(pipe.dit, streams, cond, source, language, s, device=pipe.device)
    return EditResult(pipe.decode(latents, tiled=s.vae_tiled), latents, cond.context, s)
