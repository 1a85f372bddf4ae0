"""Loading Wan video DiTs from every layout users hold, into ``WanDiT`` (original key layout).

Accepted sources (the format is read from key names and the folder layout, never from file names):

- ``original``: a Wan-AI style file (``blocks.0.self_attn.q.weight`` …), safetensors or a
  tensor-only ``.pt``/``.pth`` (read with weights_only=True), possibly under another prefix;
- ``comfyui``: the same under ``model.diffusion_model.``, including fp8 files (block linears in
  float8_e4m3fn, optional per-tensor ``scale_weight``);
- ``diffusers``: a ``WanTransformer3DModel`` folder (config.json + weights, sharded or not), a
  pipeline folder holding ``transformer/``, or a diffusers-layout file / state dict;
- ``kiwi-release``: a Kiwi-Edit release folder: ``transformer/`` plus ``source_embedder/`` and
  ``ref_embedder/`` (attached; ``ref_pad_first`` becomes ``reference_first``; the context enters
  cross-attention directly);
- ``kiwi-checkpoint``: a Kiwi (diffsynth) training checkpoint: ``dit.``/``pipe.dit.`` DiT keys,
  ``vae_condition.*`` (source embedder) and ``ref_vae_condition.*`` (reference embedder);
- an in-memory ``{name: tensor}`` state dict in any of these key layouts.

The model is built on the meta device and filled tensor by tensor (one copy of the weights).
The number of heads comes from a diffusers config.json, a ``num_heads`` safetensors metadata entry
(written by comfy_kiwi for custom widths), the ``num_heads`` argument, or the width (see
``wan_config.default_heads``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..attention import check_backend
from ..errors import CheckpointError, InputError
from ..models.wan_config import WanDiTConfig, infer_dit_config, preset_name
from ..models.wan_dit import WanDiT
from .dit_keys import CONCAT_SOURCE_PREFIX, KIWI_EMBEDDERS, diffusers_to_original_key, find_dit_prefixes, is_ignored
from .files import SAFETENSORS_SUFFIXES, LazyStateDict, load_into_module, open_state_dict

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Block linears: the only weights that may stay in fp8 (norms, embeddings, modulation, head stay wider).
BLOCK_LINEAR = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])\.weight$")
EMBEDDER_KEYS = {"patch_embedding.weight", "patch_embedding.bias"}
# Kiwi-Edit paper's learnable γ(t) source scale (comfy_kiwi.models.conditioning.SourceGamma), when trained
GAMMA_KEY = "gamma.table"
SOURCE_GAMMA_KEY = "source_embedder." + GAMMA_KEY
_EXPECTED = ("expected a Wan DiT: the original Wan layout (keys like 'blocks.0.self_attn.q.weight', optionally "
             "under 'model.diffusion_model.' (ComfyUI) or 'dit.' / 'pipe.dit.' (Kiwi training checkpoint)), a "
             "diffusers WanTransformer3DModel (keys like 'blocks.0.attn1.to_q.weight', or a folder with "
             "config.json), or a Kiwi-Edit release folder holding transformer/")


@dataclass
class _Plan:
    """Everything needed to build and fill the model, read from headers only."""

    state: LazyStateDict              # original-layout keys, embedders as source_embedder./ref_embedder.
    config: WanDiTConfig
    format: str
    name: str
    prefix: str = ""
    has_source: bool = False
    has_ref: bool = False
    has_concat_source: bool = False   # VIVA source_mixer.* keys present
    reference_first: bool = False
    context_embedding: str = "auto"


# --------------------------------------------------------------------------------------------------
# reading the source
# --------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object.")
    return data


def _has_weights(folder: Path) -> bool:
    return any(p.suffix.lower() in SAFETENSORS_SUFFIXES for p in folder.iterdir())


def _open(source) -> tuple[LazyStateDict, str, dict]:
    """(state, name for messages, folder facts: transformer config, embedder folders, release flag)."""
    facts: dict = {"config": None, "embedders": {}, "release": False}
    if isinstance(source, (LazyStateDict, Mapping)):
        state = open_state_dict(source)
        return state, state.describe_source(), facts
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; {_EXPECTED}.")
    if path.is_dir() and (path / "transformer").is_dir():      # a release / pipeline root
        root, path = path, path / "transformer"
        parts = [root / part for part in ("source_embedder", "ref_embedder") if (root / part).is_dir()]
        # An embedder folder holding only config.json (what a converter writes for a stage that trained
        # no such branch) means "no such branch": the model loads without it.
        facts["embedders"] = {p.name: p for p in parts if _has_weights(p) or list(p.glob("*.index.json"))}
        facts["release"] = bool(parts)
    if path.is_dir():
        if not _has_weights(path) and not list(path.glob("*.index.json")):
            raise CheckpointError(f"{path}: the folder holds no .safetensors weights; {_EXPECTED}.")
        if (path / "config.json").exists():
            facts["config"] = _read_json(path / "config.json")
    return open_state_dict(path), str(path), facts


def _parts_summary(state: LazyStateDict) -> list[str]:
    """What a checkpoint without a full DiT holds, for the error message."""
    keys = list(state)
    parts = []
    for prefix, what in (("vae_condition.patch_embedding.weight", "a source embedder (vae_condition.*)"),
                         ("ref_vae_condition.patch_embedding.weight", "a reference embedder (ref_vae_condition.*)")):
        if any(k == prefix or k.endswith("." + prefix) for k in keys):
            parts.append(what)
    n_mllm = sum(1 for k in keys if k.startswith(("mllm.", "pipe.mllm.")))
    if n_mllm:
        parts.append(f"MLLM parts ({n_mllm} tensors under mllm.*)")
    n_dit = sum(1 for k in keys if re.match(r"(pipe\.)?(dit\.)?blocks\.\d+\.", k))
    if n_dit:
        lora = any("lora_" in k for k in keys if ".blocks." in k or k.startswith("blocks."))
        parts.append(f"{n_dit} DiT block tensors ({'LoRA' if lora else 'a partial DiT'})")
    if set(keys) == EMBEDDER_KEYS:
        parts.append("one Kiwi-Edit condition embedder (patch_embedding.* only)")
    return parts


def _not_a_dit(name: str, state: LazyStateDict) -> CheckpointError:
    parts = _parts_summary(state)
    if parts:
        return CheckpointError(f"{name}: holds {', '.join(parts)} but no full DiT weights (a stage-1 Kiwi "
                               f"checkpoint or an embedder file?); {_EXPECTED}.")
    sample = ", ".join(list(state)[:5]) or "(no tensors)"
    return CheckpointError(f"{name}: not a Wan DiT checkpoint; {_EXPECTED}. Found keys such as: {sample}.")


# --------------------------------------------------------------------------------------------------
# planning: layout, config, embedders
# --------------------------------------------------------------------------------------------------

def _check_diffusers_config(cfg: WanDiTConfig, dcfg: dict, name: str) -> None:
    if dcfg.get("image_dim") or dcfg.get("added_kv_proj_dim"):
        raise CheckpointError(f"{name}: an image-to-video Wan DiT (image_dim / added_kv_proj_dim in config.json); "
                              "only the text/video DiTs (T2V, TI2V, Kiwi-Edit) are supported.")
    checks = {"in_channels": cfg.in_dim, "out_channels": cfg.out_dim, "text_dim": cfg.text_dim,
              "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
              "patch_size": list(cfg.patch_size), "attention_head_dim": cfg.head_dim}
    for key, actual in checks.items():
        value = dcfg.get(key)
        if value is not None and value != actual:
            raise CheckpointError(f"{name}: config.json says {key}={value!r} but the weights have {actual!r}; "
                                  "the config does not belong to these weights.")


def _embedder_folder(folder: Path, key_prefix: str) -> tuple[LazyStateDict, dict]:
    state = open_state_dict(folder)
    allowed = EMBEDDER_KEYS | {GAMMA_KEY} if key_prefix == "source_embedder." else EMBEDDER_KEYS
    if not EMBEDDER_KEYS <= set(state) <= allowed:
        raise CheckpointError(f"{folder}: expected a Kiwi-Edit condition embedder (keys patch_embedding.weight, "
                              f"patch_embedding.bias{', optionally gamma.table' if GAMMA_KEY in allowed else ''}), "
                              f"found keys: {', '.join(list(state)[:6])}.")
    cfg = _read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    return state.renamed(lambda k: key_prefix + k), cfg


def _plan(source, num_heads: int | None = None) -> _Plan | None:
    """The loading plan, or None when the source holds no full Wan DiT."""
    state, name, facts = _open(source)
    found = find_dit_prefixes(state)
    if not found:
        return None
    if len(found) > 1:
        raise CheckpointError(f"{name}: holds more than one DiT (key prefixes "
                              f"{sorted(repr(p) for p, _ in found)}); pass a file with a single DiT.")
    prefix, layout = found.pop()
    dit = state.with_prefix(prefix) if prefix else state
    dit = dit.renamed(lambda k: None if is_ignored(k) else
                      (diffusers_to_original_key(k) if layout == "diffusers" else k))
    if not prefix:  # a bare DiT file: Kiwi parts are picked up below, anything else is reported
        dit = dit.renamed(lambda k: None if k.startswith((*KIWI_EMBEDDERS, "mllm.")) else k)
    if any(k.startswith("img_emb.") for k in dit):
        raise CheckpointError(f"{name}: an image-to-video Wan DiT (img_emb.* keys); only the text/video DiTs "
                              "(Wan2.1 T2V, Wan2.2 TI2V, Kiwi-Edit) are supported.")

    dcfg = facts["config"]
    hint = num_heads or (dcfg or {}).get("num_attention_heads") or state.metadata.get("num_heads")
    cfg = infer_dit_config(dit, num_heads=int(hint) if hint else None, where=name)
    if dcfg is not None:
        _check_diffusers_config(cfg, dcfg, name)
        if dcfg.get("eps") is not None:
            cfg = replace(cfg, eps=float(dcfg["eps"]))

    plan = _Plan(state=dit, config=cfg, name=name, prefix=prefix,
                 format="diffusers" if layout == "diffusers" else "original")
    if prefix == "model.diffusion_model.":
        plan.format = "comfyui"
    _add_checkpoint_embedders(plan, state)
    _add_release_embedders(plan, facts)
    plan.has_concat_source = any(k.startswith(CONCAT_SOURCE_PREFIX) for k in plan.state)
    return plan


def _add_checkpoint_embedders(plan: _Plan, state: LazyStateDict) -> None:
    """Kiwi training checkpoint: ``vae_condition.*`` / ``ref_vae_condition.*`` beside the ``dit.`` keys."""
    prefix = plan.prefix
    root = prefix[:-len("dit.")] if prefix.endswith("dit.") else (prefix if prefix in ("", "pipe.") else None)
    if root is not None:
        for ckpt_prefix, attr in KIWI_EMBEDDERS.items():
            part = state.with_prefix(root + ckpt_prefix)
            if part:
                plan.state = plan.state.merged(part.renamed(lambda k, a=attr: a + k))
                plan.has_source |= attr == "source_embedder."
                plan.has_ref |= attr == "ref_embedder."
    if prefix.endswith("dit.") or prefix.startswith("pipe.") or plan.has_source or plan.has_ref:
        plan.format, plan.context_embedding = "kiwi-checkpoint", "none"


def _as_bool(value) -> bool:
    return value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def _add_release_embedders(plan: _Plan, facts: dict) -> None:
    """Kiwi-Edit release folder: ``source_embedder/`` and ``ref_embedder/`` (with ``ref_pad_first``)."""
    for part, attr in (("source_embedder", "source_embedder."), ("ref_embedder", "ref_embedder.")):
        folder = facts["embedders"].get(part)
        if folder is None:
            continue
        emb_state, emb_cfg = _embedder_folder(folder, attr)
        plan.state = plan.state.merged(emb_state)
        if part == "source_embedder":
            plan.has_source = True
        else:
            plan.has_ref = True
            plan.reference_first = _as_bool(emb_cfg.get("ref_pad_first", False))
    if facts["release"]:
        plan.format, plan.context_embedding = "kiwi-release", "none"


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------

def _stored_dtypes(state: LazyStateDict) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, block-linear storage dtype) of a checkpoint as stored."""
    linear = next((state.dtype(k) for k in state if BLOCK_LINEAR.match(k)), torch.float32)
    compute = state.dtype("patch_embedding.weight")
    if compute not in COMPUTE_DTYPES:
        compute = next((state.dtype(k) for k in state if state.dtype(k) in COMPUTE_DTYPES
                        and not k.endswith("scale_weight")), torch.bfloat16)
    return compute, linear


def _dtype_rule(state: LazyStateDict, dtype: torch.dtype | None):
    """``dtype_for(name, stored)`` for load_into_module, and the compute dtype."""
    if dtype is None:
        compute, _ = _stored_dtypes(state)
        linear = None                                   # keep fp8 as stored; others → compute
    elif dtype in FP8_DTYPES:
        compute, linear = torch.bfloat16, dtype
    elif dtype in COMPUTE_DTYPES:
        compute, linear = dtype, dtype
    else:
        raise InputError(f"DiT dtype {dtype} is not supported; use torch.float32, float16, bfloat16, or "
                         "float8_e4m3fn / float8_e5m2 (block linear weights stored in fp8, computed in bf16).")

    def dtype_for(name: str, stored: torch.dtype) -> torch.dtype:
        if name.endswith("scale_weight"):
            return torch.float32
        if BLOCK_LINEAR.match(name):
            if linear is not None:
                return linear
            return stored if stored in FP8_DTYPES else compute
        return compute
    return dtype_for, compute


# --------------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------------

def _weight_scales(state: LazyStateDict) -> dict[str, tuple[int, ...]]:
    """``{linear module path: scale shape}`` of a scaled-fp8 checkpoint (empty for other files)."""
    return {k[:-len(".scale_weight")]: tuple(state.shape(k)) for k in state if k.endswith(".scale_weight")}


def build_empty(config: WanDiTConfig, has_source: bool = False, has_ref: bool = False,
                scales: dict[str, tuple[int, ...]] | None = None, has_concat_source: bool = False,
                has_source_gamma: bool = False) -> WanDiT:
    """The model skeleton on the meta device (no memory), with embedders and fp8 scales as needed."""
    with torch.device("meta"):
        model = WanDiT(config)
        model.attach_condition_embedders(source=has_source, reference=has_ref)
        if has_source and has_source_gamma:      # Kiwi-Edit paper's γ(t) (key source_embedder.gamma.table)
            model.source_embedder.attach_gamma()
        if has_concat_source:      # VIVA channel-concat source (source_mode "concat")
            from ..methods.viva_source import CHANNEL_CONCAT
            model.attach_source_strategy(CHANNEL_CONCAT)
    modules = dict(model.named_modules())
    for path, shape in (scales or {}).items():
        if hasattr(modules.get(path), "enable_weight_scale"):
            modules[path].enable_weight_scale(shape)
    return model


def load_dit(source, dtype: torch.dtype | None = None, device="cpu", attention: str = "auto", *,
             num_heads: int | None = None) -> WanDiT:
    """Load a Wan DiT (see the module docstring for accepted sources).

    ``dtype`` None keeps the stored precision (fp8 block linears stay fp8 and are upcast per layer;
    everything else uses the file's float dtype); a float dtype casts everything; an fp8 dtype
    stores the block linears in fp8 and computes in bf16. ``num_heads`` is only needed for custom
    widths without a config.json. Raises :class:`CheckpointError` naming the source and the missing,
    mis-shaped or unexpected keys.
    """
    device = torch.device(device)
    check_backend(attention, device)
    plan = _plan(source, num_heads)
    if plan is None:
        state, name, _ = _open(source)
        raise _not_a_dit(name, state)
    dtype_for, _ = _dtype_rule(plan.state, dtype)
    model = build_empty(plan.config, plan.has_source, plan.has_ref, _weight_scales(plan.state), plan.has_concat_source,
                        SOURCE_GAMMA_KEY in plan.state)
    arch = preset_name(plan.config)
    converted = plan.format in ("diffusers", "kiwi-release")
    naming = "; known key names are shown in the original Wan layout" if converted else ""
    load_into_module(model, plan.state, what=f"Wan DiT ({arch}, read as {plan.format} layout{naming})",
                     dtype_for=dtype_for, device=device)
    model.reference_first = plan.reference_first
    model.context_embedding = plan.context_embedding
    model.attention_backend = attention
    return model.eval().requires_grad_(False)


def describe_dit(source) -> dict | None:
    """JSON-serialisable facts about a DiT source (headers only), or None when it holds no Wan DiT.

    ``{"kind": "dit", "format", "architecture": preset name or "custom", "config", "dtype",
    "weight_dtype", "has_source_embedder", "has_ref_embedder", "reference_first",
    "context_embedding", "prefix", "parameters", "source"}``. A lone Kiwi-Edit embedder folder
    (a release's ``source_embedder/`` or ``ref_embedder/``) is ``{"kind": "kiwi-embedder", ...}``.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir() and not (path / "transformer").is_dir() and not _has_weights(path):
            return None
    plan = _plan(source)
    if plan is None:
        return _describe_embedder(source)
    compute, linear = _stored_dtypes(plan.state)
    scaled = _weight_scales(plan.state)
    skeleton = build_empty(plan.config, plan.has_source, plan.has_ref, scaled, plan.has_concat_source)
    expected = skeleton.state_dict()
    return {"kind": "dit", "format": plan.format, "architecture": preset_name(plan.config),
            "config": plan.config.to_dict(), "dtype": _name(compute), "weight_dtype": _name(linear),
            "fp8_scaled": bool(scaled), "has_source_embedder": plan.has_source, "has_ref_embedder": plan.has_ref,
            "has_concat_source": plan.has_concat_source, "reference_first": plan.reference_first, "context_embedding": plan.context_embedding,
            "prefix": plan.prefix, "parameters": sum(p.numel() for p in skeleton.parameters()),
            "missing_keys": sum(1 for k in expected if k not in plan.state), "source": plan.name}


def _describe_embedder(source) -> dict | None:
    if not isinstance(source, (str, Path)) or not Path(source).expanduser().is_dir():
        return None
    folder = Path(source).expanduser()
    state = open_state_dict(folder)
    if not EMBEDDER_KEYS <= set(state) <= EMBEDDER_KEYS | {GAMMA_KEY}:
        return None
    cfg = _read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    w = state.shape("patch_embedding.weight")                    # [dim, in, pt, ph, pw]
    return {"kind": "kiwi-embedder", "in_dim": w[1], "dim": w[0], "patch_size": list(w[2:]),
            "ref_pad_first": cfg.get("ref_pad_first"), "dtype": _name(state.dtype("patch_embedding.weight"))}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
