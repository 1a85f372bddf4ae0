"""The method plug-in interface of the trainer.

The training loop owns accelerate, data order, randomness, optimiser, checkpoints and logging; a
method owns the model: what is frozen, what trains, how a cached batch becomes a loss, how trainable
weights are saved, and how a sample edit is made. Adding Kiwi-Edit / InstructX / VIVA / RVEDiT means a
subclass here plus a preset TOML in trainer/presets/.

The loss is computed inside ``TrainModule.forward`` so that accelerate's DDP/FSDP wrapper sees the
call and synchronises gradients. Random draws (noise level, noise, …) are made per sample: the loop hands
``sample_draws`` one generator per item, seeded by (seed, global sample index), so a resumed run redraws them
exactly and 2 processes × batch 1 draw what 1 process × batch 2 draws (see trainer/loop.py).

Hooks a method may override (every default keeps the ImVideoEdit behaviour):

- ``required_models``: the ``[model]`` paths that must exist (default dit, vae, text_encoder).
- ``load_models(cfg, device) -> dict``: the models handed to ``build`` (default: the DiT from model.dit).
- ``context_encoder``: "umt5" (default) caches umT5 rows of the prompt as ``context``; None means the
  method caches what it needs itself in ``cache_item`` (e.g. an MLLM context when the MLLM is frozen,
  or MLLM pixels when it trains).
- ``encode_target_caption``: also cache ``target_context`` = umT5 rows of the ``target_caption`` column.
- ``cache_item(record, pixels, size, encoders) -> dict``: extra per-item tensors for the cache;
  ``pixels`` = {"source", "target"} [1, 3, F, H, W] in [−1, 1] at the item's (W, H) ``size``;
  ``encoders.get(name, loader)`` loads a model once per cache build ("vae" and "text" are known).
- ``cache_signature() -> dict`` / ``cache_model_files() -> list``: settings and files that shape the
  method's cached tensors (they key the cache file).
- ``collate(items) -> batch``: default pads umT5 contexts to data.text_len, concatenates other tensors on
  dim 0, keeps strings as lists. A batch always has ``prompt``, ``source_prompt`` and ``target_caption``
  (lists of str) and ``mask`` [B, 1, f, h, w] when the dataset has a ``mask`` column.
- ``place(module, device)``: move the built module to the device (block swap keeps blocks in RAM).
- ``load_init_state(module, state)``: initial weights from ``checkpoint.init_from`` (a previous stage);
  default = ``load_trainable_state_dict``.
- ``save_final(module, output_dir) -> list[Path]``: the files of a finished run (default
  ``<method>.safetensors`` = ``trainable_state_dict``).
- ``draws(batch, generator)``: the random draws of a batch (noise level, noise, …); the loop calls it once per
  sample (a batch of one) through ``sample_draws`` and concatenates the per-sample tensors.
- ``step_metrics(module) -> dict``: extra numbers logged with each step's loss (metrics.jsonl).

``self.device`` is the training device (set by the loop before caching, so ``cache_item`` encoders can use it).
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
    required_models = ("dit", "vae", "text_encoder")
    context_encoder: str | None = "umt5"
    encode_target_caption = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.options = cfg.method.options
        self.device = torch.device("cpu")      # the loop sets the training device before the cache is built

    @classmethod
    def parse_options(cls, table):
        from ..config import build_dataclass
        if isinstance(table, cls.Options):
            return table
        return build_dataclass(cls.Options, table, "method.options")

    # --- data -------------------------------------------------------------------------------------------
    def cache_item(self, record, pixels: dict, size: tuple[int, int], encoders) -> dict[str, torch.Tensor]:
        return {}

    def cache_signature(self) -> dict:
        return {}

    def cache_model_files(self) -> list[str]:
        return []

    def collate(self, items: list[dict]) -> dict:
        from ..data.cache import collate
        return collate(items, self.cfg.data.text_len)

    # --- model ------------------------------------------------------------------------------------------
    def load_models(self, cfg, device) -> dict:
        from comfy_kiwi.dtypes import parse_dtype
        from comfy_kiwi.loading.dit_loader import load_dit
        return {"dit": load_dit(cfg.model.dit, dtype=parse_dtype(cfg.model.dtype), device=device,
                                attention=cfg.model.attention)}

    def place(self, module: TrainModule, device) -> TrainModule:
        return module.to(device)

    def load_init_state(self, module: TrainModule, state: dict[str, torch.Tensor]) -> None:
        self.load_trainable_state_dict(module, state)

    def save_final(self, module: TrainModule, output_dir) -> list:
        from pathlib import Path

        from safetensors.torch import save_file
        path = Path(output_dir) / f"{self.name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict(module).items()},
                  str(path))
        return [path]

    def build(self, models: dict) -> TrainModule:
        """``models`` holds the loaded frozen parts ("dit", and "vae"/"text_encoder" when needed)."""
        raise NotImplementedError

    def trainable_parameters(self, module: TrainModule) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def trainable_state_dict(self, module: TrainModule) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_trainable_state_dict(self, module: TrainModule, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def step_metrics(self, module: TrainModule) -> dict:
        """Extra numbers for this optimiser step's metrics.jsonl line (e.g. Edit-GRPO's reward means)."""
        return {}

    # --- randomness ---------------------------------------------------------------------------------------
    def draws(self, batch: dict, generator: torch.Generator) -> dict:
        """Flow-matching draws: a timestep id uniform over the shifted 1000-step schedule, and noise."""
        x0 = batch["target"]
        sigmas = training_sigmas(self.cfg.schedule.timestep_shift)
        ids = torch.randint(0, len(sigmas), (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
        return {"sigma": sigmas[ids].float(), "noise": noise}

    def sample_draws(self, items: list[dict], generators: list[torch.Generator]) -> dict:
        """The draws of one micro-batch: ``draws`` of each item alone with that item's generator, merged by
        :func:`merge_sample_draws`. Every draw then depends on the sample's global index, not on the rank or
        on where in a per-process batch the sample sits."""
        if len(items) != len(generators):
            raise ValueError(f"{len(items)} items but {len(generators)} generators")
        return merge_sample_draws([self.draws(self.collate([item]), g) for item, g in zip(items, generators)])

    # --- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, module: TrainModule, batch: dict, steps: int, shift: float, seed: int) -> torch.Tensor:
        """Edited latents for the first item(s) of ``batch``."""
        raise NotImplementedError


def merge_sample_draws(per_sample: list[dict]) -> dict:
    """One micro-batch's draws from per-sample ones (each made for a batch of one): tensors with a leading
    dimension of 1 are per-sample and are concatenated on dim 0; anything else (an int, a [2] seed pair) is a
    micro-step-wide draw and is taken from the micro-batch's first sample."""
    out = {}
    for key, first in per_sample[0].items():
        if torch.is_tensor(first) and first.ndim >= 1 and first.shape[0] == 1:
            out[key] = torch.cat([d[key] for d in per_sample])
        else:
            out[key] = first
    return out


def flow_match_loss(model_out: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE to the rectified-flow velocity ε − x0, in fp32."""
    return torch.nn.functional.mse_loss(model_out.float(), (noise - x0).float())


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ)·x0 + σ·ε with σ per sample."""
    s = sigma.to(x0.device, torch.float32).reshape(-1, *([1] * (x0.ndim - 1)))
    return ((1 - s) * x0.float() + s * noise.to(x0.device).float()).to(x0.dtype)
