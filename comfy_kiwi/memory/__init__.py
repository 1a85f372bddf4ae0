"""Running big Wan DiTs on small GPUs: K/V caching, block swap, fp8 storage and the memory planner."""

from .block_swap import BlockSwap, block_swap
from .fp8 import quantize_dit_fp8
from .kv_cache import KVCache, kv_cache

__all__ = ["BlockSwap", "block_swap", "quantize_dit_fp8", "KVCache", "kv_cache"]
