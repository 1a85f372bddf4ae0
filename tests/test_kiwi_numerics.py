import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.sampling.schedule import training_sigmas
from comfy_kiwi.training_lib.kiwi_numerics import (
    MixSchedule, constant_lr_warmup, kiwi_loss, loss_weights, noisy_and_target,
    sample_timestep_ids, timestep_and_sigma, timestep_loss_weight, weight_for_timestep,
)


def test_sample_ids_range_and_seeded():
    g = torch.Generator().manual_seed(0)
    ids = sample_timestep_ids(5000, g)
    assert ids.min() >= 0 and ids.max() <= 999
    again = sample_timestep_ids(5000, torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)


def test_first_and_last_sigma():
    t, s = timestep_and_sigma(torch.tensor([0, 999]))
    assert s[0].item() == 1.0 and t[0].item() == 1000.0
    sig = training_sigmas(5.0)
    exact = 5 * 0.001 / (1 + 4 * 0.001)
    assert sig[999].item() == pytest.approx(exact, rel=1e-12)
    assert s[1].item() == pytest.approx(exact, rel=1e-6)
    assert t[1].item() == float(torch.tensor(1000 * exact).to(torch.bfloat16).float())


def test_bf16_rounding_picks_nearest_entry():
    ids = torch.arange(1000)
    t, s = timestep_and_sigma(ids)
    ts = training_sigmas(5.0) * 1000
    # t is exactly bf16-representable and σ is the entry nearest to it
    assert torch.equal(t, t.to(torch.bfloat16).float())
    nearest = (ts[None] - t.double()[:, None]).abs().argmin(1)
    assert torch.allclose(s.double(), training_sigmas(5.0)[nearest].float().double())
    # near t≈1000 bf16 steps are 4 apart, so several ids collapse onto one σ
    assert (nearest != ids).any()
    assert len(torch.unique(s)) < 1000


def test_loss_weights_pinned():
    w = loss_weights()
    assert w.shape == (1000,)
    assert w.min().item() == 0.0
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert w.max().item() == pytest.approx(2.08, abs=0.01)
    assert weight_for_timestep(torch.tensor([1000.0]))[0].item() == w[0].item()


def test_timestep_loss_weight_kiwi_or_uniform():
    t = torch.tensor([999.0, 500.0, 20.0])
    assert torch.equal(timestep_loss_weight(t, 5.0, "kiwi"), weight_for_timestep(t, 5.0))
    assert torch.equal(timestep_loss_weight(t, 5.0, "uniform"), torch.ones(3))
    with pytest.raises(InputError, match="kiwi, uniform"):
        timestep_loss_weight(t, 5.0, "snr")


def test_noisy_and_target_algebra():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    sigma = torch.tensor([0.0, 1.0])
    xt, tgt = noisy_and_target(x0, eps, sigma)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[1], eps[1])
    assert torch.allclose(tgt, eps - x0)
    xt, _ = noisy_and_target(x0, eps, 0.25)
    assert torch.allclose(xt, 0.75 * x0 + 0.25 * eps)
    # x0 = x_t - σ·target
    assert torch.allclose(xt - 0.25 * (eps - x0), x0, atol=1e-6)
    with pytest.raises(InputError):
        noisy_and_target(x0, eps[:1], 0.5)


def test_kiwi_loss():
    pred = torch.ones(2, 4, dtype=torch.bfloat16)
    tgt = torch.zeros(2, 4)
    assert kiwi_loss(pred, tgt, 2.0).item() == pytest.approx(2.0)
    assert kiwi_loss(pred, tgt, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)


def test_edit_region_weight_and_weighted_loss():
    from comfy_kiwi.training_lib.kiwi_numerics import edit_region_weight
    x0 = torch.zeros(2, 3, 1, 2, 2)                      # [B, C, F, H, W]
    src = x0.clone()
    src[0, 1, 0, 0, 1] = 0.5                             # sample 0: one channel of cell (0, 1) differs
    src[1, 2, 0, 1, 1] = 0.01                            # sample 1: a difference under the threshold
    w = edit_region_weight(x0, src, 10.0)
    assert w.shape == (2, 1, 1, 2, 2)
    assert w[0, 0, 0].tolist() == [[1.0, 11.0], [1.0, 1.0]] and bool((w[1] == 1).all())
    err = torch.zeros(2, 3, 1, 2, 2)
    err[0, :, 0, 0, 1] = 1.0                             # squared error 1 only in the changed cell
    # sample 0: 3·11 / (3·(11 + 3)) = 11/14; sample 1: 0 → mean 11/28
    assert kiwi_loss(err, torch.zeros_like(err), 1.0, w).item() == pytest.approx(11 / 28)
    assert kiwi_loss(err, torch.zeros_like(err), 1.0).item() == pytest.approx(3 / 24)      # plain mean without it
    assert torch.equal(kiwi_loss(err, torch.zeros_like(err), 1.0, torch.ones(2, 1, 1, 2, 2)),
                       kiwi_loss(err, torch.zeros_like(err), 1.0))
    with pytest.raises(InputError, match="edit-region loss weight"):
        edit_region_weight(x0, src[:, :, :, :1], 10.0)


def test_edit_region_keep_share_caps_large_edits():
    from comfy_kiwi.training_lib.kiwi_numerics import edit_region_weight
    x0 = torch.zeros(4, 1, 1, 2, 5)                      # 10 cells per sample
    src = x0.clone()
    src[0, 0, 0, 0, 0] = 1.0                             # 1 of 10 changed: cap 0.9·0.9/(0.1·0.1) = 81 > 31 → 31
    src[1, 0, 0, :, :4] = 1.0                            # 8 of 10: cap 0.9·0.2/(0.1·0.8) = 2.25
    src[2] = 1.0                                         # all changed: plain mean
    w = edit_region_weight(x0, src, 30.0, keep_share=0.1)   # sample 3: nothing changed
    assert w[0].flatten().tolist() == pytest.approx([31.0] + [1.0] * 9)
    assert w[1, 0, 0, 0].tolist() == pytest.approx([2.25] * 4 + [1.0]) and w[1, 0, 0, 1, :4].tolist() == pytest.approx([2.25] * 4)
    unchanged = w[1].flatten()[[4, 9]].sum() / w[1].sum()
    assert unchanged.item() == pytest.approx(0.1)        # the unchanged cells keep exactly the share u
    assert bool((w[2] == 31).all()) and bool((w[3] == 1).all())
    assert torch.equal(edit_region_weight(x0, src, 30.0, keep_share=0.0), edit_region_weight(x0, src, 30.0))
    with pytest.raises(InputError, match="keep share must be in"):
        edit_region_weight(x0, src, 30.0, keep_share=1.0)


def test_mix_round_robin_with_restarts():
    mix = MixSchedule((3, 5, 4))
    order = list(mix)
    assert len(mix) == 9 and len(order) == 9 and mix.grad_accumulation == 3
    assert [d for d, _ in order] == [0, 1, 2] * 3
    assert [i for d, i in order if d == 0] == [0, 1, 2]
    assert [i for d, i in order if d == 1] == [0, 1, 2]
    order2 = list(MixSchedule((3, 5, 4), epochs=2))
    assert [i for d, i in order2 if d == 0] == [0, 1, 2, 0, 1, 2]  # restarts
    assert [i for d, i in order2 if d == 2] == [0, 1, 2, 3, 0, 1]


def test_mix_weighted_proportions():
    mix = MixSchedule((100, 100, 100), weights=(2, 1, 1), epochs=4)
    picks = [d for d, _ in mix]
    assert len(picks) == 1200
    assert [picks.count(k) for k in range(3)] == [600, 300, 300]
    assert picks[:4] == [0, 1, 2, 0]  # smooth: never two of dataset 0 ahead of the others
    assert list(mix) == list(mix)  # deterministic
    with pytest.raises(InputError):
        MixSchedule((3, 0))
    with pytest.raises(InputError):
        MixSchedule((3, 4), weights=(1,))


def test_constant_lr_matches_torch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = torch.optim.lr_scheduler.ConstantLR(opt)
    for step in range(8):
        assert opt.param_groups[0]["lr"] == pytest.approx(constant_lr_warmup(step))
        opt.step()
        sched.step()
    assert constant_lr_warmup(4) == pytest.approx(1 / 3) and constant_lr_warmup(5) == 1.0
