"""WanDiT (original layout) against diffusers' WanTransformer3DModel on tiny random models.

The diffusers twin holds the same (fully randomised) weights through the key map. diffusers
computes the timestep sinusoid in fp32 while Wan and Kiwi-Edit compute it in fp64 (our default);
with ``sinusoid_dtype = float32`` the two implementations must agree to 1e-5 (max abs, fp32).
"""

import math

import pytest
import torch
from torch import nn

from comfy_kiwi.models.wan_dit import rope_tables, sinusoid
from comfy_kiwi.testing.tiny_dit import diffusers_twin, tiny_dit

TOL = 1e-5
KINDS = ["2.1", "2.2"]
# (batch, latent frames, latent height, latent width, context length): odd token grids (3×7, 5×3),
# odd frame counts, batch 2, short and long contexts.
CASES = [(1, 2, 6, 10, 7), (2, 3, 6, 14, 13), (2, 1, 10, 6, 1), (1, 5, 4, 4, 40)]


@pytest.fixture(scope="module", params=KINDS)
def pair(request):
    model = tiny_dit(request.param, seed=11)
    return request.param, model, diffusers_twin(model)


def _inputs(model, case, seed=0):
    b, f, h, w, lc = case
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return (torch.randn(b, c.in_dim, f, h, w, generator=g), torch.rand(b, generator=g) * 1000,
            torch.randn(b, lc, c.text_dim, generator=g))


def _compare(model, ref, latents, t, ctx, label):
    with torch.no_grad():
        ours = model(latents, t, ctx)
        theirs = ref(latents, t, ctx, return_dict=False)[0]
    assert ours.shape == theirs.shape == (latents.shape[0], model.config.out_dim, *latents.shape[2:])
    err = (ours - theirs).abs().max().item()
    print(f"[parity] {label}: max abs err {err:.3e} (|out| max {theirs.abs().max().item():.2f})")
    return err


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_f{}_h{}_w{}_ctx{}".format(*c))
def test_scalar_timesteps_match_diffusers(pair, case):
    kind, model, ref = pair
    model.sinusoid_dtype = torch.float32
    latents, t, ctx = _inputs(model, case)
    assert _compare(model, ref, latents, t, ctx, f"{kind} scalar t {case}") <= TOL


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: "b{}_f{}_h{}_w{}_ctx{}".format(*c))
@pytest.mark.parametrize("pattern", ["random", "ti2v"])
def test_per_token_timesteps_match_diffusers(pair, case, pattern):
    """diffusers' 2-D timestep path (Wan2.2 TI2V, ``expand_timesteps``): one timestep per token."""
    kind, model, ref = pair
    model.sinusoid_dtype = torch.float32
    latents, t, ctx = _inputs(model, case, seed=1)
    b, f, h, w, _ = case
    n = f * (h // 2) * (w // 2)
    if pattern == "random":
        tt = torch.rand(b, n, generator=torch.Generator().manual_seed(5)) * 1000
    else:  # first latent frame clean (t = 0), the rest at the step's t
        mask = torch.ones(f, h // 2, w // 2)
        mask[0] = 0
        tt = (mask.flatten()[None] * t[:, None])
    err = _compare(model, ref, latents, tt, ctx, f"{kind} per-token ({pattern}) {case}")
    assert err <= TOL


def test_python_float_timestep(pair):
    kind, model, ref = pair
    model.sinusoid_dtype = torch.float32
    latents, _, ctx = _inputs(model, CASES[1])
    with torch.no_grad():
        ours = model(latents, 637.5, ctx)
        theirs = ref(latents, torch.full((2,), 637.5), ctx, return_dict=False)[0]
    assert (ours - theirs).abs().max() <= TOL


def test_direct_context_path_matches_diffusers_without_text_embedder(pair):
    """context_embedding="none" (Kiwi MLLM path) = diffusers with the text projection removed."""
    kind, model, ref = pair
    model.sinusoid_dtype = torch.float32
    latents, t, _ = _inputs(model, CASES[0])
    ctx = torch.randn(1, 9, model.config.dim)
    saved = ref.condition_embedder.text_embedder
    ref.condition_embedder.text_embedder = nn.Identity()
    try:
        model.context_embedding = "none"
        err = _compare(model, ref, latents, t, ctx, f"{kind} direct context")
    finally:
        ref.condition_embedder.text_embedder = saved
        model.context_embedding = "auto"
    assert err <= TOL


def test_default_fp64_sinusoid_differs_only_by_rounding(pair):
    kind, model, ref = pair
    model.sinusoid_dtype = torch.float64
    try:
        latents, t, ctx = _inputs(model, CASES[1])
        err = _compare(model, ref, latents, t, ctx, f"{kind} default fp64 sinusoid")
    finally:
        model.sinusoid_dtype = torch.float32
    assert err <= 1e-4


def test_sinusoid_formula():
    t = torch.tensor([0.0, 1.0, 999.0, 437.25], dtype=torch.float64)
    dim = 8
    got = sinusoid(t, dim)
    for i, tv in enumerate(t.tolist()):
        for j in range(dim // 2):
            freq = 10000.0 ** (-j / (dim // 2))
            assert got[i, j].item() == pytest.approx(math.cos(tv * freq), abs=1e-6)          # cos half first
            assert got[i, j + dim // 2].item() == pytest.approx(math.sin(tv * freq), abs=1e-6)


def test_rope_tables_match_diffusers_and_split():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    for kind, split in (("2.1", (12, 10, 10)), ("2.2", (44, 42, 42))):
        cfg = tiny_dit(kind).config
        assert cfg.rope_split == split
        rope = WanRotaryPosEmbed(cfg.head_dim, cfg.patch_size, 1024)
        cos_ref, sin_ref = rope(torch.zeros(1, cfg.in_dim, 3, 10, 6))
        cos, sin = rope_tables(cfg, 3, 5, 3)
        assert torch.equal(cos.repeat_interleave(2, -1), cos_ref)
        assert torch.equal(sin.repeat_interleave(2, -1), sin_ref)


def test_unpatchify_channel_order():
    model = tiny_dit("2.1")
    c, (pt, ph, pw) = model.config.out_dim, model.config.patch_size
    f, h, w = 2, 3, 4
    tokens = torch.arange(f * h * w * pt * ph * pw * c, dtype=torch.float32).reshape(1, f * h * w, -1)
    video = model.unpatchify(tokens, (f, h, w))
    assert video.shape == (1, c, f * pt, h * ph, w * pw)
    for (fi, hi, wi, p, q, r, ch) in [(0, 0, 0, 0, 0, 0, 0), (1, 2, 3, 0, 1, 1, 15), (0, 1, 2, 0, 1, 0, 7)]:
        token = (fi * h + hi) * w + wi
        assert video[0, ch, fi * pt + p, hi * ph + q, wi * pw + r] == tokens[0, token, ((p * ph + q) * pw + r) * c + ch]


def test_parity_detects_a_wiring_change(pair):
    """The comparison is sensitive: perturbing one norm gain breaks parity."""
    kind, model, ref = pair
    model.sinusoid_dtype = torch.float32
    latents, t, ctx = _inputs(model, CASES[0])
    w = model.blocks[1].cross_attn.norm_k.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w.mul_(1.01)
    try:
        err = _compare(model, ref, latents, t, ctx, f"{kind} perturbed")
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert err > 1e-4
