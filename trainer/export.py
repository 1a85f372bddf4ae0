"""``python -m trainer export``: turn a Kiwi/InstructX training run into files other tools read.

``--to release``: a Kiwi-Edit release folder (``transformer/`` in the original Wan layout, ``source_embedder/``,
``ref_embedder/``, ``vae/``, ``mllm_encoder/`` with the MLLM LoRA merged and the queries/connectors,
``processor/``), which ``python -m comfy_kiwi edit --model FOLDER`` and the Kiwi release loader node load.
A DiT LoRA of the run is merged into ``transformer/`` (fp32 math) unless ``--keep-dit-lora``.

``--to kiwi``: one safetensors file under the Kiwi training-checkpoint names (what the released Kiwi tools
read); a run's final ``kiwi.safetensors`` already is one, this converts a mid-run checkpoint.

``--to comfyui-lora``: the run's DiT LoRA under ComfyUI LoraLoader keys (``diffusion_model.blocks.N...``).

The weights come from ``--weights`` (a final ``kiwi.safetensors``, or a ``checkpoints/step-N`` folder: its
EMA weights when the run kept an EMA), default: the run's latest checkpoint. The base models are the run config's (``--config``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfy_kiwi.errors import InputError

TARGETS = ("release", "kiwi", "comfyui-lora")
_PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
                    "video_preprocessor_config.json")


def _trained_state(cfg, weights) -> dict[str, torch.Tensor]:
    from .checkpoint import find_checkpoint, load_init_state
    if weights is None:
        found = find_checkpoint(cfg.output_dir, "auto")
        if found is None:
            raise InputError(f"no checkpoint under {cfg.output_dir}; pass --weights (kiwi.safetensors or a "
                             "checkpoints/step-N folder).")
        weights = found
    return load_init_state(weights)          # a checkpoint folder's EMA when the run kept one


def load_trained(cfg, weights=None):
    """(method, module) with the run's base models and trained weights, on the CPU."""
    from .methods import get_method
    method = get_method(cfg.method.name)(cfg)
    if cfg.method.name != "kiwi":
        raise InputError(f"export handles Kiwi/InstructX runs (method kiwi), not {cfg.method.name!r}.")
    cpu = torch.device("cpu")
    models = method.load_models(cfg, cpu)
    if models["mllm"] is None:                                   # frozen MLLM: its context was cached
        models["mllm"] = method.load_mllm(cpu, models["dit"].config.dim, trainable=False)
    method.options.dit_storage = "model"                         # export full-precision weights
    module = method.build(models)
    method.load_trainable_state_dict(module, _trained_state(cfg, weights))
    return method, module


def _mllm_metadata(cfg) -> dict:
    """What a run's ``kiwi.safetensors`` records about its MLLM encoder (InstructX: where a reference goes)."""
    from .methods import get_method
    return get_method("kiwi")(cfg).mllm_metadata() if cfg.method.name == "kiwi" else {}


def _save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _copy_processor(mllm_source: Path, out: Path) -> None:
    """Tokenizer/processor files and the Qwen config (as ``qwen_config.json``) of the base MLLM."""
    release = mllm_source / "processor"
    src = release if release.is_dir() else mllm_source
    out.mkdir(parents=True, exist_ok=True)
    for name in _PROCESSOR_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    qwen_cfg = release / "qwen_config.json" if release.is_dir() else mllm_source / "config.json"
    shutil.copy2(qwen_cfg, out / "qwen_config.json")


def _write_vae(source: Path, out: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, out, dirs_exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, out / "diffusion_pytorch_model.safetensors")


def export_release(cfg, out, weights=None, keep_dit_lora: bool = False) -> Path:
    """Write a release folder (see the module docstring); returns its path."""
    from comfy_kiwi.mllm.loader import save_mllm_encoder_extras
    from comfy_kiwi.mllm.lora import merge_lora
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not empty; choose a new folder.")
    _, module = load_trained(cfg, weights)
    dit, enc = module.dit, module.mllm
    if module.adapter is not None:
        module.adapter.detach()
        if not keep_dit_lora:
            module.adapter.merged_into(dit)
            module.adapter = None
    state = dit.state_dict()
    base = {k: v for k, v in state.items() if not k.startswith(("source_embedder.", "ref_embedder."))}
    _save(base, out / "transformer" / "diffusion_pytorch_model.safetensors",
          {"format": "pt", "num_heads": str(dit.config.num_heads)})
    c = dit.config
    for part, attr in (("source_embedder", dit.source_embedder), ("ref_embedder", dit.ref_embedder)):
        if attr is None:
            continue
        _save(attr.state_dict(), out / part / "diffusion_pytorch_model.safetensors")
        (out / part / "config.json").write_text(json.dumps(
            {"_class_name": "ConditionalEmbedder", "in_dim": c.in_dim, "dim": c.dim, "patch_size": list(c.patch_size),
             "zero_init": True, "ref_pad_first": bool(dit.reference_first)}, indent=2))
    merge_lora(enc)                                              # peft LoRA (if any) into the language model
    qwen = {k: v for k, v in enc.model.state_dict().items() if not k.startswith("lm_head.")}
    _save(qwen, out / "mllm_encoder" / "model.safetensors", {"format": "pt"})
    save_mllm_encoder_extras(enc, out / "mllm_encoder")
    _copy_processor(Path(cfg.model.mllm), out / "processor")
    _write_vae(Path(cfg.model.vae), out / "vae")
    (out / "model_index.json").write_text(json.dumps(
        {"_class_name": "KiwiEditPipeline", "exported_by": "comfy-kiwi trainer", "config": cfg.source}, indent=2))
    if module.adapter is not None:
        _save(module.adapter.comfyui_state_dict(), out / "dit_lora.safetensors")
    return out


def export(cfg, to: str, out, weights=None, keep_dit_lora: bool = False) -> Path:
    if to not in TARGETS:
        raise InputError(f"--to is {to!r}; choose one of {', '.join(TARGETS)}.")
    if to == "release":
        return export_release(cfg, out, weights, keep_dit_lora)
    state = _trained_state(cfg, weights)
    out = Path(out)
    if to == "kiwi":
        kiwi = {k: v for k, v in state.items() if not k.startswith("dit_lora.")}
        if not kiwi:
            raise InputError("the run trained only a DiT LoRA; export it with --to comfyui-lora.")
        _save(kiwi, out, {"format": "pt", **_mllm_metadata(cfg)})
        return out
    _, module = load_trained(cfg, weights)
    if module.adapter is None:
        raise InputError("the run trained no DiT LoRA (add \"dit_lora\" to [method.options] trainable).")
    _save(module.adapter.comfyui_state_dict(), out)
    return out
