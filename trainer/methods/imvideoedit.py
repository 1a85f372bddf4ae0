"""ImVideoEdit training: frozen Wan2.1 DiT + Predict-Update modules, learned from image pairs (1-frame videos).

The model side lives in :mod:`comfy_kiwi.methods.imvideoedit`; this class wires it to the loop. The loss is
the paper's Eq. 3: t ~ U(0, 1) (continuous, no timestep shift), x_t = (1 − t)·x0 + t·ε, the target half's
velocity regressed onto ε − x0 (MSE); the source half is clean (t = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from comfy_kiwi.dtypes import parse_dtype
from comfy_kiwi.methods import imvideoedit as ive
from comfy_kiwi.sampling import sigma_to_timestep

from .base import TrainingMethod, TrainModule, flow_match_loss, noised


@dataclass
class ImVideoEditOptions:
    pass


def _checkpointed_run_blocks(dit):
    """Per-block activation checkpointing for a WanDiT that lacks the ``gradient_checkpointing`` flag."""
    def run_blocks(x, e, context, rope):
        for block in dit.blocks:
            x = checkpoint(block, x, e, context, rope, use_reentrant=False) if torch.is_grad_enabled() \
                else block(x, e, context, rope)
        return x
    return run_blocks


def enable_gradient_checkpointing(dit) -> str:
    """Use WanDiT's own flag when it has one; otherwise wrap ``run_blocks`` on this instance only."""
    if "gradient_checkpointing" in vars(dit) or hasattr(type(dit), "gradient_checkpointing"):
        dit.gradient_checkpointing = True
        dit.train()          # the flag acts in training mode only; WanDiT has no dropout, so nothing else changes
        return "model flag"
    dit.run_blocks = _checkpointed_run_blocks(dit)
    return "local wrapper"


class ImVideoEditModule(TrainModule):
    def __init__(self, dit, adapter):
        super().__init__()
        self.dit = dit
        self.adapter = adapter

    def forward(self, batch: dict, draws: dict) -> torch.Tensor:
        x0, src, ctx = batch["target"], batch["source"], batch["context"]
        dtype = self.dit.dtype
        x_t = noised(x0, draws["noise"], draws["sigma"]).to(dtype)
        v = ive.paired_velocity(self.dit, src.to(dtype), x_t, sigma_to_timestep(draws["sigma"].to(x0.device), dtype=dtype), ctx)
        return flow_match_loss(v, x0, draws["noise"].to(x0.device))


def uniform_draws(batch: dict, generator: torch.Generator) -> dict:
    """Eq. 3: t ~ U(0, 1) per sample (σ = t; the DiT sees 1000·t) and ε ~ N(0, I)."""
    x0 = batch["target"]
    sigma = torch.rand(x0.shape[0], generator=generator, dtype=torch.float32)
    return {"sigma": sigma, "noise": torch.randn(x0.shape, generator=generator, dtype=torch.float32)}


class ImVideoEditMethod(TrainingMethod):
    name = "imvideoedit"
    Options = ImVideoEditOptions
    # the attention copies run through the base model's layer classes; if those skip a weight (a bias, say)
    # that weight gets no gradient, and DDP must tolerate it rather than fail
    find_unused_parameters = True

    def draws(self, batch, generator) -> dict:
        return uniform_draws(batch, generator)

    def build(self, models: dict) -> ImVideoEditModule:
        dit = models["dit"].requires_grad_(False).eval()
        dtype = parse_dtype(self.cfg.precision.adapter_dtype)
        adapter = ive.attach(dit, dtype=dtype).requires_grad_(True).train()
        if self.cfg.precision.gradient_checkpointing:
            enable_gradient_checkpointing(dit)
        return ImVideoEditModule(dit, adapter)

    def trainable_state_dict(self, module) -> dict[str, torch.Tensor]:
        return module.adapter.prefixed_state_dict()

    def load_trainable_state_dict(self, module, state) -> None:
        own = module.adapter.state_dict()
        module.adapter.load_state_dict({k[len(ive.PREFIX):]: v.to(own[k[len(ive.PREFIX):]].dtype)
                                        for k, v in state.items()})

    @torch.no_grad()
    def sample(self, module, batch, steps, shift, seed):
        return ive.sample(module.dit, batch["source"], batch["context"], steps=steps, shift=shift, seed=seed,
                          progress=False)
