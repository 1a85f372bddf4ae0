"""RVEDiT: routed conditioning on a tiny WanDiT, the cross-attention tap, symmetric InfoNCE, config."""

from __future__ import annotations

import math
import random

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.methods.rvedit import (AlignmentConfig, CrossAttentionTap, RoutedContext, route_context,
                                       symmetric_info_nce)
from comfy_kiwi.testing.tiny_dit import tiny_config, tiny_dit

DIM = 64   # tiny-wan2.1 width


def streams(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 5, DIM, generator=g), torch.randn(batch, 7, DIM, generator=g),
            torch.randn(batch, 3, DIM, generator=g))


def test_route_context_rule():
    x_e, x_v, x_l = streams()
    assert route_context(0, 2, x_e, x_v, x_l) is x_e
    assert route_context(1, 2, x_e, x_v, x_l) is x_e
    deep = route_context(2, 2, x_e, x_v, x_l)
    assert torch.equal(deep, torch.cat([x_e, x_v, x_l], dim=1))
    assert torch.equal(route_context(3, 2, x_e, None, x_l), torch.cat([x_e, x_l], dim=1))
    assert route_context(3, 2, x_e) is x_e
    with pytest.raises(InputError, match="width"):
        route_context(3, 2, x_e, torch.randn(2, 7, DIM + 1))


def test_routed_blocks_never_see_source_or_caption_tokens():
    dit = tiny_dit(config=tiny_config(num_layers=4), seed=1)
    dit.context_embedding = "none"
    x_e, x_v, x_l = streams()
    g = torch.Generator().manual_seed(2)
    latents, t = torch.randn(2, 16, 2, 4, 6, generator=g), torch.tensor([300.0, 700.0])
    with torch.no_grad():
        plain = dit(latents, t, x_e)
        with RoutedContext(dit, 2, x_e, x_v, x_l), CrossAttentionTap(dit, range(4), capture="both") as tap:
            routed = dit(latents, t, x_e)
    for i in (0, 1):                                           # shallow: exactly X_e
        assert torch.equal(tap.inputs[i][1], x_e)
    for i in (2, 3):                                           # deep: [X_e; X_v; X_ℓ]
        assert torch.equal(tap.inputs[i][1], torch.cat([x_e, x_v, x_l], dim=1))
    assert tap.outputs[0].shape == (2, 2 * 2 * 3, DIM)
    assert not torch.allclose(routed, plain)                   # the deep streams changed the output
    # hooks are gone after the with-block: the plain forward is reproduced exactly
    with torch.no_grad():
        assert torch.equal(dit(latents, t, x_e), plain)
    # with L_s = number of blocks every block sees only X_e: identical to the plain model
    with torch.no_grad(), RoutedContext(dit, 4, x_e, x_v, x_l):
        assert torch.equal(dit(latents, t, x_e), plain)


def test_tap_outputs_keep_or_cut_the_graph():
    dit = tiny_dit(seed=3).train()
    dit.context_embedding = "none"
    x_e = streams(batch=1)[0]
    latents, t = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0])
    with CrossAttentionTap(dit, [1]) as tap:
        dit(latents, t, x_e)
    assert tap.outputs[1].requires_grad and not tap.inputs
    with CrossAttentionTap(dit, [1], detach=True) as tap:
        dit(latents, t, x_e)
    assert not tap.outputs[1].requires_grad
    with pytest.raises(InputError, match="block"):
        CrossAttentionTap(dit, [5])


def test_info_nce_aligned_lower_than_shuffled_and_grad_only_into_a():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(2, 64, 16, generator=g)
    aligned = (b + 0.1 * torch.randn(2, 64, 16, generator=g)).requires_grad_()
    shuffled = aligned.detach()[:, torch.randperm(64, generator=g)]
    b_leaf = b.clone().requires_grad_()
    loss_aligned = symmetric_info_nce(aligned, b_leaf, tau=0.07)
    loss_shuffled = symmetric_info_nce(shuffled, b_leaf, tau=0.07)
    assert loss_aligned < 0.5 * loss_shuffled
    loss_aligned.backward()
    assert aligned.grad is not None and aligned.grad.abs().sum() > 0
    assert b_leaf.grad is None                                 # the reference branch gets nothing
    # position subsampling: same positions in both branches, bounded logits, reproducible with a generator
    capped = symmetric_info_nce(aligned, b, max_positions=8, generator=torch.Generator().manual_seed(1))
    again = symmetric_info_nce(aligned, b, max_positions=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(capped, again) and capped < symmetric_info_nce(shuffled, b, max_positions=8,
                                                                      generator=torch.Generator().manual_seed(1))
    with pytest.raises(InputError):
        symmetric_info_nce(aligned, b[:, :10])


def test_info_nce_equals_a_hand_computation_of_both_directions_and_the_half():
    """½[CE(a→b) + CE(b→a)] written out with loops over positions, for 2 samples of 3 positions."""
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    tau = 0.5
    total = 0.0
    for s in range(2):
        za = [v / v.norm() for v in a[s]]
        zb = [v / v.norm() for v in b[s]]
        sim = [[float(za[i] @ zb[j]) / tau for j in range(3)] for i in range(3)]
        a_to_b = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(3))) for i in range(3)) / 3
        b_to_a = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(3))) for j in range(3)) / 3
        total += 0.5 * (a_to_b + b_to_a)
    assert abs(float(symmetric_info_nce(a, b, tau=tau, max_positions=None)) - total / 2) < 1e-5


def test_alignment_on_tiny_dit_trains_only_the_editing_pass():
    """The full recipe on a tiny DiT: no-grad reference pass, tapped editing pass, InfoNCE at one block."""
    dit = tiny_dit(seed=4).train()
    dit.context_embedding = "none"
    cfg = AlignmentConfig()
    block = cfg.pick_block(len(dit.blocks), random.Random(0))
    g = torch.Generator().manual_seed(5)
    src, tgt = torch.randn(1, 16, 1, 4, 4, generator=g), torch.randn(1, 16, 1, 4, 4, generator=g)
    x_e, caption = torch.randn(1, 5, DIM, generator=g), torch.randn(1, 3, DIM, generator=g)
    t = torch.tensor([400.0])
    with torch.no_grad(), CrossAttentionTap(dit, [block], detach=True) as ref_tap:
        dit(tgt, t, caption)
    with CrossAttentionTap(dit, [block]) as tap:
        dit(src, t, x_e)
    loss = cfg.loss_weight * symmetric_info_nce(tap.outputs[block], ref_tap.outputs[block], cfg.tau)
    loss.backward()
    assert dit.blocks[block].cross_attn.q.weight.grad.abs().sum() > 0


def test_alignment_config():
    cfg = AlignmentConfig()
    assert (cfg.loss_weight, cfg.tau) == (0.75, 0.07) and AlignmentConfig.appendix().loss_weight == 0.1
    assert set(AlignmentConfig.LAMBDA_VALUES) == {0.75, 0.1}
    picks = {cfg.pick_block(4, random.Random(s)) for s in range(50)}
    assert picks == {0, 1, 2, 3}
    assert AlignmentConfig(blocks=(2,)).pick_block(4) == 2
    with pytest.raises(InputError):
        AlignmentConfig(tau=0)
    with pytest.raises(InputError):
        AlignmentConfig(blocks=(9,)).pick_block(4)


def test_source_video_tokens_embed_and_pool():
    from comfy_kiwi.methods.rvedit import source_video_tokens
    from comfy_kiwi.models.conditioning import ConditionEmbedder

    emb = ConditionEmbedder(16, DIM, zero_init=False)
    src = torch.randn(2, 16, 2, 8, 12)
    full = source_video_tokens(emb, src)
    assert torch.allclose(full, emb(src), atol=1e-6)            # unpooled = the embedder's tokens
    pooled = source_video_tokens(emb, src, pool=(1, 2, 3))
    assert pooled.shape == (2, 2 * 2 * 2, DIM)
    assert torch.allclose(pooled[:, 0], full.unflatten(1, (2, 4, 6))[:, 0, :2, :3].mean((1, 2)), atol=1e-5)
    with pytest.raises(InputError, match="pool"):
        source_video_tokens(emb, src, pool=(1, 3, 3))
