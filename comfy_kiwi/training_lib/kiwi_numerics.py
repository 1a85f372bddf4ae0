"""Kiwi-Edit training numerics (release facts §2): timesteps, loss weights, noising, loss,
dataset mixing and the ConstantLR warm-up factor."""
from __future__ import annotations

import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.sampling.schedule import training_sigmas

NUM_TIMESTEPS = 1000


def sample_timestep_ids(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` timestep ids drawn uniformly from [0, 1000)."""
    if n < 1:
        raise InputError(f"sample_timestep_ids: n must be >= 1, got {n}.")
    return torch.randint(0, NUM_TIMESTEPS, (int(n),), generator=generator)


def timestep_and_sigma(ids: torch.Tensor, shift: float = 5.0, dtype=torch.bfloat16):
    """Return ``(t, sigma)`` for schedule ids as the release does: t = 1000·σ_id cast to ``dtype``
    (bf16), and σ = the schedule entry whose timestep is nearest to that rounded t."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= NUM_TIMESTEPS):
        raise InputError(f"timestep_and_sigma: ids must lie in [0, {NUM_TIMESTEPS}).")
    sigmas = training_sigmas(shift)  # float64, 1000 entries
    timesteps = sigmas * NUM_TIMESTEPS
    t = timesteps[ids].to(dtype).float()
    nearest = (timesteps[None, :] - t.double().reshape(-1, 1)).abs().argmin(dim=1)
    sigma = sigmas[nearest].reshape(ids.shape).float()
    return t.reshape(ids.shape), sigma


def loss_weights(shift: float = 5.0) -> torch.Tensor:
    """Per-schedule-entry loss weights: y = exp(-2((t-500)/1000)^2), w = y - min(y), sum(w) = 1000."""
    t = training_sigmas(shift) * NUM_TIMESTEPS
    y = torch.exp(-2.0 * ((t - NUM_TIMESTEPS / 2) / NUM_TIMESTEPS) ** 2)
    w = y - y.min()
    return (w * (NUM_TIMESTEPS / w.sum())).float()


def weight_for_timestep(t: torch.Tensor, shift: float = 5.0) -> torch.Tensor:
    """Loss weight of the schedule entry nearest to each (already rounded) timestep ``t``."""
    timesteps = training_sigmas(shift) * NUM_TIMESTEPS
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    return loss_weights(shift)[(timesteps[None, :] - t).abs().argmin(dim=1)]


LOSS_WEIGHTINGS = ("kiwi", "uniform")
# latent units (toy codec: pixels in [−1, 1], palette colours ≥ 0.63 apart in a channel)
EDIT_REGION_THRESHOLD = 0.05


def timestep_loss_weight(t: torch.Tensor, shift: float = 5.0, weighting: str = "kiwi") -> torch.Tensor:
    """Per-sample loss weight: "kiwi" = the release's Gaussian in t (``weight_for_timestep``); "uniform" = 1,
    the same mean over the schedule (the Kiwi weights sum to 1000 over its 1000 entries) but no discount
    of the high-noise steps, where a toy model trained from scratch must learn the whole edit."""
    if weighting == "kiwi":
        return weight_for_timestep(t, shift)
    if weighting == "uniform":
        return torch.ones(torch.as_tensor(t).reshape(-1).shape[0])
    raise InputError(f"loss weighting {weighting!r} is unknown; choose one of {', '.join(LOSS_WEIGHTINGS)}.")


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        return v
    if v.shape[0] != like.shape[0]:
        raise InputError(f"per-sample value has {v.shape[0]} entries for batch {like.shape[0]}.")
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def noisy_and_target(x0: torch.Tensor, noise: torch.Tensor, sigma):
    """x_t = (1-σ)·x0 + σ·ε and the flow target ε - x0 (σ a scalar or one per sample)."""
    if x0.shape != noise.shape:
        raise InputError(f"noisy_and_target: x0 {tuple(x0.shape)} vs noise {tuple(noise.shape)}.")
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * noise, noise - x0


def edit_region_weight(x0: torch.Tensor, source: torch.Tensor, factor: float,
                       threshold: float = EDIT_REGION_THRESHOLD, keep_share: float = 0.0) -> torch.Tensor:
    """Per-latent-cell loss weight ``1 + factor·[target ≠ source there]``, ``[B, 1, F, H, W]``.

    Not in the papers (their loss is a plain mean): an option for small edits, where the cells the edit
    changes are a few percent of the loss and a model learns "copy the source" long before the edit
    (docs/TOY_BENCHMARK.md). A cell counts as changed where any channel of target and source latents
    differs by more than ``threshold``.

    ``keep_share`` u > 0 caps the changed cells' weight per sample so that the unchanged cells keep at least
    the share u of that sample's weight: for a changed fraction f the changed weight is
    min(1 + factor, (1 − u)(1 − f) / (u·f)). Large edits (a new background) then still weigh the cells they
    must keep; small ones keep 1 + factor. A sample with every cell or no cell changed is a plain mean."""
    if x0.shape != source.shape:
        raise InputError(f"edit-region loss weight: target latents {tuple(x0.shape)} vs source "
                         f"{tuple(source.shape)}; it needs source and target of the same size "
                         "(set method.options.edit_region_weight = 0).")
    if not 0 <= keep_share < 1:
        raise InputError(f"edit-region keep share must be in [0, 1) (0 = no cap), got {keep_share!r}.")
    changed = ((x0.float() - source.float()).abs().amax(dim=1, keepdim=True) > threshold).float()
    if not keep_share:
        return 1.0 + factor * changed
    f = changed.flatten(1).mean(dim=1)                                       # [B] changed fraction
    u = keep_share
    cap = torch.where((f > 0) & (f < 1), (1 - u) * (1 - f) / (u * f.clamp_min(1e-12)), torch.full_like(f, 1 + factor))
    extra = torch.clamp(cap, max=1 + factor) - 1                             # [B] changed weight − 1
    return 1.0 + extra.view(-1, *([1] * (changed.ndim - 1))) * changed


def kiwi_loss(pred: torch.Tensor, target: torch.Tensor, weight,
              region_weight: torch.Tensor | None = None) -> torch.Tensor:
    """mse(pred.float(), target.float()) times the timestep weight (per-sample mean, then mean).
    With ``region_weight`` (``edit_region_weight``), each sample's mean is weighted by it instead."""
    if pred.shape != target.shape:
        raise InputError(f"kiwi_loss: pred {tuple(pred.shape)} vs target {tuple(target.shape)}.")
    err = (pred.float() - target.float()) ** 2
    if region_weight is not None:
        w = region_weight.to(err.device).expand_as(err).reshape(err.shape[0], -1)
        per_sample = (err.reshape(err.shape[0], -1) * w).sum(dim=1) / w.sum(dim=1)
    else:
        per_sample = err.reshape(err.shape[0], -1).mean(dim=1) if err.ndim > 1 else err
    w = torch.as_tensor(weight, dtype=torch.float32, device=err.device)
    return (per_sample * w).mean()


def constant_lr_warmup(step: int, factor: float = 1.0 / 3.0, total_iters: int = 5) -> float:
    """torch ConstantLR defaults: LR multiplier 1/3 for steps 0..4, then 1."""
    return factor if step < total_iters else 1.0


def linear_tail(step: int, total: int, share: float, floor: float = 0.05) -> float:
    """LR multiplier falling linearly from 1 to ``floor`` over the last ``share`` of ``total`` steps
    (not in the Kiwi release, which keeps the LR constant; the toy curriculum trains from scratch and
    settles with it)."""
    start = int(total * (1 - share))
    if share <= 0 or step < start or total <= start:
        return 1.0
    return 1.0 - (1.0 - floor) * (step - start) / (total - start)


class MixSchedule:
    """Deterministic interleave of several datasets, yielding ``(dataset_index, item_index)``.

    Default (equal shares, the release's MixDataloader): strict round robin in dataset order,
    length = min(len) · num_datasets · epochs, each dataset restarting when it runs out.
    With ``weights`` (e.g. 2:1:1): smooth weighted round robin — each pick, every dataset's
    credit grows by its weight; the largest credit (ties → lower index) is picked and pays the
    total weight. Length = min(len) · num_datasets · epochs as well.
    """

    def __init__(self, dataset_lengths, weights=None, epochs: int = 1):
        self.lengths = [int(n) for n in dataset_lengths]
        if not self.lengths or min(self.lengths) < 1:
            raise InputError(f"MixSchedule: every dataset needs >= 1 item, got {self.lengths}.")
        if epochs < 1:
            raise InputError(f"MixSchedule: epochs must be >= 1, got {epochs}.")
        if weights is None:
            self.weights = [1] * len(self.lengths)
        else:
            self.weights = [float(w) for w in weights]
            if len(self.weights) != len(self.lengths) or min(self.weights) <= 0:
                raise InputError(f"MixSchedule: need one positive weight per dataset, got {weights}.")
        self.epochs = int(epochs)
        self.equal = len(set(self.weights)) == 1

    @property
    def grad_accumulation(self) -> int:
        """One sample per dataset per optimizer step (release default)."""
        return len(self.lengths)

    def __len__(self) -> int:
        return min(self.lengths) * len(self.lengths) * self.epochs

    def __iter__(self):
        k = len(self.lengths)
        cursor = [0] * k
        credit = [0.0] * k
        total = sum(self.weights)
        for step in range(len(self)):
            if self.equal:
                d = step % k
            else:
                credit = [c + w for c, w in zip(credit, self.weights)]
                d = max(range(k), key=lambda i: (credit[i], -i))
                credit[d] -= total
            yield d, cursor[d]
            cursor[d] = (cursor[d] + 1) % self.lengths[d]
