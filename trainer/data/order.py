"""Deterministic, resumable batch order over aspect-ratio buckets.

Epoch e shuffles the items of each bucket with seed (seed, e), cuts them into global batches of
``batch_size × world_size`` (incomplete batches are dropped, so every rank sees one size), and
shuffles the batch list. The data position is the count of global batches consumed, so a resumed run
continues with exactly the batch it would have seen next. Rank r takes slice r of each global batch.
"""

from __future__ import annotations

import random
from collections import defaultdict

from comfy_kiwi.errors import InputError


class BatchOrder:
    def __init__(self, buckets: list, batch_size: int, world_size: int = 1, seed: int = 0):
        self.buckets, self.seed = list(buckets), seed
        self.global_size, self.batch_size = batch_size * world_size, batch_size
        groups = defaultdict(list)
        for i, b in enumerate(self.buckets):
            groups[tuple(b)].append(i)
        self.groups = [groups[k] for k in sorted(groups)]
        self.per_epoch = sum(len(g) // self.global_size for g in self.groups)
        if self.per_epoch == 0:
            sizes = {tuple(k): len(v) for k, v in groups.items()}
            raise InputError(f"no bucket holds a full global batch of {self.global_size} items (batch_size × "
                             f"processes); bucket sizes {sizes}. Lower schedule.batch_size or add data.")
        self._epoch, self._batches = None, None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch != epoch:
            rng = random.Random(f"{self.seed}:{epoch}")
            batches = []
            for g in self.groups:
                g = list(g)
                rng.shuffle(g)
                batches += [g[i:i + self.global_size] for i in range(0, len(g) - self.global_size + 1,
                                                                     self.global_size)]
            rng.shuffle(batches)
            self._epoch, self._batches = epoch, batches
        return self._batches

    def batch(self, position: int, rank: int = 0) -> list[int]:
        """Item indices of global batch ``position`` (0, 1, …) for ``rank``."""
        epoch, i = divmod(position, self.per_epoch)
        batch = self._epoch_batches(epoch)[i]
        return batch[rank * self.batch_size:(rank + 1) * self.batch_size]


class MixedOrder:
    """Several datasets interleaved by :class:`comfy_kiwi.training_lib.kiwi_numerics.MixSchedule`.

    Micro-batch ``position`` p comes from dataset d(p) (round robin in dataset order by default, the
    released MixDataloader; smooth weighted round robin with ``weights``), and is that dataset's own
    batch number "picks of d before p" in its :class:`BatchOrder`. Both are pure functions of p, so a
    resumed run continues exactly; each dataset restarts (a new shuffled epoch) when it runs out.
    """

    def __init__(self, orders: list[BatchOrder], weights=None):
        from comfy_kiwi.training_lib.kiwi_numerics import MixSchedule
        self.orders = list(orders)
        k = len(self.orders)
        schedule = MixSchedule([1] * k, weights, epochs=10 ** 15)   # only the dataset sequence is used
        self.equal = schedule.equal
        self._picks = iter(schedule)
        self._seq: list[tuple[int, int]] = []        # (dataset, its own position) per global position
        self._counts = [0] * k

    def _locate(self, position: int) -> tuple[int, int]:
        k = len(self.orders)
        if self.equal:
            return position % k, position // k
        while len(self._seq) <= position:
            d, _ = next(self._picks)
            self._seq.append((d, self._counts[d]))
            self._counts[d] += 1
        return self._seq[position]

    def batch(self, position: int, rank: int = 0) -> tuple[int, list[int]]:
        """(dataset index, item indices) of micro-batch ``position`` for ``rank``."""
        d, own = self._locate(position)
        return d, self.orders[d].batch(own, rank)
