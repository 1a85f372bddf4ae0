"""LoRA on the MLLM's language model: train with peft, merge in fp32, load Kiwi checkpoint LoRA.

Kiwi-Edit trains a peft LoRA (rank 64, alpha = rank, so scale 1, no dropout) on q/k/v/o of the
language model only; the vision tower stays frozen. Training checkpoints hold the A/B matrices as
``mllm.model.model.language_model.layers.N.self_attn.{q,k,v,o}_proj.lora_{A,B}.default.weight``;
the release has them merged as ``W += alpha/r * B @ A`` computed in fp32. Merging needs no peft.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import BackendUnavailableError, CheckpointError, InputError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")


def language_model_of(root: nn.Module) -> nn.Module:
    """The Qwen language model inside an MLLMEncoder or a Qwen2_5_VLForConditionalGeneration."""
    qwen = root.model if hasattr(root, "processor") else root
    try:
        return qwen.model.language_model
    except AttributeError:
        raise InputError(f"{type(root).__name__} holds no Qwen2.5-VL language model.") from None


def _language_prefix(root: nn.Module) -> str:
    return "model.model.language_model." if hasattr(root, "processor") else "model.language_model."


def add_lora(root: nn.Module, rank: int = 64, alpha: float | None = None, targets=LORA_TARGETS,
             adapter_name: str = "default") -> nn.Module:
    """Inject a trainable peft LoRA into the language model's ``targets`` (vision tower untouched).

    Every Qwen weight is frozen; only the LoRA A/B matrices train. Default peft init (B = 0), so
    the model's output is unchanged until training moves B.
    """
    if rank <= 0:
        raise InputError(f"LoRA rank must be positive, got {rank}.")
    try:
        import peft
    except ImportError:
        raise BackendUnavailableError("adding a trainable MLLM LoRA needs peft: pip install peft") from None
    qwen = root.model if hasattr(root, "processor") else root
    qwen.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank,
                             target_modules=list(targets), lora_dropout=0.0, bias="none")
    peft.inject_adapter_in_model(config, language_model_of(root), adapter_name=adapter_name)
    for name, param in qwen.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return root


def lora_state_dict(root: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA A/B tensors under ``root``'s parameter names (an encoder's names, prefixed with
    ``mllm.``, are the Kiwi training checkpoint's names)."""
    return {k: v.detach() for k, v in root.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def _lora_wrappers(module: nn.Module):
    for name, child in module.named_modules():
        if hasattr(child, "base_layer") and hasattr(child, "lora_A") and hasattr(child, "lora_B"):
            yield name, child


@torch.no_grad()
def merge_lora(root: nn.Module) -> int:
    """Merge every injected peft LoRA into its base weight (fp32 math) and remove the wrappers.

    Returns the number of merged layers.
    """
    merged = 0
    for name, wrapper in list(_lora_wrappers(root)):
        base = wrapper.base_layer
        if any(getattr(wrapper, "use_dora", {}).values()):
            raise InputError(f"{name}: DoRA adapters cannot be merged by this function.")
        for adapter in list(wrapper.lora_A.keys()):
            a = wrapper.lora_A[adapter].weight
            b = wrapper.lora_B[adapter].weight
            _add_delta(base.weight, b, a, float(wrapper.scaling[adapter]), name)
        parent_name, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent_name) if parent_name else root, child, base)
        merged += 1
    return merged


def _add_delta(weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float, where: str) -> None:
    if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(weight.shape):
        raise CheckpointError(f"{where}: LoRA B {list(b.shape)} @ A {list(a.shape)} does not fit the weight "
                              f"{list(weight.shape)}.")
    delta = b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)
    weight.copy_((weight.float() + scale * delta).to(weight.dtype))


def _normalise_module_path(path: str, prefix: str) -> str:
    """Map the LoRA module path onto ``root``'s names (older peft/transformers spellings accepted)."""
    for old in ("base_model.model.",):
        if path.startswith(old):
            path = path[len(old):]
    if path.startswith(prefix):
        return path
    # model.model.layers.N (transformers < 4.52 naming) -> model.model.language_model.layers.N
    legacy = prefix[: -len("language_model.")]
    if path.startswith(legacy + "layers."):
        return prefix + path[len(legacy):]
    return path


@torch.no_grad()
def merge_lora_tensors(root: nn.Module, tensors: Mapping, alpha: float | None = None,
                       source: str = "checkpoint") -> int:
    """Merge LoRA A/B tensors (keys relative to ``root``, e.g. an encoder's
    ``model.model.language_model.layers.N.self_attn.q_proj.lora_A.default.weight``) into the
    language model's weights: ``W += alpha/r * B @ A`` in fp32. ``alpha`` defaults to a stored
    ``<module>.alpha`` tensor, else to the rank (Kiwi's scale 1). Returns the merged layer count."""
    prefix = _language_prefix(root)
    pairs: dict[str, dict[str, str]] = {}
    alphas: dict[str, str] = {}
    for key in tensors:
        m = _LORA_KEY.match(key)
        if m:
            pairs.setdefault(_normalise_module_path(m["module"], prefix), {})[m["ab"]] = key
            continue
        m = _ALPHA_KEY.match(key)
        if m:
            alphas[_normalise_module_path(m["module"], prefix)] = key
            continue
        raise CheckpointError(f"{source}: {key!r} is not a LoRA key (expected ...lora_A/lora_B[.adapter].weight).")
    incomplete = [p for p, ab in pairs.items() if set(ab) != {"A", "B"}]
    if incomplete:
        raise CheckpointError(f"{source}: LoRA layers without both A and B: {', '.join(sorted(incomplete)[:8])}.")
    unknown = [p for p in pairs if not p.startswith(prefix)]
    if unknown:
        raise CheckpointError(f"{source}: LoRA for modules outside the MLLM language model: "
                              f"{', '.join(sorted(unknown)[:8])}.")
    for path, ab in sorted(pairs.items()):
        try:
            target = root.get_submodule(path)
        except AttributeError:
            raise CheckpointError(f"{source}: LoRA targets {path}, which the model does not have "
                                  "(a LoRA of another model size?).") from None
        target = getattr(target, "base_layer", target)
        if not isinstance(target, nn.Linear):
            raise CheckpointError(f"{source}: LoRA target {path} is a {type(target).__name__}, not a Linear.")
        a, b = tensors[ab["A"]], tensors[ab["B"]]
        rank = a.shape[0]
        if alpha is not None:
            scale = alpha / rank
        elif path in alphas:
            scale = float(tensors[alphas[path]]) / rank
        else:
            scale = 1.0
        _add_delta(target.weight, b, a, scale, f"{source}: {path}")
    return len(pairs)
