"""Disk cache of VAE latents and text-encoder outputs, built once before training.

The cache file name is a hash of every input file's (path, size, mtime) plus the settings that shape
the tensors (model files' stats, resolution, buckets, frames, text length). Same inputs and settings →
the file is reused; anything changed → a new file. One safetensors file holds ``source.N``,
``target.N`` (latents [1, C, f, h, w]) and ``context.N`` (unpadded umT5 rows [L, C]); the metadata
records each item's bucket so batches stay within one size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .datasets import Record, load_pixels, make_buckets, media_size, nearest_bucket

CACHE_VERSION = 1
TEXT_BATCH = 16


def _stat(path: str) -> list:
    p = Path(path)
    if p.is_dir():
        return sorted([str(f.relative_to(p)), *_stat(str(f))[1:]] for f in p.rglob("*") if f.is_file())
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def cache_key(records: list[Record], settings: dict, model_files: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "settings": settings,
                         "models": [_stat(m) for m in model_files]}, sort_keys=True).encode())
    for r in records:
        files = [_stat(p) for p in (r.source, r.target, r.reference) if p]
        h.update(json.dumps([files, r.prompt, r.source_prompt]).encode())
    return h.hexdigest()[:20]


def cache_settings(cfg) -> dict:
    d = cfg.data
    return {"format": d.format, "resolution": d.resolution, "multiple": d.multiple, "max_aspect": d.max_aspect,
            "frames": d.frames}


def build_cache(records: list[Record], cfg, vae_loader, text_loader, log=print) -> Path:
    """Encode every record once (or reuse the cache); returns the cache file path.

    ``vae_loader()`` / ``text_loader()`` are called only when encoding is needed, so a reused cache
    never loads the VAE or the text encoder.
    """
    key = cache_key(records, cache_settings(cfg), [cfg.model.vae, cfg.model.text_encoder])
    path = cfg.cache_dir / f"latents-{key}.safetensors"
    if path.is_file():
        log(f"reusing latent cache {path}")
        return path
    log(f"encoding {len(records)} items into {path}")
    buckets = make_buckets(cfg.data.resolution, cfg.data.multiple, cfg.data.max_aspect)
    vae, text = vae_loader(), text_loader()
    tensors, sizes = {}, []
    prompts = []
    for start in range(0, len(records), TEXT_BATCH):          # bounded memory on large datasets
        prompts += text.encode([r.prompt for r in records[start:start + TEXT_BATCH]])
    for i, r in enumerate(records):
        size = nearest_bucket(*media_size(r.source), buckets)
        for name, file in (("source", r.source), ("target", r.target)):
            pixels = load_pixels(file, size, cfg.data.frames)
            tensors[f"{name}.{i}"] = vae.encode(pixels.to(vae.device, vae.dtype)).float().cpu().contiguous()
        tensors[f"context.{i}"] = prompts[i].contiguous()
        sizes.append(list(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"count": str(len(records)), "buckets": json.dumps(sizes)})
    tmp.replace(path)                       # atomic: a killed run never leaves a half-written cache
    return path


class CachedDataset:
    """The items of a cache file, in memory: ``dataset[i]`` → {source, target, context}."""

    def __init__(self, path):
        self.path = Path(path)
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata()
            self.items = [{k: f.get_tensor(f"{k}.{i}") for k in ("source", "target", "context")}
                          for i in range(int(meta["count"]))]
        self.buckets = [tuple(b) for b in json.loads(meta["buckets"])]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate(items: list[dict], text_len: int) -> dict:
    from comfy_kiwi.text_encoders.umt5 import pad_context
    return {"source": torch.cat([it["source"] for it in items]),
            "target": torch.cat([it["target"] for it in items]),
            "context": pad_context([it["context"] for it in items], text_len)}
