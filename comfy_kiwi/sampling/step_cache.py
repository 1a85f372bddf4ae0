"""Runtime-adaptive step cache: skip the DiT blocks at steps where their result barely changes.

Between neighbouring sampling steps the transformer blocks' *residual* (blocks' output tokens minus
their input tokens) changes little over long stretches of the schedule. At such a step the cache adds
the last computed residual to the new input tokens instead of running the blocks; the patch/time
embeddings and the head still run, so the skipped step costs a small fraction of a forward.

When to skip is decided at run time, with no per-model calibration:

- proxy: the first block's modulated input ``LN(x)·(1 + scale₁) + shift₁`` — it moves with both the
  latents and the timestep and costs one layer norm;
- d = mean|p − p_prev| / mean|p_prev|, the proxy's relative L1 change since the previous call;
- rate k = (relative change of the residual) / (summed proxy change) between the last two computed
  calls — how strongly this model's residual reacts to its input right now, re-measured every time
  the blocks run;
- the blocks are skipped while the accumulated estimate k·Σd (the residual's relative drift since it
  was last computed) stays below ``threshold``; once it would reach it, the blocks run and the sum
  restarts at 0.

The first two calls of a branch always compute (the rate needs two), and the sampler's first and
last steps always compute (``begin_step``). A DiT called several times per step (VIVA's CFG runs the
positive and negative instruction as separate calls) keeps one state per call position, i.e. per
branch; one batched call (Kiwi-Edit's CFG [negative; positive]) shares one decision for the batch.
Hooks on the blocks (RVEDiT routing, ImVideoEdit, block swap, K/V cache) simply do not fire on a
skipped step. With autograd recording the cache steps aside: it is an inference-only shortcut.

``threshold`` 0 installs nothing: the sampler is the uncached one, bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass
class _Branch:
    proxy: torch.Tensor | None = None          # proxy of the previous call
    residual: torch.Tensor | None = None       # residual of the last computed call
    drift: float = 0.0                         # summed proxy change since the last computed call
    rate: float | None = None                  # residual change per unit proxy change


@dataclass
class StepRecord:
    step: int
    branch: int
    estimate: float | None      # estimated relative residual change (None: no rate yet / not allowed)
    skipped: bool


@dataclass
class StepCache:
    """State of one sampling run; attach with :func:`step_cache`, drive with :meth:`begin_step`."""

    threshold: float
    records: list[StepRecord] = field(default_factory=list, repr=False)
    _branches: dict[int, _Branch] = field(default_factory=dict, repr=False)
    _step: int = -1
    _steps: int = 0
    _calls: int = 0

    def __post_init__(self):
        check_threshold(self.threshold)

    # --- driven by the sampler ------------------------------------------------------------------------
    def begin_step(self, index: int, total: int) -> None:
        """Step ``index`` of ``total`` starts; calls until the next ``begin_step`` are its branches."""
        self._step, self._steps, self._calls = index, total, 0

    @property
    def forwards(self) -> int:
        return len(self.records)

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.records)

    # --- called from the DiT's forward ------------------------------------------------------------------
    def run_blocks(self, x: torch.Tensor, proxy: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]):
        """Blocks' output for tokens ``x`` [B, L, dim]: ``run(x)``, or x + the cached residual.
        Called by ``WanDiT.run_blocks`` only without autograd."""
        branch_index, self._calls = self._calls, self._calls + 1
        b = self._branches.setdefault(branch_index, _Branch())
        if b.proxy is not None and b.proxy.shape != proxy.shape:
            b = self._branches[branch_index] = _Branch()       # another shape: a new run on the same cache
        step_change = None if b.proxy is None else _relative_l1(proxy, b.proxy)
        b.proxy = proxy
        interior = 0 < self._step < self._steps - 1
        estimate = None
        if step_change is not None and b.rate is not None and b.residual is not None:
            estimate = b.rate * (b.drift + step_change)
        if interior and estimate is not None and estimate < self.threshold:
            b.drift += step_change
            self.records.append(StepRecord(self._step, branch_index, estimate, True))
            return (x.float() + b.residual.float()).to(x.dtype)
        out = run(x)
        residual = out - x
        if b.residual is not None and step_change is not None:
            total = b.drift + step_change
            if total > 0:
                b.rate = _relative_l1(residual, b.residual) / total
        b.residual, b.drift = residual, 0.0
        self.records.append(StepRecord(self._step, branch_index, estimate, False))
        return out


def _relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


def check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise InputError(f"step cache threshold must be a number ≥ 0 (0 = off; e.g. 0.04 mild, 0.2 aggressive), "
                         f"got {threshold!r}.")
    return float(threshold)


@contextlib.contextmanager
def step_cache(dit, threshold: float) -> Iterator[StepCache | None]:
    """``with step_cache(dit, 0.1) as cache: sample_euler(..., step_cache=cache)``; None (nothing
    installed) for threshold 0. Only one cache per DiT at a time."""
    if check_threshold(threshold) == 0:
        yield None
        return
    if not hasattr(dit, "step_cache"):
        raise InputError(f"{type(dit).__name__} has no step_cache slot; the step cache needs a comfy_kiwi WanDiT.")
    if dit.step_cache is not None:
        raise InputError("this DiT already has a step cache attached (nested sampling runs on one DiT?).")
    cache = dit.step_cache = StepCache(float(threshold))
    try:
        yield cache
    finally:
        dit.step_cache = None
        log.info("step cache %g: skipped the DiT blocks in %d of %d calls", threshold, cache.skipped, cache.forwards)
