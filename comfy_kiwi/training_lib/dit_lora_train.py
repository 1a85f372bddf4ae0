"""A trainable LoRA on a Wan DiT's block linears (the consumer fine-tuning path).

The base DiT is never modified: each target linear gets a forward hook adding
``(alpha / rank) · B(A(x))`` to its output, so the base may be stored in bf16 or fp8 (``CastLinear``
upcasts per call), swapped block by block, or recomputed under gradient checkpointing — the LoRA
tensors live in this adapter, outside the blocks. Initialisation as peft: A Kaiming-uniform, B zero, so
training starts from the base model's output.

Names: ``blocks.N.self_attn.q.lora_A.weight`` / ``.lora_B.weight`` (original Wan layout);
:meth:`DiTLoraAdapter.comfyui_state_dict` adds the ``diffusion_model.`` prefix and ``.alpha``, the keys
ComfyUI's LoraLoader and ``comfy_kiwi.models.dit_lora`` read.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .checkpoint_export import dit_lora_to_comfyui

# self-attention, cross-attention and FFN linears of every block
DEFAULT_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                   "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
_KEY = re.compile(r"^(blocks\.\d+\..+)\.lora_([AB])\.weight$")


class LoraPair(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, dtype, device, generator):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=torch.float32))
        bound = 1 / math.sqrt(in_features)          # kaiming_uniform_(a=√5) of a [rank, in] weight
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)
        self.lora_A.data = self.lora_A.data.to(device, dtype)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))


class _Hook:
    def __init__(self, pair: LoraPair, scale: float):
        self.pair, self.scale = pair, scale

    def __call__(self, module, args, output):
        a, b = self.pair.lora_A, self.pair.lora_B
        return output + (F.linear(F.linear(args[0].to(a.dtype), a), b) * self.scale).to(output.dtype)


class DiTLoraAdapter(nn.Module):
    """Trainable LoRA pairs for ``targets`` (module paths inside each block) of every DiT block."""

    def __init__(self, dit: nn.Module, rank: int = 32, alpha: float | None = None, targets=DEFAULT_TARGETS,
                 dtype=torch.float32, seed: int = 0):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise InputError(f"DiT LoRA rank must be a positive whole number, got {rank!r}.")
        self.rank, self.alpha = rank, float(alpha if alpha else rank)
        if self.alpha <= 0:
            raise InputError(f"DiT LoRA alpha must be positive, got {alpha!r}.")
        targets = list(targets)
        if not targets:
            raise InputError(f"DiT LoRA targets are empty; choose from {', '.join(DEFAULT_TARGETS)}.")
        self.names: list[str] = []
        self.pairs = nn.ModuleList()
        self._linears: list[nn.Module] = []
        self._handles = []
        g = torch.Generator().manual_seed(seed)
        device = next(dit.parameters()).device
        for i, block in enumerate(dit.blocks):
            modules = dict(block.named_modules())
            for t in targets:
                lin = modules.get(t)
                if not isinstance(lin, nn.Linear):
                    raise InputError(f"DiT LoRA target {t!r} is not a linear layer of a Wan block; choose from "
                                     f"{', '.join(DEFAULT_TARGETS)}.")
                self.names.append(f"blocks.{i}.{t}")
                self.pairs.append(LoraPair(lin.in_features, lin.out_features, rank, dtype, device, g))
                self._linears.append(lin)
        self.attach()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def attach(self) -> None:
        if not self._handles:
            self._handles = [lin.register_forward_hook(_Hook(pair, self.scale))
                             for lin, pair in zip(self._linears, self.pairs)]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # --- state ------------------------------------------------------------------------------------------
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, pair in zip(self.names, self.pairs):
            out[f"{name}.lora_A.weight"] = pair.lora_A.detach()
            out[f"{name}.lora_B.weight"] = pair.lora_B.detach()
        return out

    def load_lora_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
        """Copy ``blocks.N.<target>.lora_{A,B}.weight`` tensors in; returns our keys that were absent."""
        ours = {f"{n}.lora_{ab}.weight": getattr(p, f"lora_{ab}") for n, p in zip(self.names, self.pairs)
                for ab in "AB"}
        unknown = [k for k in state if k not in ours]
        if unknown:
            raise InputError(f"DiT LoRA state: unexpected keys {', '.join(sorted(unknown)[:6])} (rank, targets "
                             "or block count differ from this run's?).")
        bad = [f"{k} {list(v.shape)} vs {list(ours[k].shape)}" for k, v in state.items() if v.shape != ours[k].shape]
        if bad:
            raise InputError(f"DiT LoRA state: mis-shaped tensors {', '.join(bad[:4])} (another rank?).")
        missing = [k for k in ours if k not in state]
        if missing and strict:
            raise InputError(f"DiT LoRA state: missing {', '.join(missing[:6])}.")
        with torch.no_grad():
            for k, v in state.items():
                ours[k].copy_(v.to(ours[k].dtype))
        return missing

    def comfyui_state_dict(self) -> dict[str, torch.Tensor]:
        """``diffusion_model.<module>.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha`` (ComfyUI LoraLoader)."""
        return dit_lora_to_comfyui({k: v.float().cpu() for k, v in self.lora_state_dict().items()}, self.alpha)

    @torch.no_grad()
    def merged_into(self, dit: nn.Module) -> nn.Module:
        """``dit`` with ``W += scale · B @ A`` applied in place (fp32 math; for checks and exports)."""
        modules = dict(dit.named_modules())
        for name, pair in zip(self.names, self.pairs):
            lin = modules[name]
            delta = pair.lora_B.float() @ pair.lora_A.float() * self.scale
            lin.weight.copy_((lin.weight.float() + delta.to(lin.weight.device)).to(lin.weight.dtype))
        return dit
