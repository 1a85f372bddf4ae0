"""Kiwi-Edit conditioning of WanDiT: σ-scaled source latents, reference tokens and their RoPE frames,
the context paths, and the model's input checks."""

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.models.conditioning import ConditionEmbedder
from comfy_kiwi.models.wan_dit import WanDiT
from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_config, tiny_dit


@pytest.fixture(scope="module")
def model():
    return tiny_dit("2.1", seed=4, embedders=True)


@pytest.fixture(scope="module")
def inputs(model):
    inp = random_inputs(model, frames=3, height=6, width=10, batch=2, context_len=5, seed=2)
    g = torch.Generator().manual_seed(9)
    inp["source_latents"] = torch.randn(inp["latents"].shape, generator=g)
    inp["reference_latents"] = torch.randn(2, model.config.in_dim, 2, 6, 10, generator=g)   # two references
    return inp


def run(model, inp, **kw):
    with torch.no_grad():
        return model(inp["latents"], inp["timestep"], inp["context"], **kw)


# --- source latents ---------------------------------------------------------------------------------

def test_source_scale_zero_equals_plain_model(model, inputs):
    plain = run(model, inputs)
    assert torch.equal(run(model, inputs, source_latents=inputs["source_latents"], source_scale=0.0), plain)
    changed = run(model, inputs, source_latents=inputs["source_latents"], source_scale=0.5)
    assert (changed - plain).abs().max() > 1e-3


def test_source_embedding_is_linear_in_scale(model, inputs):
    lat, src = inputs["latents"], inputs["source_latents"]

    def embed(s):
        with torch.no_grad():
            return model.embed_inputs(lat, src, torch.full((2, 1, 1), s))
    e0, e1, e3 = embed(0.0), embed(0.25), embed(0.75)
    assert torch.allclose(e3 - e0, 3 * (e1 - e0), atol=1e-5)
    tokens = model.source_embedder(src)                                   # [B, f·h·w, dim]
    assert torch.allclose(e1 - e0, 0.25 * tokens, atol=1e-6)


def test_source_scale_defaults_to_sigma_from_timestep(model, inputs):
    sigma = inputs["timestep"] / 1000
    explicit = run(model, inputs, source_latents=inputs["source_latents"], source_scale=sigma)
    assert torch.allclose(run(model, inputs, source_latents=inputs["source_latents"]), explicit, atol=1e-6)


def test_per_sample_source_scale(model, inputs):
    both = run(model, inputs, source_latents=inputs["source_latents"], source_scale=torch.tensor([0.2, 0.9]))
    for i, s in enumerate((0.2, 0.9)):
        one = {k: v[i:i + 1] for k, v in inputs.items()}
        alone = run(model, one, source_latents=one["source_latents"], source_scale=s)
        assert torch.allclose(both[i:i + 1], alone, atol=1e-5)


def test_fresh_embedders_are_zero_and_change_nothing(inputs):
    m = tiny_dit("2.1", seed=4)
    plain = run(m, inputs)
    m.attach_condition_embedders()
    assert all(torch.count_nonzero(p) == 0 for p in m.source_embedder.parameters())
    out = run(m, inputs, source_latents=inputs["source_latents"], source_scale=0.7)
    assert torch.equal(out, plain)
    assert isinstance(m.ref_embedder, ConditionEmbedder)
    assert set(m.source_embedder.state_dict()) == {"patch_embedding.weight", "patch_embedding.bias"}


# --- references ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def same_embedder_model():
    """References embedded exactly like video frames: then a reference is just one more frame."""
    m = tiny_dit("2.1", seed=6, embedders=True)
    m.ref_embedder.patch_embedding.load_state_dict(m.patch_embedding.state_dict())
    return m


@pytest.mark.parametrize("n_refs", [1, 2])
def test_reference_last_takes_frame_indices_after_the_video(same_embedder_model, inputs, n_refs):
    m, lat = same_embedder_model, inputs["latents"]
    ref = inputs["reference_latents"][:, :, :n_refs]
    got = run(m, inputs, reference_latents=ref, reference_first=False)
    with torch.no_grad():   # the same tokens as a longer video: [video frames; reference frames]
        longer = m(torch.cat([lat, ref], dim=2), inputs["timestep"], inputs["context"])
    assert got.shape == lat.shape
    assert torch.allclose(got, longer[:, :, :lat.shape[2]], atol=1e-5)


@pytest.mark.parametrize("n_refs", [1, 2])
def test_reference_first_takes_frame_indices_before_the_video(same_embedder_model, inputs, n_refs):
    m, lat = same_embedder_model, inputs["latents"]
    ref = inputs["reference_latents"][:, :, :n_refs]
    got = run(m, inputs, reference_latents=ref, reference_first=True)
    with torch.no_grad():   # [reference frames; video frames]: the video takes indices Fr…
        longer = m(torch.cat([ref, lat], dim=2), inputs["timestep"], inputs["context"])
    assert got.shape == lat.shape
    assert torch.allclose(got, longer[:, :, n_refs:], atol=1e-5)
    last = run(m, inputs, reference_latents=ref, reference_first=False)
    assert (got - last).abs().max() > 1e-3


def test_reference_first_default_comes_from_the_model(model, inputs):
    ref = inputs["reference_latents"]
    first, last = (run(model, inputs, reference_latents=ref, reference_first=v) for v in (True, False))
    try:
        model.reference_first = True
        assert torch.equal(run(model, inputs, reference_latents=ref), first)
    finally:
        model.reference_first = False
    assert torch.equal(run(model, inputs, reference_latents=ref), last)


def test_reference_changes_output_and_batch_one_broadcasts(model, inputs):
    plain = run(model, inputs)
    ref = inputs["reference_latents"]
    with_ref = run(model, inputs, reference_latents=ref)
    assert with_ref.shape == plain.shape and (with_ref - plain).abs().max() > 1e-3
    one = run(model, inputs, reference_latents=ref[:1])
    two = run(model, inputs, reference_latents=ref[:1].expand(2, -1, -1, -1, -1))
    assert torch.allclose(one, two, atol=1e-6)


def test_per_token_timesteps_give_references_t0(same_embedder_model, inputs):
    m, lat = same_embedder_model, inputs["latents"]
    ref = inputs["reference_latents"][:, :, :1]
    n = lat.shape[2] * 3 * 5
    tt = torch.rand(2, n) * 1000
    with torch.no_grad():
        got = m(lat, tt, inputs["context"], reference_latents=ref)
        longer = m(torch.cat([lat, ref], 2), torch.cat([tt, torch.zeros(2, 15)], 1), inputs["context"])
    assert torch.allclose(got, longer[:, :, :lat.shape[2]], atol=1e-5)


def test_source_and_reference_together(model, inputs):
    out = run(model, inputs, source_latents=inputs["source_latents"], source_scale=0.3,
              reference_latents=inputs["reference_latents"], reference_first=True)
    assert out.shape == inputs["latents"].shape and torch.isfinite(out).all()


# --- context paths -----------------------------------------------------------------------------------

def test_context_paths(model, inputs):
    direct = torch.randn(2, 4, model.config.dim)
    try:
        model.context_embedding = "none"
        a = run(model, {**inputs, "context": direct})
        model.context_embedding = "auto"
        assert torch.equal(run(model, {**inputs, "context": direct}), a)         # width dim → direct
        text = run(model, inputs)                                                # width text_dim → text path
        model.context_embedding = "none"                 # text path = direct path after text_embedding
        with torch.no_grad():
            projected = model.text_embedding(inputs["context"])
        assert torch.allclose(run(model, {**inputs, "context": projected}), text, atol=1e-6)
        assert (text - a).abs().max() > 1e-3
    finally:
        model.context_embedding = "auto"


def test_context_of_any_length_and_batch_one_broadcast(model, inputs):
    ctx = inputs["context"]
    a = run(model, {**inputs, "context": ctx[:1].expand(2, -1, -1)})
    b = run(model, {**inputs, "context": ctx[:1]})
    assert torch.allclose(a, b, atol=1e-6)
    long = run(model, {**inputs, "context": torch.randn(2, 300, model.config.text_dim)})
    assert long.shape == inputs["latents"].shape


# --- input errors -------------------------------------------------------------------------------------

def test_context_width_mismatch(model, inputs):
    with pytest.raises(InputError, match=r"context width 50 does not fit.*width 32.*width 64"):
        run(model, {**inputs, "context": torch.randn(2, 4, 50)})
    model.context_embedding = "none"
    try:
        with pytest.raises(InputError, match="context width 32 .*'none'"):
            run(model, inputs)
    finally:
        model.context_embedding = "auto"


def test_ambiguous_context_width_needs_a_mode():
    m = WanDiT(tiny_config("2.1", text_dim=64)).eval()
    lat = torch.randn(1, 16, 1, 4, 4)
    with pytest.raises(InputError, match="fits both.*context_embedding"):
        m(lat, 10.0, torch.randn(1, 3, 64))
    m.context_embedding = "text"
    assert m(lat, 10.0, torch.randn(1, 3, 64)).shape == lat.shape
    with pytest.raises(InputError, match="context_embedding must be one of"):
        m.context_embedding = "umt5"


@pytest.mark.parametrize("shape,axis", [((1, 16, 2, 7, 10), "height 7"), ((1, 16, 2, 6, 5), "width 5"),
                                        ((1, 16, 0, 6, 10), "frames 0")])
def test_latents_not_divisible_by_patch(model, shape, axis):
    with pytest.raises(InputError, match=f"latent {axis} is not a positive multiple of the patch size"):
        model(torch.randn(shape), 1.0, torch.randn(1, 3, 32))


def test_latent_channel_and_rank_errors(model):
    with pytest.raises(InputError, match="48 channels but this DiT takes 16"):
        model(torch.randn(1, 48, 1, 4, 4), 1.0, torch.randn(1, 3, 32))
    with pytest.raises(InputError, match=r"latents must be a tensor \[B, C, F, H, W\]"):
        model(torch.randn(16, 4, 4), 1.0, torch.randn(1, 3, 32))


def test_reference_and_source_errors(model, inputs):
    with pytest.raises(InputError, match="same channels and latent size as the video"):
        run(model, inputs, reference_latents=torch.randn(2, 16, 1, 8, 10))
    with pytest.raises(InputError, match="must have the latents' shape"):
        run(model, inputs, source_latents=torch.randn(2, 16, 2, 6, 10))
    plain = tiny_dit("2.1")
    with pytest.raises(InputError, match="no source embedder"):
        run(plain, inputs, source_latents=inputs["source_latents"])
    with pytest.raises(InputError, match="no reference embedder"):
        run(plain, inputs, reference_latents=inputs["reference_latents"])


def test_timestep_shape_errors(model, inputs):
    with pytest.raises(InputError, match=r"per-token \[B, f·h·w\] = \[2, 45\]"):
        model(inputs["latents"], torch.zeros(2, 44), inputs["context"])
    with pytest.raises(InputError, match="source_scale .* must be given"):
        model(inputs["latents"], torch.zeros(2, 45), inputs["context"], source_latents=inputs["source_latents"])
    with pytest.raises(InputError, match="timestep of shape"):
        model(inputs["latents"], torch.zeros(3), inputs["context"])


def test_bf16_weights_run_close_to_fp32(inputs):
    m = tiny_dit("2.1", seed=4, embedders=True)
    ref = run(m, inputs, source_latents=inputs["source_latents"], reference_latents=inputs["reference_latents"])
    m16 = m.to(torch.bfloat16)
    out = run(m16, inputs, source_latents=inputs["source_latents"], reference_latents=inputs["reference_latents"])
    assert out.dtype == torch.float32                      # velocity in the latents' dtype
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
