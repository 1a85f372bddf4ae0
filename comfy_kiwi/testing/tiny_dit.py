"""Tiny random Wan DiTs for tests: configs, the model, its diffusers twin, and files in every layout.

Every parameter is randomised (norm gains, modulation tables and the Kiwi embedders included), so
numerical comparisons catch any wiring mistake. Layout writers cover what users hold: original Wan
files, ComfyUI files (``model.diffusion_model.`` prefix, fp8 with or without ``scale_weight``),
diffusers ``transformer/`` folders (single file or sharded), Kiwi-Edit release folders and
Kiwi (diffsynth) training checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loading.dit_keys import original_to_diffusers_key
from ..loading.dit_loader import BLOCK_LINEAR
from ..models.wan_config import PRESETS, WanDiTConfig, default_heads
from ..models.wan_dit import WanDiT

FP8 = torch.float8_e4m3fn


def tiny_config(kind: str = "2.1", **overrides) -> WanDiTConfig:
    """``tiny-wan2.1`` (in/out 16, head width 32) or ``tiny-wan2.2`` (in/out 48, head width 128)."""
    return replace(PRESETS[f"tiny-wan{kind}"], **overrides)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random values everywhere: gains ~1±0.2, weights ~1/sqrt(fan_in), biases and tables ~0.1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("modulation"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


def tiny_dit(kind: str = "2.1", seed: int = 0, embedders: bool = False, reference_first: bool = False,
             config: WanDiTConfig | None = None) -> WanDiT:
    """A randomised fp32 WanDiT; with ``embedders`` also random (non-zero) source/reference embedders."""
    model = WanDiT(config or tiny_config(kind))
    if embedders:
        model.attach_condition_embedders(reference_first=reference_first)
    return randomize_(model, seed).eval()


def random_inputs(model: WanDiT, frames: int = 2, height: int = 6, width: int = 10, batch: int = 1,
                  context_len: int = 7, context_width: int | None = None, seed: int = 1) -> dict:
    """Latents [B, C, F, H, W], timesteps [B] and a context [B, L, width] (default: text_dim)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(batch, c.in_dim, frames, height, width, generator=g),
            "timestep": torch.rand(batch, generator=g) * 1000,
            "context": torch.randn(batch, context_len, context_width or c.text_dim, generator=g)}


# --------------------------------------------------------------------------------------------------
# state dicts and the diffusers twin
# --------------------------------------------------------------------------------------------------

def _dit_only(model: WanDiT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(("source_embedder.", "ref_embedder."))}


def original_state_dict(model: WanDiT, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The DiT's weights in the original layout (embedders excluded), optionally cast."""
    return {k: v.to(dtype) if dtype else v for k, v in _dit_only(model).items()}


def diffusers_state_dict(model: WanDiT, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {original_to_diffusers_key(k): v for k, v in original_state_dict(model, dtype).items()}


def embedder_state_dict(model: WanDiT, which: str = "source") -> dict[str, torch.Tensor]:
    """``patch_embedding.{weight,bias}`` of the source or reference embedder."""
    emb = model.source_embedder if which == "source" else model.ref_embedder
    return {k: v.detach().clone().contiguous() for k, v in emb.state_dict().items()}


def fp8_state_dict(model: WanDiT, scaled: bool = False, rest: torch.dtype = torch.bfloat16) -> dict:
    """A ComfyUI-style fp8 checkpoint: block linear weights in float8_e4m3fn, everything else in ``rest``.

    With ``scaled``, each fp8 weight is stored divided by a per-tensor ``scale_weight`` (and the
    ``scaled_fp8`` marker is added), as in ComfyUI's "scaled" fp8 files.
    """
    out = {}
    for k, v in original_state_dict(model).items():
        if BLOCK_LINEAR.match(k):
            if scaled:
                scale = v.abs().max() / 200.0
                out[k] = (v / scale).to(FP8)
                out[k[:-len("weight")] + "scale_weight"] = scale.reshape(1).float()
            else:
                out[k] = v.to(FP8)
        else:
            out[k] = v.to(rest)
    if scaled:
        out["scaled_fp8"] = torch.zeros(0, dtype=FP8)
    return out


def dequantized_twin(model: WanDiT, fp8_state: dict) -> WanDiT:
    """An fp32 copy of ``model`` holding exactly the values an fp8 checkpoint represents."""
    twin = WanDiT(model.config)
    sd = {}
    for k in twin.state_dict():
        v = fp8_state[k].float()
        scale = fp8_state.get(k[:-len("weight")] + "scale_weight") if k.endswith(".weight") else None
        sd[k] = v * scale if scale is not None else v
    twin.load_state_dict(sd)
    return twin.eval()


def diffusers_kwargs(cfg: WanDiTConfig) -> dict:
    """``WanTransformer3DModel(**kwargs)`` for the same architecture."""
    return dict(patch_size=list(cfg.patch_size), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=cfg.eps)


def diffusers_twin(model: WanDiT):
    """The diffusers ``WanTransformer3DModel`` holding the same weights (fp32, eval)."""
    from diffusers import WanTransformer3DModel

    ref = WanTransformer3DModel(**diffusers_kwargs(model.config))
    ref.load_state_dict(diffusers_state_dict(model), strict=True)
    return ref.eval()


# --------------------------------------------------------------------------------------------------
# files in every layout
# --------------------------------------------------------------------------------------------------

def _save(tensors: dict, path, metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def heads_metadata(cfg: WanDiTConfig) -> dict | None:
    """``{"num_heads": ...}`` safetensors metadata when the width alone does not tell the heads."""
    return None if default_heads(cfg.dim) == cfg.num_heads else {"num_heads": str(cfg.num_heads)}


def write_original_file(model: WanDiT, path, prefix: str = "", dtype: torch.dtype | None = None,
                        state: dict | None = None) -> Path:
    """One safetensors file in the original layout; ``prefix="model.diffusion_model."`` = ComfyUI."""
    sd = state if state is not None else original_state_dict(model, dtype)
    return _save({prefix + k: v for k, v in sd.items()}, path, heads_metadata(model.config))


def write_pickle_file(model: WanDiT, path) -> Path:
    """A ``.pt`` file holding the original-layout tensors (read with weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(original_state_dict(model), path)
    return path


def write_diffusers_folder(model: WanDiT, folder, max_shard_size: str | None = None,
                           dtype: torch.dtype | None = None) -> Path:
    """A diffusers ``transformer/`` folder written by diffusers itself (sharded with ``max_shard_size``)."""
    folder = Path(folder)
    twin = diffusers_twin(model)
    if dtype is not None:
        twin = twin.to(dtype)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    twin.save_pretrained(str(folder), safe_serialization=True, **kw)
    return folder


def embedder_config(model: WanDiT, reference_first: bool) -> dict:
    c = model.config
    return {"_class_name": "ConditionalEmbedder", "_diffusers_version": "0.32.0", "in_dim": c.in_dim,
            "dim": c.dim, "patch_size": list(c.patch_size), "zero_init": True, "ref_pad_first": reference_first}


def write_kiwi_release(model: WanDiT, root, reference_first: bool = False, with_reference: bool = True) -> Path:
    """The DiT parts of a Kiwi-Edit release folder: model_index.json, transformer/ (diffusers layout),
    source_embedder/ and (unless ``with_reference`` is False, as for the stage-2 release) ref_embedder/."""
    root = Path(root)
    write_diffusers_folder(model, root / "transformer")
    parts = [("source_embedder", "source", False)]
    if with_reference:
        parts.append(("ref_embedder", "reference", reference_first))
    for folder, which, first in parts:
        _save(embedder_state_dict(model, which), root / folder / "diffusion_pytorch_model.safetensors")
        (root / folder / "config.json").write_text(json.dumps(embedder_config(model, first), indent=2))
    index = {"_class_name": ["pipeline_kiwi_edit", "KiwiEditPipeline"], "_diffusers_version": "0.32.0",
             "transformer": ["diffusers", "WanTransformer3DModel"],
             "source_embedder": ["conditional_embedder", "ConditionalEmbedder"],
             "ref_embedder": ["conditional_embedder", "ConditionalEmbedder"]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def write_kiwi_checkpoint(model: WanDiT | None, path, prefix: str = "", parts=("dit", "source", "ref", "mllm"),
                          embedders_from: WanDiT | None = None) -> Path:
    """A Kiwi (diffsynth) training checkpoint: ``dit.*`` (original keys), ``vae_condition.*``,
    ``ref_vae_condition.*`` and a few ``mllm.*`` tensors, all under ``prefix`` ("" or "pipe.")."""
    src = embedders_from or model
    sd = {}
    if "dit" in parts:
        sd.update({"dit." + k: v for k, v in original_state_dict(model).items()})
    if "source" in parts:
        sd.update({"vae_condition." + k: v for k, v in embedder_state_dict(src, "source").items()})
    if "ref" in parts:
        sd.update({"ref_vae_condition." + k: v for k, v in embedder_state_dict(src, "reference").items()})
    if "mllm" in parts:
        g = torch.Generator().manual_seed(0)
        sd.update({"mllm.image_queries.q": torch.randn(4, 8, generator=g),
                   "mllm.connetor.0.weight": torch.randn(8, 8, generator=g),
                   "mllm.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight":
                       torch.randn(2, 8, generator=g)})
    return _save({prefix + k: v for k, v in sd.items()}, path, heads_metadata(src.config))
