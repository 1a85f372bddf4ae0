"""VIVA on the shared Wan DiT: attach the trainable parts, save/load them, build the sampler's conditioning.

Parts (all opt-in; a base DiT's keys and outputs are unchanged until they are attached):

- ``refiner``: :class:`~comfy_kiwi.methods.viva_refiner.TokenRefiner` from the VLM instructor's
  hidden width to the DiT width; the DiT reads its output directly (``context_embedding = "none"``).
- ``source_mixer``: VIVA eq. 2 channel-concat source conditioning, attached to the DiT itself
  (``WanDiT.attach_channel_concat_source``; ``source_mode = "concat"``).

Weights file (safetensors): ``refiner.*`` and ``source_mixer.*`` tensors, metadata ``viva_in_dim``,
``viva_heads``, ``viva_depth`` so the refiner can be rebuilt without a config.

Inference preset: CFG 2.0 on the instruction only (VIVA's default) — the negative is the
instructor's encoding of the empty instruction with the same first frame and reference, so only
the instruction is guided (``viva_settings``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from .viva_refiner import TokenRefiner

REFINER_PREFIX = "refiner."
MIXER_PREFIX = "source_mixer."
VIVA_CFG = 2.0               # VIVA: classifier-free guidance 2.0 on the instruction only


def attach_viva(dit, in_dim: int, num_heads: int | None = None, depth: int = 2,
                concat_source: bool = True) -> TokenRefiner:
    """Prepare ``dit`` for VIVA and return a fresh refiner (same device and dtype as the DiT).

    ``num_heads`` defaults to the DiT's head count (the refiner works at the DiT width)."""
    if not isinstance(in_dim, int) or in_dim < 1:
        raise InputError(f"VIVA instructor width must be a positive whole number, got {in_dim!r}.")
    dim = dit.config.dim
    refiner = TokenRefiner(in_dim, dim, num_heads or dit.config.num_heads, depth)
    refiner.to(dit.device, dit.dtype)
    dit.context_embedding = "none"           # the refined tokens are DiT-wide already
    if concat_source:
        dit.attach_channel_concat_source()
    return refiner


def viva_state_dict(dit, refiner: TokenRefiner) -> dict[str, torch.Tensor]:
    out = {REFINER_PREFIX + k: v for k, v in refiner.state_dict().items()}
    if dit.source_mixer is not None:
        out.update({MIXER_PREFIX + k: v for k, v in dit.source_mixer.state_dict().items()})
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
        dit.attach_channel_concat_source()
    targets = {REFINER_PREFIX: refiner.state_dict()}
    if dit.source_mixer is not None:
        targets[MIXER_PREFIX] = dit.source_mixer.state_dict()
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


def load_viva(path, dit) -> TokenRefiner:
    """Read a VIVA weights file, attach its parts to ``dit`` and return the refiner."""
    from ..loading.files import open_state_dict
    state = open_state_dict(Path(path))
    meta = state.metadata
    try:
        in_dim, heads, depth = int(meta["viva_in_dim"]), int(meta["viva_heads"]), int(meta["viva_depth"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: no VIVA metadata (viva_in_dim, viva_heads, viva_depth); is this a VIVA "
                              "weights file written by the trainer?") from None
    refiner = attach_viva(dit, in_dim, heads, depth, concat_source=False)
    load_viva_state(dit, refiner, {k: state[k] for k in state}, str(path))
    return refiner.eval().requires_grad_(False)


def refined_context(refiner: TokenRefiner, hidden: torch.Tensor, mask: torch.Tensor | None, t) -> torch.Tensor:
    """The DiT context at timestep ``t`` (= 1000σ): the refiner runs at every sampling step."""
    return refiner.refine(hidden, t, mask)


def viva_settings(**overrides):
    """``EditSettings`` with VIVA's inference default: CFG 2.0 on the instruction only."""
    from ..pipeline import EditSettings
    return EditSettings(**{"cfg": VIVA_CFG, **overrides})
