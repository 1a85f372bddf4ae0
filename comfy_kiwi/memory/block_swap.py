"""Block swap: keep N transformer blocks in CPU memory and bring each to the GPU only while it runs.

The last ``num_swapped`` blocks of the DiT live on the *storage* device (CPU RAM, pinned when the
compute device is CUDA, so copies are asynchronous). A forward pre-hook brings block i to the
compute device before it runs and, with ``prefetch``, starts copying block i+1 on a side CUDA stream
so the copy overlaps block i's compute. A forward hook sends block i back after it ran: the storage
copy is never modified during sampling, so "sending back" only drops the compute copy (no
device→host traffic; ``copy_back=True`` copies changed weights back, for callers that edit them).

Weights resident on the compute device at any moment: every non-swapped block, the embeddings and
the head, plus at most one swapped block (two with prefetch). Parameters keep their identity (only
``param.data`` is re-pointed), so hooks, LoRA patches and the K/V cache keep working.

On a CPU-only machine the compute and storage devices are both "cpu"; loading still makes a real
copy, so the mechanism and its residency bookkeeping are exercised (and tested) exactly as on a GPU.
Block swap is for inference (``torch.no_grad``): in training use gradient checkpointing instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError


@dataclass
class _Slot:
    """One parameter or buffer of a swapped block and its storage-device master copy."""

    module: nn.Module
    name: str
    is_param: bool
    master: torch.Tensor

    def current(self) -> torch.Tensor:
        return (self.module._parameters if self.is_param else self.module._buffers)[self.name]

    def set(self, t: torch.Tensor) -> None:
        if self.is_param:
            self.module._parameters[self.name].data = t
        else:
            self.module._buffers[self.name] = t


@dataclass
class _Block:
    slots: list[_Slot] = field(default_factory=list)
    loaded: bool = False
    event: object = None            # CUDA event marking the end of its upload (prefetch)

    @property
    def nbytes(self) -> int:
        return sum(s.master.numel() * s.master.element_size() for s in self.slots)


def _direct_tensors(module: nn.Module):
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                yield m, name, True, p
        for name, b in m._buffers.items():
            if b is not None:
                yield m, name, False, b


class BlockSwap:
    """Install with :meth:`install` (or ``with block_swap(dit, n):``); undo with :meth:`remove`.

    ``peak_resident_blocks`` / ``peak_resident_bytes`` record the most transformer blocks (and
    their weight bytes) on the compute device at once; ``bytes_uploaded`` what was copied to it.
    """

    def __init__(self, dit: nn.Module, num_swapped: int, compute_device=None, storage_device="cpu",
                 prefetch: bool = True, copy_back: bool = False):
        blocks = getattr(dit, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise InputError(f"{type(dit).__name__} has no .blocks ModuleList; block swap needs a Wan DiT.")
        n = len(blocks)
        if not isinstance(num_swapped, int) or not 0 <= num_swapped <= n:
            raise InputError(f"num_swapped must be a whole number from 0 to the DiT's {n} blocks, got {num_swapped!r}.")
        self.dit, self.num_swapped = dit, num_swapped
        self.compute = torch.device(compute_device) if compute_device is not None else _param_device(dit)
        self.storage = torch.device(storage_device)
        self.prefetch, self.copy_back = prefetch, copy_back
        self.swapped = list(range(n - num_swapped, n))
        self._blocks: dict[int, _Block] = {}
        self._hooks = []
        self._stream = torch.cuda.Stream(self.compute) if self.compute.type == "cuda" else None
        self.resident_blocks = self.peak_resident_blocks = 0
        self.resident_bytes = self.peak_resident_bytes = 0
        self.bytes_uploaded = 0

    # --- setup --------------------------------------------------------------------------------------
    def install(self) -> "BlockSwap":
        if self._hooks:
            return self
        swapped_modules = {id(m) for i in self.swapped for m in self.dit.blocks[i].modules()}
        pin = self._stream is not None
        with torch.no_grad():
            for m in self.dit.modules():          # everything else lives on the compute device
                if id(m) in swapped_modules:
                    continue
                for name, p in m._parameters.items():
                    if p is not None and p.device != self.compute:
                        p.data = p.data.to(self.compute)
                for name, b in m._buffers.items():
                    if b is not None and b.device != self.compute:
                        m._buffers[name] = b.to(self.compute)
            for i in self.swapped:
                blk = _Block()
                for m, name, is_param, t in _direct_tensors(self.dit.blocks[i]):
                    master = t.detach().to(self.storage)
                    if pin and not master.is_pinned():
                        master = master.pin_memory()
                    slot = _Slot(m, name, is_param, master)
                    slot.set(master)
                    blk.slots.append(slot)
                self._blocks[i] = blk
        fixed = len(self.dit.blocks) - self.num_swapped
        self.resident_blocks = self.peak_resident_blocks = fixed
        self.resident_bytes = self.peak_resident_bytes = sum(
            _nbytes(self.dit.blocks[i]) for i in range(fixed))
        for i in self.swapped:
            block = self.dit.blocks[i]
            self._hooks.append(block.register_forward_pre_hook(lambda mod, args, i=i: self._before(i)))
            self._hooks.append(block.register_forward_hook(lambda mod, args, out, i=i: self._after(i)))
        if self.prefetch and fixed > 0 and self.swapped:   # the block before the first swapped one prefetches it
            j = self.swapped[0]
            self._hooks.append(self.dit.blocks[j - 1].register_forward_pre_hook(
                lambda mod, args, j=j: self._load(j, asynchronous=True)))
        return self

    def remove(self) -> None:
        """Remove the hooks; swapped blocks stay on the storage device (move the DiT yourself)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for i in list(self._blocks):
            self._unload(i)
        self._blocks.clear()

    # --- moving -------------------------------------------------------------------------------------
    def _before(self, i: int) -> None:
        self._load(i, asynchronous=False)
        blk = self._blocks[i]
        if blk.event is not None:                     # wait for the side-stream upload
            torch.cuda.current_stream(self.compute).wait_event(blk.event)
            blk.event = None
        if self.prefetch and i + 1 in self._blocks:
            self._load(i + 1, asynchronous=True)

    def _after(self, i: int) -> None:
        self._unload(i)

    def _load(self, i: int, asynchronous: bool) -> None:
        blk = self._blocks[i]
        if blk.loaded:
            return
        use_stream = asynchronous and self._stream is not None
        ctx = torch.cuda.stream(self._stream) if use_stream else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            for s in blk.slots:
                # same device (CPU tests): clone, so the compute copy is a real, separate allocation
                t = s.master.clone() if s.master.device == self.compute else \
                    s.master.to(self.compute, non_blocking=True)
                if use_stream:   # allocated on the side stream, used on the compute stream
                    t.record_stream(torch.cuda.current_stream(self.compute))
                s.set(t)
            if use_stream:
                blk.event = torch.cuda.Event()
                blk.event.record(self._stream)
        blk.loaded = True
        self.bytes_uploaded += blk.nbytes
        self.resident_blocks += 1
        self.resident_bytes += blk.nbytes
        self.peak_resident_blocks = max(self.peak_resident_blocks, self.resident_blocks)
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)

    def _unload(self, i: int) -> None:
        blk = self._blocks[i]
        if not blk.loaded:
            return
        with torch.no_grad():
            for s in blk.slots:
                if self.copy_back:
                    s.master.copy_(s.current())
                s.set(s.master)
        blk.loaded = False
        self.resident_blocks -= 1
        self.resident_bytes -= blk.nbytes

    def is_resident(self, i: int) -> bool:
        """Whether block i's weights are on the compute device now (non-swapped blocks always are)."""
        return i not in self._blocks or self._blocks[i].loaded


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for *_, t in _direct_tensors(module))


def _param_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def block_swap(dit: nn.Module, num_swapped: int, **kwargs) -> Iterator[BlockSwap | None]:
    """``with block_swap(dit, n, compute_device="cuda"):`` — swap the last n blocks inside the block."""
    if num_swapped == 0 and not kwargs.get("compute_device"):
        yield None
        return
    swap = BlockSwap(dit, num_swapped, **kwargs).install()
    try:
        yield swap
    finally:
        swap.remove()
