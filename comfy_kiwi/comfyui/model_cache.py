"""A small cache of loaded models, so repeated runs with the same settings reuse them.

Entries are keyed by what decides the loaded weights: the model kind, the resolved path, a stamp of
the files on disk (size and modification time of every file, so a replaced file is reloaded), and
the load options (dtype, device, attention, ...). Loading a source again with a different stamp or
different options drops the stale entries of that source first — they are superseded, and keeping
two copies of a multi-gigabyte model around is what a user least expects. Beyond that, the least
recently used entries are evicted once ``capacity`` is exceeded.

Cached models are shared: callers must not modify them (the LoRA path, for example, patches the
forward of a cached DiT only for the duration of one sampling run; see ``models/dit_lora.py``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CacheKey", "ModelCache", "files_stamp", "default_cache", "cached_load"]


def _file_entry(path: Path, rel: str) -> tuple[str, int, int]:
    st = path.stat()
    return rel, st.st_size, st.st_mtime_ns


def files_stamp(path) -> tuple:
    """Size and mtime of a file, or of every file under a folder (sorted): changes when any file does."""
    path = Path(path).expanduser()
    if path.is_file():
        return (_file_entry(path, path.name),)
    if not path.is_dir():
        return ()
    entries = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            entries.append(_file_entry(full, str(full.relative_to(path))))
    return tuple(entries)


@dataclass(frozen=True)
class CacheKey:
    kind: str            # "dit", "vae", "mllm", "lora", ...
    source: str          # resolved path (or any identifying string)
    stamp: tuple         # files_stamp(source)
    options: tuple       # sorted (name, value) pairs: dtype, device, attention, ...

    @property
    def origin(self) -> tuple[str, str]:
        return self.kind, self.source


def _option_value(v: Any) -> Any:
    # torch dtypes/devices and paths are hashable but print better (and compare stably) as strings
    return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


class ModelCache:
    """``cache.get_or_load(kind, path, loader, dtype=..., device=...)`` → the model, loaded once."""

    def __init__(self, capacity: int = 6):
        self.capacity = int(capacity)
        self._entries: OrderedDict[CacheKey, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0      # number of real loads (for tests and diagnostics)

    def key(self, kind: str, source, **options) -> CacheKey:
        path = Path(source).expanduser()
        resolved = str(path.resolve()) if path.exists() else str(source)
        opts = tuple(sorted((k, _option_value(v)) for k, v in options.items()))
        return CacheKey(kind, resolved, files_stamp(path), opts)

    def get_or_load(self, kind: str, source, loader: Callable[[], Any], **options) -> Any:
        key = self.key(kind, source, **options)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            # superseded entries of the same source go before the new copy is loaded (memory)
            for stale in [k for k in self._entries if k.origin == key.origin]:
                del self._entries[stale]
            model = loader()
            self.loads += 1
            self._entries[key] = model
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[CacheKey]:
        return list(self._entries)


default_cache = ModelCache()


def cached_load(kind: str, source, loader: Callable[[], Any], **options) -> Any:
    """Load through the process-wide cache (what the ComfyUI nodes use)."""
    return default_cache.get_or_load(kind, source, loader, **options)
