"""Reading checkpoint files safely and without a second copy in memory.

``open_state_dict`` turns a file or folder into a :class:`LazyStateDict`: the keys, shapes and
dtypes come from the file headers; a tensor is read only when asked for. Safetensors files are
read with our own header parser and ``readinto`` straight into the tensor's storage, so loading a
model costs one copy of its weights (the page cache is not counted against the process).
Pickle-based files (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) go through
``torch.load(weights_only=True)`` only: nothing is ever unpickled freely.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

# (loader, shape, dtype, source file) for one key
_Entry = tuple[Callable[[], torch.Tensor], tuple[int, ...], torch.dtype, Path | None]


class LazyStateDict(Mapping):
    """A read-only ``{name: tensor}`` whose tensors are read from disk on access."""

    def __init__(self, entries: dict[str, _Entry], metadata: dict | None = None, paths=()):
        self._entries = entries
        self.metadata = dict(metadata or {})
        self.paths = [Path(p) for p in paths]

    # Mapping protocol -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        return self._entries[key][0]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    # Header information, no tensor reads ---------------------------------------------------------
    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key][2]

    def source(self, key: str) -> Path | None:
        return self._entries[key][3]

    def nbytes(self) -> int:
        total = 0
        for _, shape, dtype, _ in self._entries.values():
            n = 1
            for s in shape:
                n *= s
            total += n * dtype.itemsize
        return total

    def describe_source(self) -> str:
        return ", ".join(str(p) for p in self.paths) if self.paths else "<in-memory state dict>"

    # Views -----------------------------------------------------------------------------------------
    def renamed(self, fn: Callable[[str], str | None]) -> LazyStateDict:
        """A view with every key passed through ``fn``; keys mapped to ``None`` are dropped."""
        out: dict[str, _Entry] = {}
        for key, entry in self._entries.items():
            new = fn(key)
            if new is None:
                continue
            if new in out:
                raise CheckpointError(
                    f"{self.describe_source()}: keys {key!r} and another key both map to {new!r}; "
                    "the file mixes two layouts of the same weights.")
            out[new] = entry
        return LazyStateDict(out, self.metadata, self.paths)

    def with_prefix(self, prefix: str, strip: bool = True) -> LazyStateDict:
        """Only the keys starting with ``prefix`` (with the prefix removed when ``strip``)."""
        n = len(prefix)
        return self.renamed(lambda k: (k[n:] if strip else k) if k.startswith(prefix) else None)

    def merged(self, other: LazyStateDict) -> LazyStateDict:
        """Keys of both; ``other`` wins on a clash."""
        return LazyStateDict({**self._entries, **other._entries}, {**self.metadata, **other.metadata},
                             self.paths + [p for p in other.paths if p not in self.paths])


# --------------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Return (header dict, byte offset of the data section) or raise CheckpointError."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: file is {size} bytes, too short to be a safetensors file.")
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > min(size - 8, 100 * 1024 * 1024):
                raise CheckpointError(
                    f"{path}: not a safetensors file (header length {n} does not fit a {size}-byte file).")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, OSError) and not path.exists():
            raise CheckpointError(f"{path}: file not found.") from None
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object).")
    return header, 8 + n


def _open_safetensors(path: Path) -> LazyStateDict:
    header, data_start = read_safetensors_header(path)
    metadata = header.pop("__metadata__", None) or {}
    entries: dict[str, _Entry] = {}
    file_size = path.stat().st_size
    for key, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {key!r} has an unsupported or broken header entry "
                                  f"{info!r} (supported dtypes: {', '.join(_ST_DTYPES)}).") from None
        if data_start + end > file_size:
            raise CheckpointError(f"{path}: tensor {key!r} lies past the end of the file; the file is "
                                  "truncated (an interrupted download?).")
        entries[key] = (_safetensors_reader(path, data_start + begin, end - begin, shape, dtype),
                        shape, dtype, path)
    return LazyStateDict(entries, metadata, [path])


def _safetensors_reader(path: Path, offset: int, nbytes: int, shape, dtype) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype)
        if nbytes:
            buf = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                got = f.readinto(memoryview(buf))
            if got != nbytes:
                raise CheckpointError(f"{path}: short read at byte {offset} ({got} of {nbytes}); "
                                      "the file is truncated.")
        return out
    return read


# --------------------------------------------------------------------------------------------------
# pickle-based (weights_only)
# --------------------------------------------------------------------------------------------------

def _open_pickle(path: Path) -> LazyStateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types; all mean "not loadable safely"
        raise CheckpointError(
            f"{path}: could not be read as a tensor-only checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Pickle files are only loaded with "
            "weights_only=True; convert the file to .safetensors if it holds code or custom objects."
        ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and len(obj) <= 4:
            obj = obj[wrapper]
            break
    return state_dict_from_tensors(obj, path)


def state_dict_from_tensors(tensors: Mapping, path: Path | None = None) -> LazyStateDict:
    """Wrap an in-memory ``{name: tensor}`` as a LazyStateDict (non-tensor values rejected)."""
    entries: dict[str, _Entry] = {}
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            where = path or "the state dict"
            raise CheckpointError(f"{where}: entry {key!r} is a {type(t).__name__}, not a tensor; "
                                  "expected a flat {name: tensor} checkpoint.")
        entries[str(key)] = ((lambda t=t: t), tuple(t.shape), t.dtype, path)
    return LazyStateDict(entries, {}, [path] if path else [])


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------

def open_state_dict(source) -> LazyStateDict:
    """Open a checkpoint file, a folder of shards, or wrap an in-memory state dict.

    Accepted: ``*.safetensors`` / ``*.sft``; a folder holding safetensors shards (with or without a
    ``*.index.json``); ``*.pt``/``*.pth``/``*.ckpt``/``*.bin`` through ``torch.load(weights_only=True)``;
    a ``LazyStateDict`` or a ``dict`` of tensors.
    """
    if isinstance(source, LazyStateDict):
        return source
    if isinstance(source, Mapping):
        return state_dict_from_tensors(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    if path.is_dir():
        return _open_folder(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _open_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(path)
    if suffix == ".json" and path.name.endswith(".index.json"):
        return _open_index(path)
    # Unknown suffix: accept it if it really is safetensors, otherwise explain what is accepted.
    try:
        return _open_safetensors(path)
    except CheckpointError:
        raise CheckpointError(
            f"{path}: not a checkpoint. Accepted: .safetensors files, folders of .safetensors shards, "
            "or .pt/.pth/.ckpt/.bin files holding only tensors.") from None


def _open_index(index: Path) -> LazyStateDict:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({e}).") from None
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).exists()]
    if missing:
        raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}.")
    out = None
    for s in shards:
        part = open_state_dict(index.parent / s)
        out = part if out is None else out.merged(part)
    return out


def _open_folder(folder: Path) -> LazyStateDict:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        return _open_index(indexes[0])
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SAFETENSORS_SUFFIXES)
    if not files:
        raise CheckpointError(f"{folder}: the folder holds no .safetensors files.")
    out = open_state_dict(files[0])
    for p in files[1:]:
        out = out.merged(open_state_dict(p))
    return out


def load_into_module(module: torch.nn.Module, state: Mapping, *, what: str = "model",
                     dtype_for: Callable[[str, torch.dtype], torch.dtype | None] | None = None,
                     strict: bool = True, device="cpu") -> list[str]:
    """Load ``state`` into ``module`` (which may live on the meta device), one tensor at a time.

    Every key of the module must be present with the same shape; missing, unexpected (when
    ``strict``) and mis-shaped keys are reported together in one CheckpointError naming the source.
    ``dtype_for(name, stored_dtype)`` picks each tensor's dtype (``None`` keeps the module's dtype).
    Returns the keys of ``state`` that were not used.
    """
    state = open_state_dict(state)
    expected = module.state_dict(keep_vars=True)
    src = state.describe_source()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k}: file {list(state.shape(k))} vs model {list(expected[k].shape)}"
                 for k in expected if k in state and tuple(state.shape(k)) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if misshaped:
        problems.append(f"mis-shaped keys ({len(misshaped)}): {_preview(misshaped)}")
    if unexpected and strict:
        problems.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if problems:
        raise CheckpointError(f"{src}: does not fit the {what}: " + "; ".join(problems))
    loaded = {}
    for name, ref in expected.items():
        t = state[name]
        want = dtype_for(name, t.dtype) if dtype_for else None
        if want is None:
            want = ref.dtype if ref.dtype.is_floating_point and t.dtype.is_floating_point else t.dtype
        loaded[name] = t.to(device=device, dtype=want)
    module.load_state_dict(loaded, strict=True, assign=True)
    return unexpected


def _preview(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
