"""Edit-GRPO (VIVA) rollouts and the policy update, over any velocity function.

The math lives in :mod:`comfy_kiwi.methods.flow_grpo`; this module runs it over whole sampling
trajectories:

1. ``rollout``: from noise, ``steps`` Flow-SDE steps without gradients, storing every x, x_next
   and log π_old(x_next | x) (the behaviour policy's log-probability);
2. rewards of the decoded rollouts (the caller's; VIVA: w_IF·R_IF + w_SP·R_SP + w_PS·R_PS through
   ``flow_grpo.combined_reward``) → ``flow_grpo.group_advantages`` over the G rollouts of a prompt;
3. ``policy_loss``: on a random fraction of the steps, recompute log π_θ(x_next | x) with gradients
   (``sde_step(..., prev_sample=x_next)``), the reference mean μ_ref with the LoRA switched off
   (no grad), and sum the clipped-ratio loss and β·KL(π_θ ‖ π_ref), the KL on Flow-GRPO's scale
   (``flow_grpo.flow_grpo_kl_std``), so its β values carry over.

``velocity(x, sigma) -> v`` is the model call; the reference policy is the same network with its
LoRA disabled (``lora_disabled``), so the KL is exactly zero while the LoRA's B matrices are zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..sampling import flow_sigmas
from . import flow_grpo as fg

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class Rollout:
    """One batch of trajectories: ``xs[i]`` → ``xs[i + 1]`` is sampling step i (σ_i → σ_{i+1})."""

    xs: list[torch.Tensor]            # steps + 1 tensors [B, C, F, H, W]; xs[-1] = the final latents
    log_probs: torch.Tensor           # [steps, B] log π_old of each step's outcome
    sigmas: torch.Tensor              # [steps + 1], ending at 0

    @property
    def final(self) -> torch.Tensor:
        return self.xs[-1]

    @property
    def steps(self) -> int:
        return len(self.xs) - 1


def rollout_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The rollout schedule: the sampler's shifted σ (σ_min 0) with the final σ = 0 appended."""
    s = flow_sigmas(steps, shift)
    return torch.cat([s.float(), s.new_zeros(1).float()]) if float(s[-1]) != 0 else s.float()


@torch.no_grad()
def rollout(velocity: Velocity, noise: torch.Tensor, config: fg.EditGRPOConfig,
            generator: torch.Generator | None = None) -> Rollout:
    """Sample ``noise.shape[0]`` trajectories with Flow-SDE steps; no gradients are recorded.

    The last step (σ_next = 0) uses the same formula; with CPS its std is 0, so it is deterministic
    and gets log_prob 0 (``trainable_steps`` leaves such steps out)."""
    sigmas = rollout_sigmas(config.sampling_steps, config.shift)
    x, xs, lps = noise.float(), [noise.float()], []
    for i in range(len(sigmas) - 1):
        v = velocity(x, float(sigmas[i])).float()
        step = fg.sde_step(x, v, float(sigmas[i]), float(sigmas[i + 1]), config.noise_level, generator,
                           method=config.sde_method)
        x = step.x_next.float()
        xs.append(x)
        lps.append(step.log_prob)
    return Rollout(xs, torch.stack(lps), sigmas)


def trainable_steps(r: Rollout, config: fg.EditGRPOConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the steps trained this update: ``timestep_fraction`` of the stochastic ones, drawn at random."""
    live = [i for i in range(r.steps)
            if float(fg.step_distribution(r.xs[i][:1], torch.zeros_like(r.xs[i][:1]), float(r.sigmas[i]),
                                          float(r.sigmas[i + 1]), config.noise_level, config.sde_method)[1].max()) > 0]
    if not live:
        raise InputError("no sampling step of this rollout is stochastic (noise_level 0?); nothing to train on.")
    pick = fg.train_step_indices(len(live), config.timestep_fraction, generator)
    return torch.tensor([live[int(i)] for i in pick])


@contextlib.contextmanager
def lora_disabled(adapter):
    """The reference policy: the same network with the trainable LoRA's hooks removed for the block."""
    if adapter is None:
        yield
        return
    adapter.detach()
    try:
        yield
    finally:
        adapter.attach()


@dataclass
class PolicyTerms:
    loss: torch.Tensor          # scalar: mean over trained steps of clipped policy loss + β·KL
    kl: torch.Tensor            # scalar: mean KL over trained steps (logged)
    ratio: torch.Tensor         # scalar: mean π_θ/π_old (1 on the first update after a rollout)


def policy_loss(velocity: Velocity, r: Rollout, advantages: torch.Tensor, step_indices, config: fg.EditGRPOConfig,
                adapter=None) -> PolicyTerms:
    """The Edit-GRPO objective on the trained steps of one rollout batch.

    ``advantages`` [B] (one per trajectory, already group-normalised and clipped). The reference
    mean comes from ``velocity`` under ``lora_disabled(adapter)``; without an adapter, or with
    ``kl_beta`` 0, the KL term is skipped (reported as 0)."""
    adv = torch.as_tensor(advantages, dtype=torch.float32, device=r.final.device).reshape(-1)
    if adv.shape[0] != r.final.shape[0]:
        raise InputError(f"advantages have {adv.shape[0]} entries but the rollout has {r.final.shape[0]} samples.")
    steps = [int(i) for i in torch.as_tensor(step_indices).reshape(-1)]
    if not steps:
        raise InputError("policy_loss needs at least one step index.")
    total, kls, ratios = 0.0, [], []
    for i in steps:
        x, x_next, s, s_next = r.xs[i], r.xs[i + 1], float(r.sigmas[i]), float(r.sigmas[i + 1])
        v = velocity(x, s).float()
        step = fg.sde_step(x, v, s, s_next, config.noise_level, prev_sample=x_next, method=config.sde_method)
        kl = None
        if config.kl_beta and adapter is not None:
            with torch.no_grad(), lora_disabled(adapter):
                v_ref = velocity(x, s).float()
            mean_ref, _ = fg.step_distribution(x, v_ref, s, s_next, config.noise_level, config.sde_method)
            # β is on Flow-GRPO's KL scale (‖μ − μ_ref‖² / 2s_σ², not / 2·std²)
            kl = fg.kl_to_reference(step.mean, mean_ref,
                                    fg.flow_grpo_kl_std(step.std.flatten(), s, s_next, config.sde_method))
            kls.append(kl.detach().mean())
        total = total + fg.grpo_loss(step.log_prob, r.log_probs[i].to(step.log_prob.device), adv,
                                     config.clip_range, kl, config.kl_beta)
        ratios.append(torch.exp(step.log_prob.detach() - r.log_probs[i].to(step.log_prob.device)).mean())
    zero = torch.zeros((), device=r.final.device)
    return PolicyTerms(total / len(steps), torch.stack(kls).mean() if kls else zero, torch.stack(ratios).mean())
