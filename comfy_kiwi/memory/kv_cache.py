"""Cross-attention keys/values computed once per sampling run.

The context (MLLM or umT5 tokens) is the same at every denoising step, so each block's
cross-attention K/V — and, on the umT5 path, the ``text_embedding`` projection — only need computing
once. ``with kv_cache(dit): sample(...)`` attaches a :class:`KVCache` to the DiT and to every
``CrossAttention``; ``CrossAttention.key_value`` asks it before computing.

An entry is keyed by the context tensor's *storage* (data pointer, offset, shape, strides, dtype,
device), its in-place version counter, and the version counters of the weights that produce it.
The cache holds a reference to the context, so its memory cannot be freed and reused by another
tensor while the entry exists: a new context is always a miss, an in-place edit of the context or
of the weights (LoRA merge, optimiser step) bumps a version and is a miss too. Results equal
recomputation bit for bit, because a hit returns the very tensors the same computation produced.

With autograd recording (training), the cache steps aside: reusing a graph across steps is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..errors import InputError


def _version(t: torch.Tensor) -> int:
    """The in-place version counter; inference tensors (ComfyUI runs nodes under ``inference_mode``)
    have none, and cannot be changed in place outside inference mode, so they count as version -1."""
    return -1 if t.is_inference() else t._version


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype,
            t.device, _version(t))


class KVCache:
    """Memo of ``compute(context)`` per module. ``hits``/``misses`` count lookups (for tests and logs)."""

    def __init__(self):
        self._entries: dict[int, tuple[tuple, torch.Tensor, object]] = {}
        self.hits = 0
        self.misses = 0

    def lookup(self, owner: nn.Module, context: torch.Tensor, compute: Callable[[torch.Tensor], object]):
        if torch.is_grad_enabled():
            return compute(context)
        key = (_tensor_key(context), tuple(_version(p) for p in owner.parameters()))
        entry = self._entries.get(id(owner))
        if entry is not None and entry[0] == key:
            self.hits += 1
            return entry[2]
        self.misses += 1
        value = compute(context)
        self._entries[id(owner)] = (key, context, value)   # keeps `context` alive: its pointer stays unique
        return value

    def clear(self) -> None:
        self._entries.clear()

    def nbytes(self) -> int:
        """Bytes held by cached results (what the cache costs on the compute device)."""
        total = 0
        for _, _, value in self._entries.values():
            for t in (value if isinstance(value, tuple) else (value,)):
                total += t.numel() * t.element_size()
        return total


def _owners(dit: nn.Module) -> list[nn.Module]:
    from ..models.wan_dit import CrossAttention
    return [dit, *(m for m in dit.modules() if isinstance(m, CrossAttention))]


def attach_kv_cache(dit: nn.Module, cache: KVCache | None = None) -> KVCache:
    """Attach ``cache`` (a new one by default) to the DiT; :func:`detach_kv_cache` removes it."""
    if not hasattr(dit, "kv_cache"):
        raise InputError(f"{type(dit).__name__} has no kv_cache slot; K/V caching needs a comfy_kiwi WanDiT.")
    cache = cache or KVCache()
    for m in _owners(dit):
        m.kv_cache = cache
    return cache


def detach_kv_cache(dit: nn.Module) -> None:
    for m in _owners(dit):
        m.kv_cache = None


@contextlib.contextmanager
def kv_cache(dit: nn.Module, enabled: bool = True) -> Iterator[KVCache | None]:
    """``with kv_cache(dit): ...`` — K/V computed once per context inside the block, freed after."""
    if not enabled:
        yield None
        return
    previous = getattr(dit, "kv_cache", None)
    cache = attach_kv_cache(dit)
    try:
        yield cache
    finally:
        cache.clear()
        if previous is not None:
            attach_kv_cache(dit, previous)
        else:
            detach_kv_cache(dit)
