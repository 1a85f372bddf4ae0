"""The edit pipeline on a tiny Kiwi release folder: stages, numerics of the sampling loop, CFG, errors."""

import shutil

import pytest
import torch

from comfy_kiwi import EditPipeline, EditSettings
from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.pipeline import EditConditioning, sample_edit
from comfy_kiwi.sampling import flow_sigmas, noise_like
from comfy_kiwi.testing.tiny_release import tiny_video_frames, write_tiny_kiwi_release

FAST = EditSettings(steps=3, progress=False)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_kiwi_release(tmp_path_factory.mktemp("kiwi") / "release")


@pytest.fixture(scope="module")
def pipe(release):
    return EditPipeline.from_pretrained(release, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def frames():
    return tiny_video_frames(5, 72, 88)


def test_defaults_are_the_release_settings():
    s = EditSettings()
    assert (s.steps, s.shift, s.cfg, s.seed, s.schedule, s.denoise) == (50, 5.0, 1.0, 0, "kiwi", 1.0)
    assert (s.max_pixels, s.num_frames, s.frame_mode) == (921600, 81, "trim")


def test_whole_edit_shapes_and_determinism(pipe, frames):
    a = pipe.edit(frames, "make the sky red", settings=FAST)
    b = pipe.edit(frames, "make the sky red", settings=FAST)
    c = pipe.edit(frames, "make the sky red", settings=FAST.replace(seed=1))
    assert a.frames.shape == (5, 64, 64, 3)           # 88×72 floored to ×32 → 64×64
    assert a.latents.shape == (1, 48, 2, 4, 4)          # (5-1)/4+1 frames, /16 spatial
    assert a.frames.min() >= 0 and a.frames.max() <= 1
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)


def test_sampling_loop_matches_hand_written_euler(pipe, frames):
    """t = 1000σ, source scaled by σ, CPU float32 noise from the seed, Euler to σ = 0."""
    prepared = pipe.prepare(frames, FAST)
    cond = pipe.encode_instruction("make the sky red", prepared)
    source = pipe.encode_source(prepared)
    got = sample_edit(pipe.dit, cond, source, FAST)

    sig = flow_sigmas(3, 5.0, "kiwi").tolist() + [0.0]
    x = noise_like(source.source_latents.shape, seed=0)
    with torch.no_grad():
        for i in range(3):
            v = pipe.dit(x, torch.tensor([1000 * sig[i]]), cond.context,
                         source_latents=source.source_latents, source_scale=sig[i])
            x = x + v * (sig[i + 1] - sig[i])
    assert torch.allclose(got, x, atol=1e-6)
    # the source branch really matters: without it the result differs
    no_src = pipe.dit(x, torch.tensor([500.0]), cond.context)
    with_src = pipe.dit(x, torch.tensor([500.0]), cond.context,
                        source_latents=source.source_latents, source_scale=0.5)
    assert not torch.allclose(no_src, with_src)


def test_cfg_batches_both_branches(pipe, frames):
    prepared = pipe.prepare(frames, FAST)
    cond = pipe.encode_instruction("make the sky red", prepared, with_negative=True)
    assert cond.negative is not None and cond.negative.shape == cond.context.shape
    assert not torch.allclose(cond.negative, cond.context)
    source = pipe.encode_source(prepared)
    s = FAST.replace(steps=1, cfg=3.0)
    got = sample_edit(pipe.dit, cond, source, s)

    x = noise_like(source.source_latents.shape, seed=0)
    t, src = torch.tensor([1000.0]), source.source_latents
    with torch.no_grad():
        vp = pipe.dit(x, t, cond.context, source_latents=src, source_scale=1.0)
        vn = pipe.dit(x, t, cond.negative, source_latents=src, source_scale=1.0)
    assert torch.allclose(got, x - (vn + 3.0 * (vp - vn)), atol=1e-5)

    with pytest.raises(InputError, match="negative"):
        sample_edit(pipe.dit, EditConditioning(cond.context), source, s)


def test_per_step_context_hook_matches_hand_written_euler(pipe, frames):
    """``EditConditioning.step_context``: the context of every step comes from the hook (at that step's t, per
    branch), CFG runs as two DiT calls whose contexts may differ in length, and no K/V cache is attached."""
    prepared = pipe.prepare(frames, FAST)
    source = pipe.encode_source(prepared)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 6, pipe.dit.config.dim, generator=g), torch.randn(1, 4, pipe.dit.config.dim, generator=g)
    calls = []

    def hook(t, negative):
        calls.append((float(t[0]), negative, pipe.dit.kv_cache))
        return base[negative] * (1 + t[:, None, None] / 1000)          # a context that changes with t

    s = FAST.replace(cfg=2.5)
    got = sample_edit(pipe.dit, EditConditioning(base[0], base[1], step_context=hook), source, s)
    assert [neg for _, neg, _ in calls] == [False, True] * 3 and all(kv is None for *_, kv in calls)

    sig = flow_sigmas(3, 5.0, "kiwi").tolist() + [0.0]
    x, src = noise_like(source.source_latents.shape, seed=0), source.source_latents
    with torch.no_grad():
        for i in range(3):
            t = torch.tensor([1000 * sig[i]])
            vp, vn = (pipe.dit(x, t, hook(t, neg), source_latents=src, source_scale=sig[i]) for neg in (False, True))
            x = x + (vn + 2.5 * (vp - vn)) * (sig[i + 1] - sig[i])
    assert torch.allclose(got, x, atol=1e-5)


def test_reference_mode(pipe, frames, release):
    ref = tiny_video_frames(1, 40, 50, seed=3)
    prepared = pipe.prepare(frames, FAST)
    plain = pipe.encode_instruction("add the hat", prepared)
    with_ref = pipe.encode_instruction("add the hat", prepared, reference=ref)
    assert with_ref.context.shape[1] > plain.context.shape[1]   # reference tokens + reference queries
    source = pipe.encode_source(prepared, reference=ref)
    assert source.reference_latents.shape == (1, 48, 1, 4, 4)  # padded to the source size first
    two = pipe.encode_source(prepared, reference=[ref, ref])
    assert two.reference_latents.shape[2] == 2
    out = pipe.edit(frames, "add the hat", reference=ref, settings=FAST)
    assert out.frames.shape == (5, 64, 64, 3)
    assert pipe.dit.reference_first is False


def test_partial_denoise_starts_from_source(pipe, frames):
    prepared = pipe.prepare(frames, FAST)
    cond = pipe.encode_instruction("make the sky red", prepared)
    source = pipe.encode_source(prepared)
    near = sample_edit(pipe.dit, cond, source, FAST.replace(denoise=0.05))
    full = sample_edit(pipe.dit, cond, source, FAST)
    d_near = (near - source.source_latents).abs().mean()
    d_full = (full - source.source_latents).abs().mean()
    assert d_near < d_full


def test_release_folder_missing_a_part_is_named(release, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(release, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointError, match="vae"):
        EditPipeline.from_pretrained(broken, dtype=torch.float32, device="cpu")
    with pytest.raises(CheckpointError, match="not a folder"):
        EditPipeline.from_pretrained(tmp_path / "nothing", device="cpu")


def test_bad_inputs(pipe, frames):
    with pytest.raises(InputError, match="[Ii]nstruction"):
        pipe.edit(frames, "   ", settings=FAST)
    with pytest.raises(InputError):
        pipe.edit(frames[:0], "make it red", settings=FAST)
    with pytest.raises(InputError, match="32"):
        pipe.edit(tiny_video_frames(5, 20, 20), "make it red", settings=FAST)


def test_each_stage_puts_only_its_own_model_on_the_device(pipe, frames, monkeypatch):
    """What ``plan`` assumes on a GPU: VAE encode, sampling and VAE decode each move their own model to the compute
    device for the stage (``placement.on_device``; a no-op where the model already lives there, as on this CPU) and
    nothing else; with block swap the DiT is left to the swapper. Mutation tried: sampling without the DiT's
    stage → the order below loses "dit" and the test fails."""
    from contextlib import contextmanager

    import comfy_kiwi.pipeline as pipeline_module
    staged = []

    @contextmanager
    def record(module, device=None):
        name = {id(pipe.dit): "dit", id(pipe.vae): "vae", id(pipe.mllm): "mllm"}[id(module)]
        assert not staged or staged[-1][1] == "done", f"{name} staged inside {staged[-1][0]}'s stage"
        staged.append((name, "open"))
        yield device
        staged[-1] = (name, "done")

    monkeypatch.setattr(pipeline_module, "on_device", record)
    pipe.edit(frames, "make it red", settings=EditSettings(steps=2))
    assert [n for n, _ in staged] == ["vae", "dit", "vae"]
    staged.clear()
    pipe.edit(frames, "make it red", settings=EditSettings(steps=2, block_swap=1))
    assert [n for n, _ in staged] == ["vae", "vae"]
