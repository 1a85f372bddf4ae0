"""The method plug-in interface of the trainer.

The training loop owns accelerate, data order, randomness, optimiser, checkpoints and logging; a
method owns the model: what is frozen, what trains, how a cached batch becomes a loss, how trainable
weights are saved, and how a sample edit is made. Adding Kiwi-Edit / InstructX / VIVA / RVEDiT means a
subclass here plus a preset TOML in trainer/presets/.

The loss is computed inside ``TrainModule.forward`` so that accelerate's DDP/FSDP wrapper sees the
call and synchronises gradients. Random draws (noise level, noise) are made by the loop from a
generator seeded by (seed, step, micro-step, rank) and passed in, so a resumed run redraws them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from comfy_kiwi.sampling import training_sigmas


@dataclass
class NoOptions:
    pass


class TrainModule(nn.Module):
    """What accelerate prepares: ``forward(batch, draws) -> scalar loss``."""

    def forward(self, batch: dict, draws: dict) -> torch.Tensor:   # pragma: no cover - interface
        raise NotImplementedError


class TrainingMethod:
    name = "base"
    Options = NoOptions
    needs = ("source", "target", "context")    # cached fields a batch must hold
    find_unused_parameters = False             # DDP: set True when some trainable weights may get no gradient

    def __init__(self, cfg):
        self.cfg = cfg
        self.options = cfg.method.options

    @classmethod
    def parse_options(cls, table):
        from ..config import build_dataclass
        if isinstance(table, cls.Options):
            return table
        return build_dataclass(cls.Options, table, "method.options")

    # --- model ------------------------------------------------------------------------------------------
    def build(self, models: dict) -> TrainModule:
        """``models`` holds the loaded frozen parts ("dit", and "vae"/"text_encoder" when needed)."""
        raise NotImplementedError

    def trainable_parameters(self, module: TrainModule) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def trainable_state_dict(self, module: TrainModule) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_trainable_state_dict(self, module: TrainModule, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # --- randomness ---------------------------------------------------------------------------------------
    def draws(self, batch: dict, generator: torch.Generator) -> dict:
        """Flow-matching draws: a timestep id uniform over the shifted 1000-step schedule, and noise."""
        x0 = batch["target"]
        sigmas = training_sigmas(self.cfg.schedule.timestep_shift)
        ids = torch.randint(0, len(sigmas), (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
        return {"sigma": sigmas[ids].float(), "noise": noise}

    # --- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, module: TrainModule, batch: dict, steps: int, shift: float, seed: int) -> torch.Tensor:
        """Edited latents for the first item(s) of ``batch``."""
        raise NotImplementedError


def flow_match_loss(model_out: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE to the rectified-flow velocity ε − x0, in fp32."""
    return torch.nn.functional.mse_loss(model_out.float(), (noise - x0).float())


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ)·x0 + σ·ε with σ per sample."""
    s = sigma.to(x0.device, torch.float32).reshape(-1, *([1] * (x0.ndim - 1)))
    return ((1 - s) * x0.float() + s * noise.to(x0.device).float()).to(x0.dtype)
