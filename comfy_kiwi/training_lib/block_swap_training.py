"""Block swap for training a frozen DiT with gradient checkpointing (LoRA fine-tuning).

Inference block swap (:mod:`comfy_kiwi.memory.block_swap`) sends a block back right after it ran. In
training that is too early: under gradient checkpointing the backward pass re-runs each block (which
brings it back through the same pre-hook) and then its backward uses the block's weights. So here a
block stays on the compute device until the *next* swapped block is brought in: forward runs blocks
0…n−1 and backward re-runs them n−1…0, and in both orders the previous block's work is complete when
the next one loads. Resident at once: the non-swapped blocks plus two swapped blocks. No prefetch
(its forward-order guess is wrong for the backward order). The frozen base weights never change, so
nothing is copied back.
"""

from __future__ import annotations

from ..errors import InputError
from ..memory.block_swap import BlockSwap


class TrainingBlockSwap(BlockSwap):
    def __init__(self, dit, num_swapped: int, compute_device=None, storage_device="cpu"):
        if num_swapped and not getattr(dit, "gradient_checkpointing", False):
            raise InputError("block swap in training needs gradient checkpointing (precision.gradient_checkpointing"
                             " = true): without it every block's weights stay referenced until backward.")
        trainable = [n for n, p in dit.blocks.named_parameters() if p.requires_grad]
        if trainable:
            raise InputError(f"block swap in training keeps the DiT frozen; {trainable[0]} trains (train a LoRA, "
                             "or turn block swap off).")
        super().__init__(dit, num_swapped, compute_device, storage_device, prefetch=False, copy_back=False)
        self._pending: int | None = None

    def _before(self, i: int) -> None:
        if self._pending is not None and self._pending != i:
            self._unload(self._pending)
        self._pending = None
        super()._before(i)

    def _after(self, i: int) -> None:
        self._pending = i           # unloaded when the next swapped block arrives (see the module docstring)
