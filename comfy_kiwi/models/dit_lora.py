"""LoRA on a Wan DiT, applied for one run without touching the (shared, cached) base weights.

Accepted key formats (one file may use any of them):

- ComfyUI LoraLoader / the trainer: ``diffusion_model.blocks.N.self_attn.q.lora_A.weight``,
  ``.lora_B.weight``, ``.alpha`` (also under ``model.diffusion_model.`` or with no prefix);
- ``lora_down.weight`` / ``lora_up.weight`` instead of ``lora_A`` / ``lora_B``; peft's
  ``lora_A.default.weight``;
- diffusers module names under ``transformer.`` (``blocks.N.attn1.to_q`` ...), mapped onto the
  original layout with the DiT key map;
- kohya-style flattened names (``lora_unet_blocks_0_self_attn_q.lora_down.weight``).

The delta of one layer is ``strength · (alpha / rank) · B @ A`` (alpha absent: alpha = rank).
Instead of adding it to the weight (which would modify a model other nodes share, lose precision
when undone in bf16 and not work on fp8 weights), the delta is applied as a forward hook computing
``strength · scale · B(A(x))`` next to the layer; removing the hook restores the model exactly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..loading.dit_keys import diffusers_to_original_key

log = logging.getLogger(__name__)

_SUFFIXES = (  # longest first, so ".lora_A.default.weight" wins over shorter matches
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.",
             "pipe.dit.", "dit.", "lora_unet_")
_DIFFUSERS_HINTS = ("attn1.", "attn2.", "ffn.net.", "proj_out", "condition_embedder.")


@dataclass
class LoraLayer:
    module: str                    # module path in the original Wan layout, e.g. "blocks.0.self_attn.q"
    down: torch.Tensor             # A: [rank, in]
    up: torch.Tensor               # B: [out, rank]
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self, strength: float = 1.0) -> torch.Tensor:
        """The full weight delta ``strength · scale · B @ A`` (fp32), for merging or checking."""
        return (self.up.float() @ self.down.float()) * (strength * self.scale)


@dataclass
class DiTLora:
    layers: dict[str, LoraLayer]
    source: str = "LoRA"
    unknown_keys: list[str] = field(default_factory=list)   # keys that are not LoRA A/B/alpha at all

    def match(self, model: nn.Module) -> tuple[list[tuple[nn.Linear, LoraLayer]], list[str]]:
        """(linear layer, LoRA layer) pairs, and a description of every LoRA layer that fits nothing."""
        modules = dict(model.named_modules())
        flat = {name.replace(".", "_"): name for name in modules if name}      # kohya-style names
        pairs, unmatched = [], []
        for name, layer in self.layers.items():
            target = modules.get(name) if name else None
            if target is None and name in flat:
                target = modules[flat[name]]
            if target is None:
                unmatched.append(f"{name} (no such layer)")
            elif not isinstance(target, nn.Linear):
                unmatched.append(f"{name} (a {type(target).__name__}; only linear layers take LoRA)")
            elif layer.down.shape[1] != target.in_features or layer.up.shape[0] != target.out_features:
                unmatched.append(f"{name} (LoRA {layer.up.shape[0]}x{layer.down.shape[1]} vs layer "
                                 f"{target.out_features}x{target.in_features})")
            else:
                pairs.append((target, layer))
        return pairs, unmatched


def _module_name(key: str) -> tuple[str, str] | None:
    """(module path in the original layout, part) of one LoRA key, or None when it is not one."""
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            name = key[:-len(suffix)]
            break
    else:
        return None
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    if any(h in name for h in _DIFFUSERS_HINTS):
        name = diffusers_to_original_key(name)
    return name, part


def parse_lora(state: Mapping[str, torch.Tensor], source: str = "LoRA") -> DiTLora:
    """Group the tensors of a LoRA state dict by layer (see the module docstring for the formats)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key in state:
        found = _module_name(key)
        if found is None:
            unknown.append(key)
            continue
        name, part = found
        parts.setdefault(name, {})[part] = state[key]
    layers, broken = {}, []
    for name, p in parts.items():
        if "down" not in p or "up" not in p:
            broken.append(name)
            continue
        down, up = p["down"], p["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise CheckpointError(f"{source}: LoRA layer {name} has A {list(down.shape)} and B {list(up.shape)}; "
                                  "expected A [rank, in] and B [out, rank] (linear layers only).")
        alpha = float(p["alpha"].float().reshape(-1)[0]) if "alpha" in p else None
        layers[name] = LoraLayer(name, down.detach(), up.detach(), alpha)
    if broken:
        raise CheckpointError(f"{source}: LoRA layers with only one of A/B: {', '.join(sorted(broken)[:6])}.")
    if not layers:
        sample = ", ".join(list(state)[:4]) or "(no tensors)"
        raise CheckpointError(f"{source}: no LoRA layers found. Expected keys like "
                              "'diffusion_model.blocks.0.self_attn.q.lora_A.weight' / '.lora_B.weight' / '.alpha' "
                              f"(or lora_down/lora_up); found keys such as: {sample}.")
    return DiTLora(layers, source, unknown)


def load_dit_lora(path) -> DiTLora:
    """Read a LoRA file (safetensors; pickles only as plain tensors) and parse it."""
    from ..loading.files import open_state_dict
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: LoRA file not found.")
    state = open_state_dict(path)
    return parse_lora({k: state[k] for k in state}, source=str(path))


class _LoraHook:
    """Forward hook adding ``scale · B(A(x))`` to a linear layer's output."""

    def __init__(self, layer: LoraLayer, strength: float, device, dtype):
        self.down = layer.down.to(device, dtype)
        self.up = layer.up.to(device, dtype)
        self.scale = float(strength) * layer.scale

    def __call__(self, module, args, output):
        x = args[0].to(self.down.dtype)
        return output + (F.linear(F.linear(x, self.down), self.up) * self.scale).to(output.dtype)


@dataclass
class LoraReport:
    applied: int = 0
    unmatched: list[str] = field(default_factory=list)


@contextlib.contextmanager
def loras_applied(model: nn.Module, loras: Sequence[tuple[DiTLora, float]]) -> Iterator[LoraReport]:
    """Within the block, ``model`` computes with every (LoRA, strength) added; afterwards it is as before."""
    report = LoraReport()
    handles = []
    try:
        if loras:
            ref = next(p for p in model.parameters() if p.dtype.is_floating_point and p.dtype.itemsize > 1)
            for lora, strength in loras:
                if strength == 0:
                    continue
                pairs, unmatched = lora.match(model)
                report.unmatched += [f"{lora.source}: {u}" for u in unmatched]
                for module, layer in pairs:
                    handles.append(module.register_forward_hook(_LoraHook(layer, strength, ref.device, ref.dtype)))
                    report.applied += 1
            if report.unmatched:
                log.warning("LoRA layers that fit no DiT layer were skipped: %s", "; ".join(report.unmatched[:10]))
        yield report
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class DiTHandle:
    """A DiT plus the LoRAs to apply while it runs: what flows between ComfyUI nodes as KIWI_DIT.

    Adding a LoRA returns a new handle; the (possibly cached and shared) model is never modified.
    """

    model: nn.Module
    loras: tuple[tuple[DiTLora, float], ...] = ()

    def with_lora(self, lora: DiTLora, strength: float) -> "DiTHandle":
        return DiTHandle(self.model, self.loras + ((lora, float(strength)),))

    def applied(self):
        return loras_applied(self.model, self.loras)
