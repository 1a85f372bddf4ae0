"""Wan DiT key names: diffusers ⇄ original Wan layout, prefixes, and Kiwi training-checkpoint parts.

The maps work on module paths, so every parameter suffix (``weight``, ``bias``, ComfyUI's
``scale_weight``) follows its module. Keys that belong to neither map pass through unchanged, so
the loader reports them under their own names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Block-relative module paths: original → diffusers.
_BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2", "modulation": "scale_shift_table",
}
# Top-level module paths: original → diffusers.
_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_BLOCK_KEY = re.compile(r"(blocks\.\d+\.)(.+)$")

# Keys that tell the layouts apart (always present in a full DiT).
ORIGINAL_MARKER = "blocks.0.self_attn.q.weight"
DIFFUSERS_MARKER = "blocks.0.attn1.to_q.weight"

# Kiwi training checkpoint parts (after stripping "pipe."): checkpoint prefix → model attribute.
KIWI_EMBEDDERS = {"vae_condition.": "source_embedder.", "ref_vae_condition.": "ref_embedder."}
# VIVA channel-concat source conditioning (``WanDiT.attach_source_strategy(CHANNEL_CONCAT)``): its Conv3d and
# projector, stored beside the DiT's own keys under this prefix in every layout (no diffusers name exists).
CONCAT_SOURCE_PREFIX = "source_mixer."
CONCAT_SOURCE_KEYS = frozenset(CONCAT_SOURCE_PREFIX + k for k in
                               ("patch_embedding.weight", "patch_embedding.bias", "projector.weight", "projector.bias"))
# Non-weight entries of ComfyUI fp8 files, not needed when weights are upcast per layer.
IGNORED_SUFFIXES = ("scaled_fp8", ".scale_input")


def _convert(key: str, block: dict[str, str], top: dict[str, str]) -> str:
    m = _BLOCK_KEY.match(key)
    head, rest, table = (m.group(1), m.group(2), block) if m else ("", key, top)
    # Longest module path that is a dot-boundary prefix of the rest (or the whole rest).
    for path in sorted(table, key=len, reverse=True):
        if rest == path or rest.startswith(path + "."):
            return head + table[path] + rest[len(path):]
    return key


def original_to_diffusers_key(key: str) -> str:
    return _convert(key, _BLOCK, _TOP)


def diffusers_to_original_key(key: str) -> str:
    return _convert(key, _BLOCK_BACK, _TOP_BACK)


def original_to_diffusers(keys: Iterable[str]) -> dict[str, str]:
    """``{original key: diffusers key}`` for every key."""
    return {k: original_to_diffusers_key(k) for k in keys}


def diffusers_to_original(keys: Iterable[str]) -> dict[str, str]:
    """``{diffusers key: original key}`` for every key."""
    return {k: diffusers_to_original_key(k) for k in keys}


def find_dit_prefixes(keys: Iterable[str]) -> set[tuple[str, str]]:
    """Every (prefix, layout) under which full-DiT keys appear, e.g. ("model.diffusion_model.", "original")
    for ComfyUI files or ("pipe.dit.", "original") for Kiwi training checkpoints; any prefix is accepted."""
    found = set()
    for key in keys:
        for marker, layout in ((ORIGINAL_MARKER, "original"), (DIFFUSERS_MARKER, "diffusers")):
            if key.endswith(marker):
                prefix = key[:-len(marker)]
                if prefix == "" or prefix.endswith("."):
                    found.add((prefix, layout))
    return found


def is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES)
