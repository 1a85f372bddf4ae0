"""VIVA parts: token refiner, channel-concat source embedder, masked flow-matching loss."""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.methods.viva_loss import mask_to_latent_grid, masked_flow_matching_loss
from comfy_kiwi.methods.viva_refiner import TokenRefiner
from comfy_kiwi.methods.viva_source import ChannelConcatSourceEmbedder
from comfy_kiwi.testing.tiny_dit import tiny_dit


# --- token refiner -------------------------------------------------------------------------------

def test_refiner_starts_as_its_input_projection():
    torch.manual_seed(0)
    ref = TokenRefiner(in_dim=24, dim=32, num_heads=2, depth=2)
    hidden, t = torch.randn(2, 5, 24), torch.tensor([10.0, 900.0])
    out = ref.refine(hidden, t)
    assert out.shape == (2, 5, 32)
    assert torch.allclose(out, ref.input_proj(hidden), atol=1e-6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.allclose(ref(hidden, t, mask), ref.input_proj(hidden), atol=1e-6)


def test_refiner_trains_and_uses_timestep_and_mask():
    torch.manual_seed(0)
    ref = TokenRefiner(in_dim=16, dim=16, num_heads=2, depth=2)
    hidden = torch.randn(4, 6, 16)
    t = torch.tensor([0.0, 250.0, 500.0, 999.0])
    target = torch.randn(4, 6, 16)
    opt = torch.optim.Adam(ref.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = (ref(hidden, t) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    gates = [b.ada[1].weight.abs().sum().item() for b in ref.blocks]
    assert all(g > 0 for g in gates)                       # the zero-initialised adaLN moved
    with torch.no_grad():
        assert not torch.allclose(ref(hidden, t), ref(hidden, t.flip(0)))     # depends on t
        # padded keys are ignored: changing padded tokens leaves real tokens' outputs unchanged
        mask = torch.ones(4, 6, dtype=torch.bool)
        mask[:, 4:] = False
        other = hidden.clone()
        other[:, 4:] = torch.randn(4, 2, 16)
        assert torch.allclose(ref(hidden, t, mask)[:, :4], ref(other, t, mask)[:, :4], atol=1e-5)


def test_refiner_rejects_bad_inputs():
    ref = TokenRefiner(in_dim=8, dim=16, num_heads=2, depth=1)
    with pytest.raises(InputError, match="VLM hidden states"):
        ref(torch.randn(1, 3, 9), 1.0)
    with pytest.raises(InputError, match="mask"):
        ref(torch.randn(1, 3, 8), 1.0, torch.ones(1, 4))
    with pytest.raises(InputError, match="no tokens"):
        ref(torch.randn(1, 3, 8), 1.0, torch.zeros(1, 3))


# --- channel-concat source embedder --------------------------------------------------------------

def test_channel_concat_equals_base_patch_embedding_at_init_and_learns_source():
    dit = tiny_dit(seed=3)
    emb = ChannelConcatSourceEmbedder.from_dit(dit)
    g = torch.Generator().manual_seed(0)
    noisy, source = torch.randn(2, 16, 2, 6, 8, generator=g), torch.randn(2, 16, 2, 6, 8, generator=g)
    tokens = dit.patch_embedding(noisy).flatten(2).transpose(1, 2)
    out = emb(tokens, source)
    assert out.shape == tokens.shape == (2, 2 * 3 * 4, 64)
    assert torch.allclose(out, tokens, atol=1e-6)
    out.pow(2).sum().backward()
    assert emb.projector.weight.grad[:, 64:].abs().sum() > 0        # the source half gets a gradient
    # a fresh (randomly initialised) embedder also equals the noisy tokens
    fresh = ChannelConcatSourceEmbedder(16, 64)
    assert torch.allclose(fresh(tokens, source), tokens, atol=1e-6)
    with pytest.raises(InputError, match="tokens"):
        emb(tokens, source[:, :, :1])


# --- masked loss -------------------------------------------------------------------------------

def test_masked_loss_zero_mask_is_mse_and_weights_masked_region():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 4, 6, generator=g), torch.randn(2, 4, 3, 4, 6, generator=g)
    mse = (pred - target).pow(2).mean()
    assert torch.allclose(masked_flow_matching_loss(pred, target), mse)
    assert torch.allclose(masked_flow_matching_loss(pred, target, torch.zeros(2, 1, 3, 4, 6), w_m=3.0), mse)
    mask = torch.zeros(2, 1, 3, 4, 6)
    mask[:, :, :, :2] = 1
    err = (pred - target).pow(2)
    expected = (err * (1 + 3.0 * mask)).mean()
    assert torch.allclose(masked_flow_matching_loss(pred, target, mask, w_m=3.0), expected)
    assert torch.allclose(masked_flow_matching_loss(pred, target, torch.ones(2, 3, 4, 6), w_m=3.0), 4 * mse)


def test_pixel_mask_is_pooled_to_the_latent_grid():
    pix = torch.zeros(1, 1, 9, 32, 48)           # 4k+1 = 9 frames → 3 latent frames; ×8 spatial → 4×6
    pix[0, 0, 5, 3, 9] = 1                       # one pixel in latent frame 2 (frames 5..8), cell (0, 1)
    m = mask_to_latent_grid(pix, (1, 16, 3, 4, 6))
    assert m.shape == (1, 1, 3, 4, 6) and m.sum() == 1 and m[0, 0, 2, 0, 1] == 1
    avg = mask_to_latent_grid(pix, (1, 16, 3, 4, 6), pool="avg")
    assert torch.isclose(avg.sum(), torch.tensor(1 / (4 * 64)))
    with pytest.raises(InputError, match="frames"):
        mask_to_latent_grid(torch.zeros(1, 1, 7, 4, 6), (1, 16, 3, 4, 6))
    with pytest.raises(InputError, match="integer"):
        mask_to_latent_grid(torch.zeros(1, 1, 3, 5, 6), (1, 16, 3, 4, 6))


# --- wiring into the DiT, the loader and the sampler --------------------------------------------------

def test_concat_source_mode_is_opt_in_and_round_trips_through_the_loader(tmp_path):
    from comfy_kiwi.loading.dit_loader import describe_dit, load_dit
    from comfy_kiwi.testing import tiny_dit as td
    model = tiny_dit("2.1", seed=1)
    assert model.source_mode == "add_sigma" and not any(k.startswith("source_mixer.") for k in model.state_dict())
    inp = td.random_inputs(model)
    src = torch.randn_like(inp["latents"])
    base = model(**inp)
    model.attach_source_strategy("concat")
    assert torch.equal(model(**inp, source_latents=src), base)            # P = [I | 0] at start
    with torch.no_grad():
        model.source_mixer.projector.weight[:, model.config.dim:].normal_(0, 0.05)
    moved = model(**inp, source_latents=src)
    assert not torch.allclose(moved, base)
    path = td.write_original_file(model, tmp_path / "viva_dit.safetensors", state=dict(model.state_dict()))
    loaded = load_dit(path)
    assert loaded.source_mode == "concat" and describe_dit(path)["has_concat_source"]
    assert torch.equal(loaded(**inp, source_latents=src), moved)
    plain = load_dit(td.write_original_file(tiny_dit("2.1", seed=1), tmp_path / "base.safetensors"))
    assert plain.source_mixer is None and plain.source_mode == "add_sigma"
    with pytest.raises(InputError, match="source_mode"):
        plain.source_mode = "sideways"


def test_sampler_refines_the_context_at_every_step_without_the_kv_cache():
    from comfy_kiwi.methods.viva import attach_viva, conditioning, viva_settings
    from comfy_kiwi.pipeline import SourceConditioning, sample_edit
    model = tiny_dit("2.1", seed=2)
    refiner = attach_viva(model, in_dim=24)
    seen = []
    original = refiner.refine

    def spy(hidden, t, mask=None):
        seen.append((float(torch.as_tensor(t).reshape(-1)[0]), hidden.shape[1], model.kv_cache))
        return original(hidden, t, mask)
    refiner.refine = spy
    hidden, neg = torch.randn(1, 5, 24), torch.randn(1, 3, 24)
    cond = conditioning(refiner, hidden, torch.ones(1, 5, dtype=torch.bool), neg, torch.ones(1, 3, dtype=torch.bool))
    src = SourceConditioning(torch.randn(1, 16, 2, 6, 10))
    out = sample_edit(model, cond, src, viva_settings(steps=3, progress=False))
    assert out.shape == (1, 16, 2, 6, 10)
    assert len(seen) == 6 and len({t for t, _, _ in seen}) == 3          # positive + negative at each of 3 steps
    assert {n for _, n, _ in seen} == {5, 3} and all(kv is None for *_, kv in seen)
