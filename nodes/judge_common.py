"""Shared bits of the judging / reward / reference nodes: library import, custom types, small converters."""

from __future__ import annotations

import importlib
import json

VLM_TYPE = "KIWI_VLM"
CLIP_TYPE = "KIWI_CLIP"
CATEGORY_JUDGE = "Kiwi Edit/Judge"
CATEGORY_REFERENCE = "Kiwi Edit/Reference"
DTYPE_CHOICES = ["auto", "bf16", "fp16", "fp32"]
DEVICE_CHOICES = ["auto", "cpu", "cuda"]


def lib(module: str = "comfy_kiwi.judging"):
    """Import a comfy_kiwi module: the installed/path package first, else the copy inside this pack."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pack = __package__.rsplit(".", 1)[0] if __package__ and "." in __package__ else None
        if pack is None:
            raise
        return importlib.import_module(f"{pack}.{module}")


def torch_dtype(name: str):
    import torch
    return {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def device_arg(name: str):
    return None if name == "auto" else name


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)


def tip(text: str, **kw) -> dict:
    out = {"tooltip": text}
    out.update(kw)
    return out
