"""How source-video latents enter ``WanDiT``'s token stream: an attachment point of the DiT.

A strategy is a stateless object with a ``name`` (``WanDiT.source_mode``) and two steps that
``WanDiT.forward`` calls when source latents are given:

- ``scale(dit, source_scale, t, source_latents, latents)``: check the inputs against the DiT and return
  what ``embed`` needs per sample (or None);
- ``embed(dit, x_tokens, source_latents, scale)``: the patch-embedded noisy tokens [B, L, dim] with the
  source mixed in.

Weights a strategy needs live on the DiT (``source_embedder``, or the ``source_mixer`` slot a method's
strategy fills, keys ``source_mixer.*``), so the state dict is the model's. The core knows only the
default, Kiwi-Edit's σ-scaled addition; a method registers its own strategy with
:func:`register_source_strategy` (VIVA's channel concat: ``comfy_kiwi/methods/viva_source.py``) and
attaches it with ``WanDiT.attach_source_strategy``.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..sampling.schedule import sigma_to_timestep


class SigmaScaledAdd:
    """Kiwi-Edit (the released models): ``patch_embedding(x_t) + source_embedder(x_src) · s`` with
    ``s`` = ``source_scale`` (σ: a number or [B]; default timestep/1000), through the paper's γ(t) when the
    embedder has one."""

    name = "add_sigma"

    def attach(self, dit) -> None:
        return None                           # its weights are the source_embedder, attached by the loader

    def scale(self, dit, scale, t: torch.Tensor, source: torch.Tensor, latents: torch.Tensor):
        if dit.source_embedder is None:
            raise InputError("source latents were given but this DiT has no source embedder; load a Kiwi-Edit "
                             "model (source_embedder/) or call attach_condition_embedders().")
        if source.ndim != 5 or source.shape[1:] != latents.shape[1:] or source.shape[0] not in (1, t.shape[0]):
            raise InputError(f"source latents {tuple(source.shape)} must have the latents' shape "
                             f"{tuple(latents.shape)} (the VAE encoding of the source video at the same size).")
        if scale is None:
            if t.shape[1] > 1:
                raise InputError("with per-token timesteps, source_scale (σ per sample) must be given.")
            s = t.float() / 1000.0
        else:
            s = torch.as_tensor(scale, dtype=torch.float32, device=dit.device)
            if s.numel() not in (1, t.shape[0]):
                raise InputError(f"source_scale must be a number or [B] = [{t.shape[0]}], got shape {tuple(s.shape)}.")
        if dit.source_embedder.gamma is not None:         # the paper's γ(t), keyed by the sample's 1000·σ
            s = dit.source_embedder.gamma(sigma_to_timestep(s.reshape(-1)))
        return s.reshape(-1, 1, 1)

    def embed(self, dit, x: torch.Tensor, source: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x + dit.source_embedder(source) * scale.to(x.dtype)


SIGMA_SCALED_ADD = SigmaScaledAdd()
_STRATEGIES = {SIGMA_SCALED_ADD.name: SIGMA_SCALED_ADD}


def register_source_strategy(strategy):
    """Make ``strategy`` selectable by name (``WanDiT.source_mode = name``); returns it."""
    for attr in ("name", "attach", "scale", "embed"):
        if not hasattr(strategy, attr):
            raise TypeError(f"a source strategy needs {attr!r}; {type(strategy).__name__} has none.")
    _STRATEGIES[strategy.name] = strategy
    return strategy


def source_strategy_named(name: str):
    """The registered strategy called ``name``, or an ``InputError`` naming the registered ones."""
    if name not in _STRATEGIES:
        raise InputError(f"source_mode must be one of {', '.join(_STRATEGIES)}, got {name!r} (a method's "
                         "strategy is registered when the method's module is imported).")
    return _STRATEGIES[name]
