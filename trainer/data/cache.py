"""Disk cache of what training reads per item, built once before training.

The cache file name is a hash of every input file's (path, size, mtime) plus the settings that shape
the tensors (model files' stats, resolution, buckets, frames, text length, the method's own cache
signature). Same inputs and settings → the file is reused; anything changed → a new file.

One safetensors file per dataset holds, for item N:

- ``source.N``, ``target.N``: VAE latents [1, C, f, h, w];
- ``context.N``: unpadded umT5 rows [L, C] (methods whose ``context_encoder`` is "umt5");
- ``target_context.N``: umT5 rows of the ``target_caption`` column (methods with ``encode_target_caption``);
- ``mask.N``: the ``mask`` column on the latent grid [1, 1, f, h, w] in 0..1 (when the dataset has the column);
- any tensor the method's ``cache_item`` returns (e.g. MLLM pixels, or an MLLM context of a frozen MLLM).

The metadata records each item's bucket (W, H, frames: batches stay within one size and length), the tensor field names and the
item's strings (``prompt``, ``source_prompt``, ``target_caption``), which reach the batch as lists.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from comfy_kiwi.errors import InputError

from .datasets import Record, item_size, load_pixels, make_buckets

CACHE_VERSION = 2
TEXT_BATCH = 16
STRING_FIELDS = ("prompt", "source_prompt", "target_caption")
LEGACY_FIELDS = ("source", "target", "context")
PADDED_CONTEXTS = ("context", "target_context")        # umT5 rows, zero-padded to data.text_len in a batch


def _stat(path: str) -> list:
    p = Path(path)
    if p.is_dir():
        return sorted([str(f.relative_to(p)), *_stat(str(f))[1:]] for f in p.rglob("*") if f.is_file())
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def cache_key(records: list[Record], settings: dict, model_files: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "settings": settings,
                         "models": [_stat(m) for m in model_files if m]}, sort_keys=True).encode())
    for r in records:
        files = [_stat(p) for p in (r.source, r.target, r.reference, r.mask) if p]
        h.update(json.dumps([files, r.prompt, r.source_prompt, r.target_caption]).encode())
    return h.hexdigest()[:20]


def cache_settings(cfg, spec=None, method=None) -> dict:
    d = cfg.data
    spec = spec or cfg.dataset_specs()[0]
    out = {"format": spec.format, "resolution": d.resolution, "multiple": d.multiple, "max_aspect": d.max_aspect,
           "frames": spec.frames, "max_pixels": spec.max_pixels}
    if method is not None:
        out["method"] = method.cache_signature()
        out["context_encoder"] = method.context_encoder
    return out


class Encoders:
    """Models the cache needs, loaded on first use (a reused cache loads none of them)."""

    def __init__(self, **loaders):
        self._loaders, self._models = dict(loaders), {}

    def get(self, name: str, loader=None):
        if name not in self._models:
            self._models[name] = (loader or self._loaders[name])()
        return self._models[name]


def mask_to_latent_grid(mask_pixels: torch.Tensor, latent_shape) -> torch.Tensor:
    """[1, 3, F, H, W] in [−1, 1] → [1, 1, f, h, w] in 0..1 on the latent grid of the causal Wan VAE:
    latent frame 0 = pixel frame 0, latent frame i = pixel frames 4i−3 … 4i (max over them, so an edited
    pixel anywhere in the group marks the latent); space by area averaging."""
    m = (mask_pixels.float().mean(1, keepdim=True) + 1) / 2                   # [1, 1, F, H, W]
    f, h, w = latent_shape[-3:]
    groups = [m[:, :, :1]] + [m[:, :, 1 + 4 * i:5 + 4 * i] for i in range(f - 1)]
    m = torch.cat([g.amax(dim=2, keepdim=True) for g in groups], dim=2)      # [1, 1, f, H, W]
    m = F.adaptive_avg_pool3d(m, (f, h, w))
    return m.clamp(0, 1).contiguous()


def build_cache(records: list[Record], cfg, vae_loader, text_loader, log=print, method=None, spec=None,
                extra_loaders: dict | None = None) -> Path:
    """Encode every record once (or reuse the cache); returns the cache file path.

    ``vae_loader()`` / ``text_loader()`` are called only when encoding is needed, so a reused cache
    never loads the VAE or the text encoder. ``method`` (a TrainingMethod) adds its own per-item tensors
    through ``cache_item``; ``spec`` is the dataset (default: the config's first)."""
    spec = spec or cfg.dataset_specs()[0]
    context_encoder = "umt5" if method is None else method.context_encoder
    model_files = [cfg.model.vae] + ([cfg.model.text_encoder] if context_encoder == "umt5" else [])
    if method is not None:
        model_files += method.cache_model_files()
    key = cache_key(records, cache_settings(cfg, spec, method), model_files)
    path = cfg.cache_dir / f"latents-{key}.safetensors"
    if path.is_file():
        log(f"reusing latent cache {path}")
        return path
    log(f"encoding {len(records)} items into {path}")
    buckets = make_buckets(cfg.data.resolution, cfg.data.multiple, cfg.data.max_aspect)
    encoders = Encoders(vae=vae_loader, text=text_loader, **(extra_loaders or {}))
    vae = encoders.get("vae")
    tensors, sizes, strings = {}, [], []
    contexts: dict[str, list] = {}
    if context_encoder == "umt5":
        text = encoders.get("text")
        fields = [("context", "prompt")]
        if method is not None and method.encode_target_caption:
            fields.append(("target_context", "target_caption"))
        for name, attr in fields:
            rows = contexts.setdefault(name, [])
            for start in range(0, len(records), TEXT_BATCH):          # bounded memory on large datasets
                rows += text.encode([getattr(r, attr) or r.prompt for r in records[start:start + TEXT_BATCH]])
    has_mask = any(r.mask for r in records)
    for i, r in enumerate(records):
        size = item_size(r.source, buckets, spec.max_pixels, cfg.data.multiple)
        pixels = {}
        for name, file in (("source", r.source), ("target", r.target)):
            pixels[name] = load_pixels(file, size, spec.frames)
        if pixels["source"].shape != pixels["target"].shape:
            raise InputError(f"{spec.dataset} item {i + 1}: source {r.source} gives {pixels['source'].shape[2]} "
                             f"frame(s), target {r.target} {pixels['target'].shape[2]}; a pair needs the same count "
                             f"(up to {spec.frames}, a shorter clip keeps its largest 4k+1 prefix).")
        for name in ("source", "target"):
            tensors[f"{name}.{i}"] = vae.encode(pixels[name].to(vae.device, vae.dtype)).float().cpu().contiguous()
        for name, rows in contexts.items():
            tensors[f"{name}.{i}"] = rows[i].contiguous()
        if has_mask:
            shape = tensors[f"target.{i}"].shape
            tensors[f"mask.{i}"] = (mask_to_latent_grid(load_pixels(r.mask, size, spec.frames), shape) if r.mask
                                    else torch.zeros(1, 1, *shape[2:]))
        if method is not None:
            for name, value in method.cache_item(r, pixels, size, encoders).items():
                tensors[f"{name}.{i}"] = value.detach().cpu().contiguous()
        sizes.append([*size, pixels["target"].shape[2]])      # a batch shares size and frame count
        strings.append({k: getattr(r, k) for k in STRING_FIELDS})
    fields = sorted({k.rsplit(".", 1)[0] for k in tensors})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"count": str(len(records)), "buckets": json.dumps(sizes),
                                           "fields": json.dumps(fields), "strings": json.dumps(strings)})
    tmp.replace(path)                       # atomic: a killed run never leaves a half-written cache
    return path


class CachedDataset:
    """The items of a cache file, in memory: ``dataset[i]`` → {source, target, context, …, prompt, …}."""

    def __init__(self, path):
        self.path = Path(path)
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata()
            count = int(meta["count"])
            fields = json.loads(meta["fields"]) if "fields" in meta else list(LEGACY_FIELDS)
            strings = json.loads(meta["strings"]) if "strings" in meta else [{} for _ in range(count)]
            self.items = [{**{k: f.get_tensor(f"{k}.{i}") for k in fields}, **strings[i]} for i in range(count)]
        self.buckets = [tuple(b) for b in json.loads(meta["buckets"])]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate(items: list[dict], text_len: int, padded=PADDED_CONTEXTS) -> dict:
    """One batch: umT5 contexts zero-padded to ``text_len``, other tensors concatenated on dim 0,
    strings as lists."""
    from comfy_kiwi.text_encoders.umt5 import pad_context
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if not torch.is_tensor(values[0]):
            out[key] = values
        elif key in padded:
            out[key] = pad_context(values, text_len)
        else:
            out[key] = torch.cat(values)
    return out


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
