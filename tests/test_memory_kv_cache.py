"""Cross-attention K/V caching (exact, invalidated on change) and batched classifier-free guidance."""

import pytest
import torch

from comfy_kiwi.memory import KVCache, kv_cache
from comfy_kiwi.pipeline import EditConditioning, EditSettings, SourceConditioning, sample_edit
from comfy_kiwi.sampling import flow_sigmas, noise_like, sample_euler
from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_dit


@pytest.fixture(scope="module")
def kiwi_dit():
    """Kiwi path: DiT-wide context straight into cross-attention, source embedder attached."""
    return tiny_dit("2.2", seed=5, embedders=True)


def _kiwi_inputs(dit, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = dit.config
    src = torch.randn(batch, c.in_dim, 2, 4, 6, generator=g)
    return src, torch.randn(batch, 9, c.dim, generator=g), torch.randn(batch, 9, c.dim, generator=g)


def test_cached_sampling_is_bit_exact_and_computes_kv_once(kiwi_dit):
    src, ctx, _ = _kiwi_inputs(kiwi_dit)
    steps = 4
    sigmas = flow_sigmas(steps, 5.0)

    def velocity(x, sigma, i):
        return kiwi_dit(x, torch.tensor([1000 * sigma]), ctx, source_latents=src, source_scale=sigma)

    plain = sample_euler(velocity, noise_like(src.shape, 0), sigmas, progress=False)
    with kv_cache(kiwi_dit) as cache:
        cached = sample_euler(velocity, noise_like(src.shape, 0), sigmas, progress=False)
    assert torch.equal(plain, cached)
    layers = kiwi_dit.config.num_layers
    assert cache.misses == layers                      # once per block per run ...
    assert cache.hits == layers * (steps - 1)          # ... reused by every later step
    assert kiwi_dit.blocks[0].cross_attn.kv_cache is None and kiwi_dit.kv_cache is None   # detached after


def test_text_path_caches_the_text_embedding_too():
    dit = tiny_dit("2.1", seed=2)
    x = random_inputs(dit)
    with torch.no_grad():
        ref = dit(**x)
        with kv_cache(dit) as cache:
            a, b = dit(**x), dit(**x)
    assert torch.equal(a, ref) and torch.equal(b, ref)
    assert cache.misses == dit.config.num_layers + 1 and cache.hits == dit.config.num_layers + 1


def test_cache_invalidates_on_new_or_modified_context_and_weights(kiwi_dit):
    src, ctx, other = _kiwi_inputs(kiwi_dit)
    x, t = torch.randn_like(src), torch.tensor([700.0])
    layers = kiwi_dit.config.num_layers

    def run(c):
        return kiwi_dit(x, t, c, source_latents=src, source_scale=0.7)

    with torch.no_grad():
        ref_ctx, ref_other, ref_double = run(ctx), run(other), run(ctx * 2.0)
        with kv_cache(kiwi_dit) as cache:
            assert torch.equal(run(ctx), ref_ctx)
            assert torch.equal(run(other), ref_other)        # another context: recomputed
            changed = ctx.clone()
            assert torch.equal(run(changed), ref_ctx)       # equal values, new tensor: recomputed, same result
            changed.mul_(2.0)                               # edited in place: version bump → miss
            misses = cache.misses
            assert torch.equal(run(changed), ref_double)
            assert cache.misses == misses + layers
            with kv_cache(kiwi_dit) as inner:               # a nested run gets its own cache ...
                assert kiwi_dit.blocks[0].cross_attn.kv_cache is inner
            assert kiwi_dit.blocks[0].cross_attn.kv_cache is cache   # ... and ours is restored after
            block = kiwi_dit.blocks[0].cross_attn
            saved = block.k.weight.clone()
            block.k.weight.mul_(1.5)                        # weights edited in place (LoRA merge): miss
            misses = cache.misses
            edited = run(changed)
            assert cache.misses == misses + 1 and not torch.equal(edited, ref_double)
            block.k.weight.copy_(saved)
            assert torch.equal(run(changed), ref_double)


def test_cache_steps_aside_when_autograd_records():
    dit = tiny_dit("2.1", seed=4)
    x = random_inputs(dit)
    with kv_cache(dit) as cache:
        dit(**x).sum().backward()
        dit(**x).sum().backward()                     # a reused graph would raise here
    assert cache.hits == cache.misses == 0


def test_cache_object_accounting():
    cache = KVCache()
    lin = torch.nn.Linear(3, 3)
    c = torch.randn(2, 3)
    with torch.no_grad():
        a = cache.lookup(lin, c, lin)
        b = cache.lookup(lin, c, lin)
    assert a is b and cache.nbytes() == a.numel() * 4
    cache.clear()
    assert cache.nbytes() == 0


def test_batched_cfg_equals_two_separate_forwards(kiwi_dit):
    """sample_edit runs [negative; positive] in one batch; that equals two batch-1 forwards combined."""
    src, pos, neg = _kiwi_inputs(kiwi_dit)
    x, t = noise_like(src.shape, 3), torch.tensor([640.0, 640.0])
    with torch.no_grad():
        both = kiwi_dit(torch.cat([x, x]), t, torch.cat([neg, pos]), source_latents=torch.cat([src, src]),
                        source_scale=0.64)
        vn = kiwi_dit(x, t[:1], neg, source_latents=src, source_scale=0.64)
        vp = kiwi_dit(x, t[:1], pos, source_latents=src, source_scale=0.64)
    b_neg, b_pos = both.chunk(2)
    print(f"[cfg] batched vs separate max abs diff: neg {(b_neg - vn).abs().max():.2e}, "
          f"pos {(b_pos - vp).abs().max():.2e}")
    # not bit-exact: GEMMs over 2·L rows block differently from L rows (fp32 rounding, ~1 ulp of |v|≈2)
    assert torch.allclose(b_neg, vn, atol=1e-5, rtol=0) and torch.allclose(b_pos, vp, atol=1e-5, rtol=0)

    # whole sampler, 3 steps, cfg 2.5, K/V cached: the same as a hand-written unbatched loop
    settings = EditSettings(steps=3, cfg=2.5, seed=3, progress=False)
    with kv_cache(kiwi_dit):
        got = sample_edit(kiwi_dit, EditConditioning(pos, neg), SourceConditioning(src), settings)
    sig = [float(s) for s in flow_sigmas(3, 5.0)] + [0.0]
    y = noise_like(src.shape, 3)
    with torch.no_grad():
        for i in range(3):
            tt = torch.tensor([1000 * sig[i]])
            vn = kiwi_dit(y, tt, neg, source_latents=src, source_scale=sig[i])
            vp = kiwi_dit(y, tt, pos, source_latents=src, source_scale=sig[i])
            y = y + (vn + 2.5 * (vp - vn)) * (sig[i + 1] - sig[i])
    assert torch.allclose(got, y, atol=1e-5, rtol=0)


def test_cache_works_under_inference_mode():
    """ComfyUI executes nodes under torch.inference_mode(): tensors there have no version counter."""
    from comfy_kiwi.memory import kv_cache
    from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_dit
    with torch.inference_mode():
        dit = tiny_dit("2.1", seed=0)
        inp = random_inputs(dit, seed=1)
        x, t, ctx = inp["latents"], inp["timestep"], inp["context"]
        plain = dit(x, t, ctx)
        with kv_cache(dit) as cache:
            a, b = dit(x, t, ctx), dit(x, t, ctx)
        assert torch.equal(plain, a) and torch.equal(a, b) and cache.hits > 0
