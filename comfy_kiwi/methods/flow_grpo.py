"""Flow-GRPO math for Edit-GRPO (VIVA): stochastic flow sampling with log-probabilities, group-relative
advantages, the clipped-ratio policy loss and the KL term to the reference policy.

Conventions (rectified flow as in ``comfy_kiwi.sampling``): x_σ = (1−σ)·x0 + σ·ε, velocity
v = ε − x0, sampling runs σ → σ_next < σ, so dt = σ_next − σ < 0.

**Flow-SDE** (Flow-GRPO, Liu et al. 2025). The ODE x' = v is replaced by the SDE with the same
marginals, whose drift adds the score term (score = −(x + (1−σ)·v)/σ for this interpolation):

    drift = v + s_σ²/(2σ) · (x + (1−σ)·v),        s_σ = a · sqrt(σ / (1−σ))
    x_next = x + drift·dt + s_σ·sqrt(−dt)·ε        (Euler–Maruyama)

so the step is Gaussian with mean μ = x·(1 + s_σ²·dt/(2σ)) + v·(1 + s_σ²(1−σ)/(2σ))·dt and
std = s_σ·sqrt(−dt). ``a`` is the noise level (Flow-GRPO: 0.7). At σ = 1 the noise formula
diverges; there the denominator 1−σ uses σ_next instead, which for the first step of a schedule
starting at 1 is Flow-GRPO's substitution (the schedule's second sigma).

**CPS** (coefficients-preserving sampling, Wang & Yu 2025): keep the interpolation coefficients
exact. With x̂0 = x − σ·v and ε̂ = x + (1−σ)·v,

    std = σ_next · sin(a·π/2),   μ = (1−σ_next)·x̂0 + sqrt(σ_next² − std²)·ε̂,   x_next = μ + std·ε

The step's log-probability is the Gaussian density of x_next under N(μ, std²), averaged over the
non-batch elements by default (Flow-GRPO's convention, which keeps the ratio's scale independent
of the resolution; ``reduce="sum"`` gives the joint log-density). Steps with std = 0
(a = 0, or CPS at σ_next = 0) are deterministic: x_next = μ and log_prob = 0; leave them out of
training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from ..errors import InputError

SDE_METHODS = ("sde", "cps")
REDUCTIONS = ("mean", "sum", "none")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class StepResult(NamedTuple):
    x_next: torch.Tensor     # [B, ...] the sample after the step (``prev_sample`` when given)
    log_prob: torch.Tensor   # [B] (reduce mean/sum) or [B, ...] (none), fp32
    mean: torch.Tensor       # [B, ...] μ of the step distribution, fp32
    std: torch.Tensor        # [B, 1, ...] std of the step distribution, fp32, broadcastable to x


def _per_sample(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """A number or [B] → fp32 [B, 1, ..., 1] broadcastable to ``x``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    if t.numel() not in (1, x.shape[0]):
        raise InputError(f"{name} must be a number or [B] = [{x.shape[0]}], got shape {tuple(t.shape)}.")
    return t.reshape(-1, *([1] * (x.ndim - 1))).expand(x.shape[0], *([1] * (x.ndim - 1)))


def step_distribution(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float,
                      method: str = "sde") -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, std) of one stochastic step from σ to σ_next (see the module doc); fp32."""
    if method not in SDE_METHODS:
        raise InputError(f"unknown SDE method {method!r}; choose one of {', '.join(SDE_METHODS)}.")
    if v.shape != x.shape:
        raise InputError(f"velocity {tuple(v.shape)} and latents {tuple(x.shape)} differ in shape.")
    if noise_level < 0:
        raise InputError(f"noise_level must be ≥ 0, got {noise_level}.")
    s, sn = _per_sample(sigma, x, "sigma"), _per_sample(sigma_next, x, "sigma_next")
    if bool((sn >= s).any()) or bool((s > 1).any()) or bool((sn < 0).any()):
        raise InputError("a sampling step needs 1 ≥ sigma > sigma_next ≥ 0.")
    xf, vf = x.float(), v.float()
    if method == "cps":
        std = sn * math.sin(noise_level * math.pi / 2)
        x0_hat, eps_hat = xf - s * vf, xf + (1 - s) * vf
        mean = (1 - sn) * x0_hat + (sn.pow(2) - std.pow(2)).clamp_min(0).sqrt() * eps_hat
        return mean, std
    dt = sn - s                                                           # < 0
    s_den = torch.where(s >= 1, sn, s)                                    # σ = 1: 1−σ_next in the denominator
    level = noise_level * (s / (1 - s_den)).sqrt()                        # s_σ = a·sqrt(σ/(1−σ))
    mean = xf * (1 + level.pow(2) * dt / (2 * s)) + vf * (1 + level.pow(2) * (1 - s) / (2 * s)) * dt
    return mean, level * (-dt).sqrt()


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      reduce: str = "mean") -> torch.Tensor:
    """log N(sample; mean, std²) per element, reduced over the non-batch dims. std = 0 rows give 0."""
    if reduce not in REDUCTIONS:
        raise InputError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}.")
    std = std.expand_as(mean)
    live = std > 0
    safe = torch.where(live, std, torch.ones_like(std))
    lp = -(sample.float() - mean).pow(2) / (2 * safe.pow(2)) - safe.log() - _HALF_LOG_2PI
    lp = torch.where(live, lp, torch.zeros_like(lp))
    if reduce == "none":
        return lp
    return lp.flatten(1).mean(1) if reduce == "mean" else lp.flatten(1).sum(1)


def sde_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float = 0.7,
             generator: torch.Generator | None = None, prev_sample: torch.Tensor | None = None, *,
             method: str = "sde", reduce: str = "mean") -> StepResult:
    """One stochastic step σ → σ_next with the log-probability of its outcome.

    x, v [B, ...]; sigma / sigma_next a number or [B]. Rollouts leave ``prev_sample`` None (a new
    x_next is drawn with ``generator``); the policy update passes the stored rollout sample as
    ``prev_sample`` to get its log-probability under the current velocity (gradients flow through
    μ, i.e. through ``v``). x_next is returned in ``x``'s dtype.
    """
    mean, std = step_distribution(x, v, sigma, sigma_next, noise_level, method)
    if prev_sample is None:
        gen_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32).to(x.device)
        sample = (mean + std * noise).detach()
    else:
        if prev_sample.shape != x.shape:
            raise InputError(f"prev_sample {tuple(prev_sample.shape)} must have the latents' shape {tuple(x.shape)}.")
        sample = prev_sample.float()
    return StepResult(sample.to(x.dtype), gaussian_log_prob(sample, mean, std, reduce), mean, std)


def group_advantages(rewards: torch.Tensor, clip: float = 5.0, eps: float = 1e-4,
                     global_std: bool = False) -> torch.Tensor:
    """Group-relative advantages A = (r − mean_g)/(std_g + eps), clipped to [−clip, clip].

    ``rewards`` [G] (one group) or [N, G] (N prompts × G rollouts each); std is the population std
    (ddof 0), so unclipped advantages have zero mean and unit std per group. A group whose rewards
    are all equal gets zero advantages. ``global_std`` divides by the std of all N·G rewards
    instead (Flow-GRPO's SD3.5 presets do; the mean stays per group).
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.ndim not in (1, 2) or r.shape[-1] < 2:
        raise InputError(f"rewards must be [G] or [N, G] with G ≥ 2 rollouts per group, got {tuple(r.shape)}.")
    if not bool(torch.isfinite(r).all()):
        raise InputError("rewards contain NaN or infinity.")
    if clip <= 0:
        raise InputError(f"advantage clip must be > 0, got {clip}.")
    mean = r.mean(-1, keepdim=True)
    std = r.std(correction=0) if global_std else r.std(-1, correction=0, keepdim=True)
    return ((r - mean) / (std + eps)).clamp(-clip, clip)


def grpo_policy_loss(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor, advantages: torch.Tensor,
                     clip_range: float = 1e-4) -> torch.Tensor:
    """PPO-style clipped surrogate, to minimise: mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))), ρ = exp(lp_new − lp_old).

    All three [B] (one entry per rollout and timestep); ``log_prob_old`` is treated as a constant.
    """
    adv_shape = torch.as_tensor(advantages).shape
    if log_prob_new.shape != log_prob_old.shape or log_prob_new.shape != adv_shape:
        raise InputError(f"log_prob_new {tuple(log_prob_new.shape)}, log_prob_old {tuple(log_prob_old.shape)} and "
                         f"advantages {tuple(adv_shape)} must have the same shape.")
    if clip_range <= 0:
        raise InputError(f"clip_range must be > 0, got {clip_range}.")
    a = torch.as_tensor(advantages, dtype=torch.float32, device=log_prob_new.device)
    ratio = torch.exp(log_prob_new.float() - log_prob_old.detach().float())
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


def kl_to_reference(mean_new: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, std²) ‖ N(μ_ref, std²)) per sample [B] = ‖μ − μ_ref‖²/(2·std²), averaged over elements.

    Both step distributions share std (it depends only on σ), so the KL is this closed form; the
    reference branch (the base model without LoRA) is a constant. Rows with std = 0 give 0.
    Scale note: Flow-GRPO's released code divides by 2·s_σ² (the SDE noise level without the
    sqrt(−dt) factor), so its KL is this one × (σ − σ_next) and its β values (0.04, 0.01, 0.004)
    are on that scale. Passing ``std = StepResult.std / sqrt(σ − σ_next)`` reproduces it.
    """
    if mean_new.shape != mean_ref.shape:
        raise InputError(f"mean_new {tuple(mean_new.shape)} and mean_ref {tuple(mean_ref.shape)} differ in shape.")
    std = torch.as_tensor(std, dtype=torch.float32, device=mean_new.device)
    std = std.reshape(-1, *([1] * (mean_new.ndim - 1))) if std.ndim <= 1 else std
    std = std.expand_as(mean_new)
    live = std > 0
    safe = torch.where(live, std, torch.ones_like(std))
    kl = (mean_new.float() - mean_ref.detach().float()).pow(2) / (2 * safe.pow(2))
    return torch.where(live, kl, torch.zeros_like(kl)).flatten(1).mean(1)


def flow_grpo_kl_std(std: torch.Tensor, sigma, sigma_next, method: str = "sde") -> torch.Tensor:
    """The std Flow-GRPO's KL divides by, from a step's ``std``: s_σ = std / sqrt(σ − σ_next) for the SDE step
    (its code uses the noise level without the sqrt(−dt) factor), the step's own std for CPS. With it
    ``kl_to_reference`` is on the scale Flow-GRPO's β values (0.04, 0.01, 0.004) were tuned for."""
    if method == "cps":
        return std
    return std / math.sqrt(float(sigma) - float(sigma_next))


def grpo_loss(log_prob_new, log_prob_old, advantages, clip_range: float, kl: torch.Tensor | None = None,
              kl_beta: float = 0.0) -> torch.Tensor:
    """Policy loss plus β·mean(KL): the scalar one Edit-GRPO update minimises at one timestep."""
    loss = grpo_policy_loss(log_prob_new, log_prob_old, advantages, clip_range)
    if kl is not None and kl_beta:
        loss = loss + kl_beta * kl.mean()
    return loss


def train_step_indices(num_steps: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sampling-step indices one rollout trains on: int(num_steps·fraction) of them, drawn at random
    without replacement (Flow-GRPO's ``timestep_fraction``), sorted; only steps with noise."""
    if num_steps < 1 or not 0 < fraction <= 1:
        raise InputError(f"need num_steps ≥ 1 and 0 < fraction ≤ 1, got {num_steps}, {fraction}.")
    k = max(1, int(num_steps * fraction))
    return torch.randperm(num_steps, generator=generator)[:k].sort().values


def combined_reward(instruction_following, source_preservation, preference, config: "EditGRPOConfig") -> torch.Tensor:
    """VIVA's reward r = w_IF·R_IF + w_SP·R_SP + w_PS·R_PS (each [B] or a number)."""
    parts = [torch.as_tensor(p, dtype=torch.float32) for p in (instruction_following, source_preservation, preference)]
    return config.w_if * parts[0] + config.w_sp * parts[1] + config.w_ps * parts[2]


# Where each default comes from (see docs/METHODS.md).
VIVA, FLOW_GRPO, OURS = "VIVA", "Flow-GRPO", "our choice"

# Suffixes of the DiT's linear layers that take LoRA: ``blocks.N.<suffix>`` in the original key layout.
LORA_TARGETS = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in ("q", "k", "v", "o"))


@dataclass
class EditGRPOConfig:
    """Edit-GRPO hyper-parameters; ``SOURCES`` names the paper (or us) behind each default."""

    lora_rank: int = 64                        # VIVA: LoRA r 64
    lora_alpha: float = 128.0                  # VIVA: α 128
    lora_targets: tuple[str, ...] = LORA_TARGETS   # VIVA: self- and cross-attention (q, k, v, o: our reading)
    group_size: int = 8                        # G rollouts per prompt (ours; Flow-GRPO: 24 on SD3.5, 4 on Wan2.1)
    sampling_steps: int = 10                   # Flow-GRPO: 10 rollout steps in training (40 at evaluation)
    noise_level: float = 0.7                   # Flow-GRPO: a = 0.7
    sde_method: str = "sde"                    # Flow-GRPO's SDE; "cps" optional (Wang & Yu)
    timestep_fraction: float = 0.6             # fraction of steps trained per rollout (ours; Flow-GRPO 0.99)
    clip_range: float = 1e-4                   # Flow-GRPO: ε = 1e-4 (1e-3 in its Wan2.1 preset)
    adv_clip: float = 5.0                      # Flow-GRPO: advantages clipped to ±5
    global_std: bool = False                   # ours: per-group std (Flow-GRPO's SD3.5 presets use the batch std)
    kl_beta: float = 0.04                      # Flow-GRPO: β = 0.04 (GenEval / OCR; 0.01 PickScore, 0.004 Wan2.1)
    w_if: float = 1.0                          # reward weights: VIVA names w_IF, w_SP, w_PS; values ours
    w_sp: float = 1.0
    w_ps: float = 1.0
    cfg_scale: float = 2.0                     # VIVA: CFG 2.0 on the instruction only, at inference
    rollout_cfg_scale: float = 1.0             # ours: rollouts without CFG (one DiT pass per step)
    shift: float = 5.0                         # Wan / Kiwi sampler shift
    learning_rate: float = 1e-4                # Flow-GRPO's Wan2.1 preset (3e-4 in its SD3.5 base config)

    SOURCES = {"lora_rank": VIVA, "lora_alpha": VIVA, "lora_targets": VIVA, "group_size": OURS,
               "sampling_steps": FLOW_GRPO, "noise_level": FLOW_GRPO, "sde_method": FLOW_GRPO,
               "timestep_fraction": OURS, "clip_range": FLOW_GRPO, "adv_clip": FLOW_GRPO, "global_std": OURS,
               "kl_beta": FLOW_GRPO,
               "w_if": OURS, "w_sp": OURS, "w_ps": OURS, "cfg_scale": VIVA, "rollout_cfg_scale": OURS,
               "shift": "Wan / Kiwi-Edit", "learning_rate": FLOW_GRPO}

    def __post_init__(self):
        checks = [(self.lora_rank >= 1, "lora_rank must be ≥ 1"), (self.lora_alpha > 0, "lora_alpha must be > 0"),
                  (self.group_size >= 2, "group_size must be ≥ 2 (advantages are relative within a group)"),
                  (self.sampling_steps >= 1, "sampling_steps must be ≥ 1"),
                  (self.noise_level >= 0, "noise_level must be ≥ 0"),
                  (self.sde_method in SDE_METHODS, f"sde_method must be one of {', '.join(SDE_METHODS)}"),
                  (0 < self.timestep_fraction <= 1, "timestep_fraction must be in (0, 1]"),
                  (self.clip_range > 0, "clip_range must be > 0"), (self.adv_clip > 0, "adv_clip must be > 0"),
                  (self.kl_beta >= 0, "kl_beta must be ≥ 0"),
                  (min(self.w_if, self.w_sp, self.w_ps) >= 0, "reward weights must be ≥ 0"),
                  (self.cfg_scale >= 1 and self.rollout_cfg_scale >= 1, "CFG scales must be ≥ 1")]
        for ok, message in checks:
            if not ok:
                raise InputError(f"EditGRPOConfig: {message}.")

    @classmethod
    def flow_grpo_wan(cls, **overrides) -> "EditGRPOConfig":
        """Flow-GRPO's own Wan2.1 video preset: 20 rollout steps, G 4, β 0.004, ε 1e-3, fraction 0.99."""
        values = dict(sampling_steps=20, group_size=4, kl_beta=0.004, clip_range=1e-3, timestep_fraction=0.99,
                      learning_rate=1e-4)
        return cls(**{**values, **overrides})

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def describe(self) -> dict[str, tuple[object, str]]:
        """{field: (value, source)} for logs and docs."""
        return {f.name: (getattr(self, f.name), self.SOURCES.get(f.name, OURS)) for f in fields(self)}
