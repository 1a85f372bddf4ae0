"""Convert this project's trainable parts to / from the Kiwi-Edit diffsynth training-checkpoint
key names (release facts §2), and export a trained DiT LoRA in the ComfyUI LoRA format.

Parts, as our modules name them:

- ``dit``: original Wan keys, including ``source_embedder.patch_embedding.*`` and
  ``ref_embedder.patch_embedding.*`` (Kiwi: ``vae_condition.*`` / ``ref_vae_condition.*``);
- ``mllm``: encoder extras ``image_queries``, ``video_queries``, ``ref_queries``,
  ``connector.*``, ``ref_connector.*`` (Kiwi: ``mllm.<x>_queries.q``, ``mllm.connetor.*`` [sic],
  ``mllm.ref_connector.*``);
- ``mllm_lora``: keys as ``comfy_kiwi.mllm.lora.lora_state_dict`` returns them
  (``model.model.language_model.layers.N.self_attn.q_proj.lora_A.default.weight``); Kiwi
  prefixes them with ``mllm.``;
- ``mllm_model``: whole Qwen2.5-VL weights as the encoder names them (``model.model.language_model.*``,
  ``model.model.visual.*``), for a language model trained in full (the toy world's, trained from
  scratch); ``mllm.`` in front, as diffsynth names every tensor of the ``mllm`` module.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.loading.dit_keys import KIWI_EMBEDDERS

PARTS = ("dit", "mllm", "mllm_lora", "mllm_model")

# our DiT embedder prefix -> Kiwi top-level prefix
_EMBEDDERS = {ours: kiwi for kiwi, ours in KIWI_EMBEDDERS.items()}
_QUERIES = ("image_queries", "video_queries", "ref_queries")
# our MLLM module prefix -> Kiwi prefix (the release misspells "connetor")
_MLLM_MODULES = {"connector.": "mllm.connetor.", "ref_connector.": "mllm.ref_connector."}
_MLLM_LORA = re.compile(
    r"model\.model\.language_model\.layers\.\d+\.self_attn\.[qkvo]_proj\.lora_[AB]\.default\.weight$")
_DIT_LORA = re.compile(r"^(?:pipe\.dit\.|dit\.|base_model\.model\.)*(.+?)\.lora_([AB])(?:\.default)?\.weight$")


def _dit_to_kiwi(key: str) -> str:
    for ours, kiwi in _EMBEDDERS.items():
        if key.startswith(ours):
            return kiwi + key[len(ours):]
    return "dit." + key


def _mllm_to_kiwi(key: str) -> str:
    if key in _QUERIES:
        return f"mllm.{key}.q"
    for ours, kiwi in _MLLM_MODULES.items():
        if key.startswith(ours):
            return kiwi + key[len(ours):]
    raise InputError(f"to_kiwi_training_keys: unknown MLLM tensor {key!r} (expected "
                     f"{', '.join(_QUERIES)}, connector.* or ref_connector.*).")


def to_kiwi_training_keys(state: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Flatten ``{"dit": ..., "mllm": ..., "mllm_lora": ...}`` (any subset) into one state dict
    under the Kiwi training-checkpoint names (as saved with ``--remove_prefix_in_ckpt pipe.``)."""
    unknown = set(state) - set(PARTS)
    if unknown:
        raise InputError(f"to_kiwi_training_keys: unknown parts {sorted(unknown)}; expected {PARTS}.")
    out: dict[str, torch.Tensor] = {}

    def put(key, value):
        if key in out:
            raise InputError(f"to_kiwi_training_keys: two tensors map to {key!r}.")
        out[key] = value

    for key, value in state.get("dit", {}).items():
        put(_dit_to_kiwi(key), value)
    for key, value in state.get("mllm", {}).items():
        put(_mllm_to_kiwi(key), value)
    for key, value in state.get("mllm_lora", {}).items():
        if not _MLLM_LORA.match(key):
            raise InputError(f"to_kiwi_training_keys: {key!r} is not a language-model q/k/v/o LoRA key "
                             "(model.model.language_model.layers.N.self_attn.q_proj.lora_A.default.weight).")
        put("mllm." + key, value)
    for key, value in state.get("mllm_model", {}).items():
        if not key.startswith("model.") or _MLLM_LORA.match(key):
            raise InputError(f"to_kiwi_training_keys: {key!r} is not a Qwen2.5-VL weight of the encoder "
                             "(model.model.language_model.* / model.model.visual.*).")
        put("mllm." + key, value)
    return out


def from_kiwi_training_keys(flat: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a Kiwi training checkpoint back into ``{"dit", "mllm", "mllm_lora"}`` with our names.
    Accepts the ``pipe.`` prefix too (the converter handles both)."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
    for raw, value in flat.items():
        key = raw[len("pipe."):] if raw.startswith("pipe.") else raw
        if key.startswith("dit."):
            parts["dit"][key[len("dit."):]] = value
            continue
        embedder = next((ours for ours, kiwi in _EMBEDDERS.items() if key.startswith(kiwi)), None)
        if embedder is not None:
            parts["dit"][embedder + key[len(_EMBEDDERS[embedder]):]] = value
            continue
        if not key.startswith("mllm."):
            raise CheckpointError(f"from_kiwi_training_keys: unexpected tensor {raw!r} (known prefixes: dit., "
                                  "vae_condition., ref_vae_condition., mllm.).")
        inner = key[len("mllm."):]
        query = inner[:-len(".q")] if inner.endswith(".q") else None
        if query in _QUERIES:
            parts["mllm"][query] = value
        elif _MLLM_LORA.match(inner):
            parts["mllm_lora"][inner] = value
        elif inner.startswith("model."):
            parts["mllm_model"][inner] = value
        else:
            module = next((ours for ours, kiwi in _MLLM_MODULES.items() if key.startswith(kiwi)), None)
            if module is None:
                raise CheckpointError(f"from_kiwi_training_keys: unexpected MLLM tensor {raw!r} (known: "
                                      "*_queries.q, connetor.*, ref_connector.*, language-model LoRA A/B, model.*).")
            parts["mllm"][module + key[len(_MLLM_MODULES[module]):]] = value
    return parts


def dit_lora_to_comfyui(lora_state: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """ComfyUI LoRA keys ``diffusion_model.<module>.lora_A.weight`` / ``.lora_B.weight`` /
    ``.alpha`` from DiT LoRA tensors named ``<module>.lora_{A,B}[.default].weight`` in the original
    Wan layout (optionally under ``dit.`` / ``pipe.dit.`` / peft's ``base_model.model.``).
    ``alpha`` is the training lora_alpha, so the scale stays alpha / rank."""
    if alpha <= 0:
        raise InputError(f"dit_lora_to_comfyui: alpha must be positive, got {alpha}.")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora_state.items():
        m = _DIT_LORA.match(key)
        if m is None:
            raise InputError(f"dit_lora_to_comfyui: {key!r} is not a DiT LoRA A/B key "
                             "(e.g. blocks.0.self_attn.q.lora_A.weight).")
        layers.setdefault(m.group(1), {})[m.group(2)] = value
    if not layers:
        raise InputError("dit_lora_to_comfyui: the LoRA state is empty.")
    out: dict[str, torch.Tensor] = {}
    for module, ab in sorted(layers.items()):
        if set(ab) != {"A", "B"}:
            raise InputError(f"dit_lora_to_comfyui: layer {module} lacks lora_{'B' if 'A' in ab else 'A'}.")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise InputError(f"dit_lora_to_comfyui: layer {module} has A {list(a.shape)} and B {list(b.shape)}.")
        base = "diffusion_model." + module
        out[base + ".lora_A.weight"] = a.detach().contiguous()
        out[base + ".lora_B.weight"] = b.detach().contiguous()
        out[base + ".alpha"] = torch.tensor(float(alpha))
    return out
