"""Flow-GRPO math: SDE / CPS step log-probabilities, advantages, clipped policy loss, KL, and a toy GRPO run."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from comfy_kiwi.errors import InputError
from comfy_kiwi.methods import flow_grpo as fg
from comfy_kiwi.sampling import flow_sigmas


def _xv(seed=0, shape=(3, 4, 2, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_sde_step_log_prob_matches_normal_density():
    x, v = _xv()
    sigma, sigma_next, a = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.3, 0.0]), 0.7
    out = fg.sde_step(x, v, sigma, sigma_next, a, generator=torch.Generator().manual_seed(1))
    # independent computation of the Flow-SDE step distribution
    s, sn = sigma.view(-1, 1, 1, 1, 1), sigma_next.view(-1, 1, 1, 1, 1)
    dt = sn - s
    level = a * torch.sqrt(s / (1 - s))
    drift = v + level ** 2 / (2 * s) * (x + (1 - s) * v)
    mean, std = x + drift * dt, level * torch.sqrt(-dt)
    assert torch.allclose(out.mean, mean, atol=1e-5) and torch.allclose(out.std, std, atol=1e-6)
    ref = Normal(mean, std.expand_as(mean)).log_prob(out.x_next).flatten(1)
    assert torch.allclose(out.log_prob, ref.mean(1), atol=1e-4)
    summed = fg.sde_step(x, v, sigma, sigma_next, a, prev_sample=out.x_next, reduce="sum")
    assert torch.allclose(summed.log_prob, ref.sum(1), rtol=1e-5, atol=1e-3)
    assert torch.equal(summed.x_next, out.x_next)


def test_cps_step_log_prob_and_coefficients():
    x, v = _xv(2)
    sigma, sigma_next, a = 0.6, 0.4, 0.5
    out = fg.sde_step(x, v, sigma, sigma_next, a, method="cps", generator=torch.Generator().manual_seed(3))
    std = sigma_next * math.sin(a * math.pi / 2)
    x0, eps = x - sigma * v, x + (1 - sigma) * v
    mean = (1 - sigma_next) * x0 + math.sqrt(sigma_next ** 2 - std ** 2) * eps
    assert torch.allclose(out.mean, mean, atol=1e-5)
    ref = Normal(mean, torch.full_like(mean, std)).log_prob(out.x_next).flatten(1).mean(1)
    assert torch.allclose(out.log_prob, ref, atol=1e-4)
    last = fg.sde_step(x, v, sigma, 0.0, a, method="cps")      # σ_next = 0: deterministic, x̂0
    assert torch.allclose(last.x_next, x0, atol=1e-5) and torch.all(last.log_prob == 0)


def test_sde_without_noise_is_euler_and_checks_inputs():
    x, v = _xv(4)
    out = fg.sde_step(x, v, 0.7, 0.5, noise_level=0.0)
    assert torch.allclose(out.x_next, x + v * (0.5 - 0.7), atol=1e-6)
    at_one = fg.sde_step(x, v, 1.0, 0.9, 0.7)                 # σ = 1: 1−σ_next in the denominator
    assert torch.isfinite(at_one.log_prob).all() and torch.isfinite(at_one.x_next).all()
    assert torch.allclose(at_one.std, torch.tensor(0.7 * math.sqrt(1 / 0.1) * math.sqrt(0.1)))
    with pytest.raises(InputError, match="sigma_next"):
        fg.sde_step(x, v, 0.5, 0.6)
    with pytest.raises(InputError, match="method"):
        fg.sde_step(x, v, 0.5, 0.4, method="ode")


def test_group_advantages_normalised_and_clipped():
    r = torch.tensor([[1.0, 2.0, 3.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    adv = fg.group_advantages(r, clip=100.0)
    assert torch.allclose(adv[0].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(adv[0].std(correction=0), torch.tensor(1.0), atol=1e-3)
    assert torch.all(adv[1] == 0)                               # equal rewards: no signal
    glob = fg.group_advantages(r, clip=100.0, global_std=True)
    assert torch.allclose(glob.mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(glob[0], (r[0] - r[0].mean()) / (r.std(correction=0) + 1e-4))
    one = fg.group_advantages(torch.tensor([0.0] * 15 + [1.0]), clip=2.0)
    assert one.max() == 2.0 and one.min() > -1                  # outlier clipped
    with pytest.raises(InputError):
        fg.group_advantages(torch.tensor([1.0]))


def test_policy_loss_clipping_and_kl():
    lp_old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    lp_new = torch.tensor([0.5, 0.5, -0.5, -0.5], requires_grad=True)
    loss = fg.grpo_policy_loss(lp_new, lp_old, adv, clip_range=0.2)
    ratio = lp_new.detach().exp()
    expected = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    assert torch.allclose(loss, expected)
    loss.backward()                 # clipped entries (A>0, ρ>1.2) and (A<0, ρ<0.8) get no gradient
    assert lp_new.grad[0] == 0 and lp_new.grad[3] == 0 and lp_new.grad[1] != 0 and lp_new.grad[2] != 0
    # KL: zero when new == reference, the Gaussian closed form otherwise
    mu = torch.randn(2, 3, 4)
    std = torch.tensor([0.5, 2.0])
    assert torch.all(fg.kl_to_reference(mu, mu.clone(), std) == 0)
    mu_ref = mu + 0.3
    kl = fg.kl_to_reference(mu, mu_ref, std)
    s = std.view(-1, 1, 1).expand_as(mu)
    ref = torch.distributions.kl_divergence(Normal(mu, s), Normal(mu_ref, s)).flatten(1).mean(1)
    assert torch.allclose(kl, ref, atol=1e-6)


class ToyPolicy(torch.nn.Module):
    """v(x, σ) = W·[x, σ] + b on 2-D points."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        torch.nn.init.zeros_(self.lin.weight)
        torch.nn.init.zeros_(self.lin.bias)

    def forward(self, x, sigma):
        return self.lin(torch.cat([x, torch.full_like(x[:, :1], sigma)], dim=1))


def _rollout(policy, n, sigmas, gen, noise_level):
    x = torch.randn(n, 2, generator=gen)
    traj = []
    with torch.no_grad():
        for i, s in enumerate(sigmas[:-1]):
            out = fg.sde_step(x, policy(x, s), s, sigmas[i + 1], noise_level, generator=gen)
            traj.append((x, out.x_next, out.log_prob))
            x = out.x_next
    return x, traj


def test_grpo_updates_raise_a_toy_reward():
    torch.manual_seed(0)
    policy, target = ToyPolicy(), torch.tensor([2.0, -1.0])
    sigmas = [float(s) for s in flow_sigmas(6, shift=3.0)] + [0.0]
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    reward = lambda x: -(x - target).pow(2).sum(1)                     # noqa: E731
    eval_gen = lambda: torch.Generator().manual_seed(123)              # noqa: E731

    before = reward(_rollout(policy, 512, sigmas, eval_gen(), 0.7)[0]).mean()
    gen = torch.Generator().manual_seed(7)
    for _ in range(8):
        final, traj = _rollout(policy, 32, sigmas, gen, 0.7)           # one group of G = 32
        adv = fg.group_advantages(reward(final), clip=5.0)
        for _inner in range(2):
            opt.zero_grad()
            loss = 0.0
            for i, (x, x_next, lp_old) in enumerate(traj):
                new = fg.sde_step(x, policy(x, sigmas[i]), sigmas[i], sigmas[i + 1], 0.7, prev_sample=x_next)
                loss = loss + fg.grpo_loss(new.log_prob, lp_old, adv, clip_range=0.2) / len(traj)
            loss.backward()
            opt.step()
    after = reward(_rollout(policy, 512, sigmas, eval_gen(), 0.7)[0]).mean()
    assert after > before + 2.0, (before.item(), after.item())


def test_config_defaults_and_sources():
    cfg = fg.EditGRPOConfig()
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.cfg_scale, cfg.lora_scale) == (64, 128.0, 2.0, 2.0)
    d = cfg.describe()
    assert d["lora_rank"] == (64, "VIVA") and d["noise_level"] == (0.7, "Flow-GRPO")
    assert set(d) == set(fg.EditGRPOConfig.SOURCES)
    assert "self_attn.q" in cfg.lora_targets and "cross_attn.o" in cfg.lora_targets
    r = fg.combined_reward(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0]),
                           fg.EditGRPOConfig(w_if=1.0, w_sp=0.5, w_ps=2.0))
    assert torch.allclose(r, torch.tensor([8.0]))
    idx = fg.train_step_indices(10, 0.6, torch.Generator().manual_seed(0))
    assert len(idx) == 6 and len(set(idx.tolist())) == 6 and idx.max() < 10
    wan = fg.EditGRPOConfig.flow_grpo_wan()
    assert (wan.sampling_steps, wan.group_size, wan.kl_beta, wan.lora_rank) == (20, 4, 0.004, 64)
    with pytest.raises(InputError, match="group_size"):
        fg.EditGRPOConfig(group_size=1)


def test_edit_grpo_kl_is_on_flow_grpo_scale():
    """The KL that β multiplies: mean over elements of (μ − μ_ref)² / (2·s_σ²) with s_σ = a·sqrt(σ/(1−σ)) for
    the SDE step (Flow-GRPO's noise level, no sqrt(σ − σ_next)); for CPS the step std σ_next·sin(aπ/2)."""
    from comfy_kiwi.methods import edit_grpo as eg
    cfg = fg.EditGRPOConfig(sampling_steps=3, group_size=2, kl_beta=1.0, noise_level=0.7)
    shift = torch.tensor(0.25)

    class Adapter:                              # the "LoRA": a constant velocity offset, removed for the reference
        on = True

        def detach(self):
            self.on = False

        def attach(self):
            self.on = True
    adapter = Adapter()

    def velocity(x, s):
        return x * 0.1 + (shift if adapter.on else 0.0)
    for method in ("sde", "cps"):
        cfg.sde_method = method
        r = eg.rollout(velocity, torch.randn(2, 1, 1, 2, 2, generator=torch.Generator().manual_seed(0)), cfg,
                       torch.Generator().manual_seed(1))
        i = 1
        s, sn = float(r.sigmas[i]), float(r.sigmas[i + 1])
        terms = eg.policy_loss(velocity, r, torch.tensor([1.0, -1.0]), [i], cfg, adapter)
        m_new, _ = fg.step_distribution(r.xs[i], velocity(r.xs[i], s), s, sn, 0.7, method)
        adapter.on = False
        m_ref, _ = fg.step_distribution(r.xs[i], velocity(r.xs[i], s), s, sn, 0.7, method)
        adapter.on = True
        std = 0.7 * math.sqrt(s / (1 - s)) if method == "sde" else sn * math.sin(0.7 * math.pi / 2)
        expected = float(((m_new - m_ref) ** 2).mean() / (2 * std ** 2))
        assert expected > 0 and abs(float(terms.kl) - expected) < 1e-6 * max(1.0, expected), (method, terms.kl, expected)
