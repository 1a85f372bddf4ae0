"""The runtime-adaptive step cache (comfy_kiwi/sampling/step_cache.py): off = the uncached sampler bit for
bit; skips exactly when the run-time estimate is under the threshold, never at the first or last step; reuses
each CFG branch's own residual; works through block swap, the K/V cache, RVEDiT routing and ImVideoEdit;
steps aside under autograd."""

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.memory import block_swap
from comfy_kiwi.pipeline import EditConditioning, EditSettings, SourceConditioning, sample_edit
from comfy_kiwi.sampling import flow_sigmas, noise_like, sample_euler
from comfy_kiwi.sampling.step_cache import StepCache, step_cache
from comfy_kiwi.testing.tiny_dit import tiny_config, tiny_dit

STEPS = 16
TH = 0.5                 # skips some, not all, steps of these random tiny DiTs


def kiwi_setup(layers=2, seed=3):
    dit = tiny_dit(config=tiny_config("2.1", num_layers=layers), seed=seed, embedders=True)
    dit.context_embedding = "none"
    g = torch.Generator().manual_seed(seed)
    cond = EditConditioning(torch.randn(1, 5, dit.config.dim, generator=g),
                            torch.randn(1, 5, dit.config.dim, generator=g))
    source = SourceConditioning(torch.randn(1, 16, 2, 4, 6, generator=g))
    return dit, cond, source


def rel_err(a, b):
    return float((a - b).abs().mean() / b.abs().mean())


def settings(**kw):
    return EditSettings(steps=STEPS, progress=False, **kw)


@pytest.fixture
def spy(monkeypatch):
    """Every cached DiT call: (step, branch, tokens in, blocks' output, skipped?)."""
    calls = []
    original = StepCache.run_blocks

    def run_blocks(self, x, proxy, run):
        n = len(self.records)
        out = original(self, x, proxy, run)
        r = self.records[n]
        calls.append((r.step, r.branch, x.clone(), out.clone(), r.skipped))
        return out
    monkeypatch.setattr(StepCache, "run_blocks", run_blocks)
    return calls


@pytest.fixture
def caches(monkeypatch):
    """The StepCache of each sampling run."""
    made = []
    original = StepCache.__post_init__

    def post_init(self):
        original(self)
        made.append(self)
    monkeypatch.setattr(StepCache, "__post_init__", post_init)
    return made


def test_threshold_zero_installs_nothing_and_a_never_skipping_cache_is_bit_identical(caches):
    dit, cond, source = kiwi_setup()
    plain = sample_edit(dit, cond, source, settings())
    assert torch.equal(sample_edit(dit, cond, source, settings(step_cache=0.0)), plain) and caches == []
    # attached but never skipping (threshold below any estimate): every step computed, result unchanged
    tiny = sample_edit(dit, cond, source, settings(step_cache=1e-12))
    assert caches[-1].forwards == STEPS and caches[-1].skipped == 0
    assert torch.equal(tiny, plain)
    assert dit.step_cache is None                                  # detached after the run


@pytest.mark.parametrize("threshold", [TH, 1e9])
def test_skips_exactly_below_threshold_and_never_first_or_last(threshold, caches):
    dit, cond, source = kiwi_setup()
    plain = sample_edit(dit, cond, source, settings())
    got = sample_edit(dit, cond, source, settings(step_cache=threshold))
    cache = caches[-1]
    assert [r.step for r in cache.records] == list(range(STEPS))
    for r in cache.records:
        may = 0 < r.step < STEPS - 1 and r.estimate is not None
        assert r.skipped == (may and r.estimate < threshold), r
    assert not cache.records[0].skipped and not cache.records[-1].skipped
    if threshold == 1e9:      # everything skippable is skipped: only steps 0, 1 (rate needs two) and the last run
        assert [r.step for r in cache.records if not r.skipped] == [0, 1, STEPS - 1]
    else:
        assert 0 < cache.skipped < STEPS - 3
    assert 0 < rel_err(got, plain) < (0.5 if threshold == 1e9 else 0.3)


def test_a_skipped_call_adds_the_last_computed_residual(spy):
    dit, cond, source = kiwi_setup()
    sample_edit(dit, cond, source, settings(step_cache=TH))
    residual, skipped = None, 0
    for step, branch, x, out, was_skipped in spy:
        if was_skipped:
            skipped += 1
            assert torch.allclose(out - x, residual, atol=1e-5)
        else:
            residual = out - x
    assert skipped > 0


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_viva_cfg_branches_each_reuse_their_own_residual(spy, cfg):
    """VIVA runs the positive and negative instruction as two DiT calls per step: two cache branches."""
    from comfy_kiwi.methods.viva import attach_viva, conditioning, viva_settings
    model = tiny_dit("2.1", seed=2)
    refiner = attach_viva(model, in_dim=24)
    g = torch.Generator().manual_seed(0)
    cond = conditioning(refiner, torch.randn(1, 5, 24, generator=g), torch.ones(1, 5, dtype=torch.bool),
                        3 * torch.randn(1, 3, 24, generator=g), torch.ones(1, 3, dtype=torch.bool))
    src = SourceConditioning(torch.randn(1, 16, 2, 6, 10, generator=g))
    sample_edit(model, cond, src, viva_settings(steps=STEPS, cfg=cfg, progress=False, step_cache=1e9))
    branches = 2 if cfg != 1.0 else 1
    assert {b for _, b, *_ in spy} == set(range(branches)) and len(spy) == branches * STEPS
    last = {}
    for step, branch, x, out, skipped in spy:
        assert skipped == (1 < step < STEPS - 1)
        if skipped:
            assert torch.allclose(out - x, last[branch], atol=1e-5)
            for other, r in last.items():     # and not another branch's residual
                assert other == branch or not torch.allclose(out - x, r, atol=1e-3)
        else:
            last[branch] = out - x


def test_batched_cfg_is_one_branch_and_stays_close(caches):
    dit, cond, source = kiwi_setup()
    plain = sample_edit(dit, cond, source, settings(cfg=2.0))
    got = sample_edit(dit, cond, source, settings(cfg=2.0, step_cache=TH))
    assert {r.branch for r in caches[-1].records} == {0} and caches[-1].skipped > 0
    assert rel_err(got, plain) < 0.3


def test_block_swap_and_kv_cache_give_the_same_cached_run(caches):
    dit, cond, source = kiwi_setup(layers=4)
    ref = sample_edit(dit, cond, source, settings(step_cache=TH, kv_cache=False))
    ref_skips = [r.skipped for r in caches[-1].records]
    with_kv = sample_edit(dit, cond, source, settings(step_cache=TH, kv_cache=True))
    swapped = sample_edit(dit, cond, source, settings(step_cache=TH, kv_cache=True, block_swap=4))
    assert torch.equal(with_kv, ref) and torch.equal(swapped, ref)
    assert [r.skipped for r in caches[-1].records] == ref_skips and any(ref_skips)


def test_block_swap_skipped_steps_load_no_blocks():
    dit, cond, source = kiwi_setup(layers=4)
    x = noise_like(source.source_latents.shape, 0)
    with block_swap(dit, 4) as swap, step_cache(dit, 1e9) as cache:
        per_forward = sum(b.nbytes for b in swap._blocks.values())
        sample_euler(lambda x, s, i: dit(x, torch.tensor([1000 * s]), cond.context,
                                         source_latents=source.source_latents, source_scale=s),
                     x, flow_sigmas(STEPS, 5.0), progress=False, step_cache=cache)
    assert STEPS - cache.skipped == 3 and swap.bytes_uploaded == 3 * per_forward > 0


def test_rvedit_routing_and_imvideoedit_hooks_are_cached(caches):
    from comfy_kiwi.methods import imvideoedit as ive
    from comfy_kiwi.methods.rvedit_streams import RVEDiTStreams, routed_conditioning
    dit, cond, source = kiwi_setup(layers=4)
    streams = RVEDiTStreams.for_dit(dit)
    routed = routed_conditioning(dit, streams, cond, source.source_latents, None)
    plain = sample_edit(dit, routed, source, settings())
    got = sample_edit(dit, routed, source, settings(step_cache=TH))
    assert caches[-1].skipped > 0 and rel_err(got, plain) < 0.3

    base = tiny_dit(seed=5)
    g = torch.Generator().manual_seed(1)
    src, ctx = torch.randn(1, 16, 2, 6, 8, generator=g), torch.randn(1, 7, 32, generator=g)
    with ive.applied(base, None) as adapter:
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        plain = ive.sample(base, src, ctx, steps=STEPS, progress=False)
        got = ive.sample(base, src, ctx, steps=STEPS, progress=False, step_cache=TH)
    assert caches[-1].skipped > 0 and rel_err(got, plain) < 0.3


def test_steps_aside_under_autograd():
    dit, cond, source = kiwi_setup()
    x, t = torch.randn(1, 16, 2, 4, 6), torch.tensor([500.0])
    kw = dict(source_latents=source.source_latents, source_scale=0.5)
    with step_cache(dit, 1e9) as cache:
        for i in range(3):
            cache.begin_step(i, 4)
            with torch.no_grad():
                dit(x, t, cond.context, **kw)
        cache.begin_step(2, 4)        # an interior step where the cache would skip without autograd
        with torch.enable_grad():
            out = dit(x.requires_grad_(), t, cond.context, **kw)
        assert cache.forwards == 3
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.1", True])
def test_bad_threshold_is_a_clear_error(bad):
    dit, cond, source = kiwi_setup()
    with pytest.raises(InputError, match="step cache threshold must be a number ≥ 0"):
        sample_edit(dit, cond, source, settings(step_cache=bad))


def test_edit_flag_reaches_the_sampler(tmp_path, capsys):
    from safetensors.torch import load_file

    from comfy_kiwi.cli import main
    from comfy_kiwi.testing.tiny_release import tiny_video_frames, write_tiny_kiwi_release
    from comfy_kiwi.video_io import write_video
    release = write_tiny_kiwi_release(tmp_path / "release")
    video = tmp_path / "source.mp4"
    write_video(video, tiny_video_frames(5, 72, 88), fps=8)
    base = ["edit", "--model", str(release), "--video", str(video), "--instruction", "make it red", "--steps", "6"]

    def latents(*extra):
        path = tmp_path / f"lat{len(list(tmp_path.glob('lat*')))}.safetensors"
        assert main([*base, "--out", str(tmp_path / "o.mp4"), "--save-latents", str(path), *extra]) == 0
        return load_file(str(path))["latents"]
    plain = latents()
    assert torch.equal(latents("--step-cache", "0"), plain)
    assert not torch.equal(latents("--step-cache", "1e9"), plain)      # steps 2..4 reused the residual
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "o.mp4"), "--step-cache", "-1"]) == 2
    assert "--step-cache" in capsys.readouterr().err


def test_plan_counts_the_cache_memory_and_the_forwards():
    from comfy_kiwi.memory.planner import format_plan, plan
    from comfy_kiwi.models.wan_config import preset
    off = plan("wan2.2-ti2v-5b", 1280, 704, 81, 48, cfg=True)
    on = plan("wan2.2-ti2v-5b", 1280, 704, 81, 48, cfg=True, steps=30, step_cache=0.05)
    dim = preset("wan2.2-ti2v-5b").dim
    assert on.stages[2].peak - off.stages[2].peak == 2 * 2 * on.tokens * dim * 2     # residual + proxy, batch 2
    assert "30 DiT forwards" in format_plan(on) and "3 to 30" in format_plan(on)
    assert "step cache off" in format_plan(off)
    with pytest.raises(InputError, match="step cache threshold"):
        plan("wan2.2-ti2v-5b", 1280, 704, 81, 48, step_cache=-1)
