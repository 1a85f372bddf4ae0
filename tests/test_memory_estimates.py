"""The memory estimates against measurements: ``plan``'s DiT activation bytes per token and ``trainer memory``'s
LoRA-step activations, each compared with the live tensors of a real ``WanDiT`` forward / training step on the
CPU (``comfy_kiwi.testing.memory_probe``) at widths where the per-token terms dominate.

Mutations tried (each made a test here fail; measured/estimated in brackets): planner without the RoPE tables
(``4 * c.head_dim`` → 0) [1.07]; planner without the held tokens (``2 * c.dim * BF16`` → 0) [1.15, 1.11];
trainer without the fp32 LayerNorm inputs [1.08, 1.16]; without the fp32 RMSNorm inputs [LoRA 1.08, 1.16;
frozen 1.18, 1.33]; trainer without the fp32 upcast of ffn.2's input [1.15];
the formula before this measurement (14·dim + 2·ffn bf16 values per token) [about 2]; the VAE's earlier
per-pixel counts (6 copies × 40/64/96 channels × 2 B × 4 frames) [Wan2.1 encode 1.6, Wan2.2 encode 1.7].
"""

import pytest
import torch

from comfy_kiwi.memory.planner import dit_activation_bytes_per_token
from comfy_kiwi.models.wan_config import WanDiTConfig
from comfy_kiwi.testing.memory_probe import LivePeak, dit_inference_peak, lora_training_peak, tokens_of
from trainer.memory import block_terms, held_terms, kiwi_lora_activations

GRID = (2, 32, 32)          # latent frames × height × width: 2·16·16 video + 256 reference tokens = 768
CONTEXT = 64


def _config(dim, ffn, heads):
    return WanDiTConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=2, in_dim=48, out_dim=48,
                        text_dim=64, freq_dim=64)


# FFN-dominated (the 5B's ffn/dim = 4.67 and 128-wide heads) and attention-dominated widths
CONFIGS = {"5b-like": _config(256, 1195, 2), "narrow-ffn": _config(512, 512, 4)}


def test_probe_counts_new_storages_once_and_frees_them():
    x = torch.zeros(1000, 250)                          # 1 MB, made before: not counted
    n = x.untyped_storage().nbytes()
    with LivePeak() as m:
        a = x * 2
        b = a + 1
        view = b.t()                                    # a view: no new storage
        b.mul_(3)                                       # in place: no new storage
        del a
        c = b + view.t()
        assert m.live == 2 * n
        del b, view, c
    assert m.peak == 2 * n and m.live == 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_planner_dit_activations_match_a_measured_forward(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    measured = dit_inference_peak(cfg, *GRID, context=CONTEXT)
    estimated = tokens_of(cfg, *GRID) * dit_activation_bytes_per_token(cfg)
    assert 0.90 <= measured / estimated <= 1.04, (name, measured, estimated, measured / estimated)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lora_training_activations_match_a_measured_step(name):
    cfg = CONFIGS[name]
    measured = lora_training_peak(cfg, *GRID, context=CONTEXT, rank=8)
    estimated = kiwi_lora_activations(cfg, tokens_of(cfg, *GRID), CONTEXT, rank=8)
    assert 0.92 <= measured / estimated <= 1.06, (name, measured, estimated, measured / estimated)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_frozen_block_backward_sets_match_a_measured_step(name):
    """Without a LoRA (the ImVideoEdit estimate's base-block part): gradient through every frozen block."""
    cfg = CONFIGS[name]
    measured = lora_training_peak(cfg, *GRID, context=CONTEXT, rank=None)
    estimated = tokens_of(cfg, *GRID) * (sum(held_terms(cfg, cfg.num_layers).values()) + sum(block_terms(cfg).values()))
    assert 0.92 <= measured / estimated <= 1.08, (name, measured, estimated, measured / estimated)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_planner_vae_stages_match_measured_encode_and_decode(version):
    """Released VAE widths on a 32×32, 9-frame video (the causal cache is in its steady state from 9 frames)."""
    from comfy_kiwi.memory.planner import VAE_ACT_PER_PX, vae_video_bytes_per_px
    from comfy_kiwi.models.wan_vae import WAN21_VAE, WAN22_VAE
    from comfy_kiwi.testing.memory_probe import vae_peaks
    frames, px = 9, 32 * 32
    measured = vae_peaks(WAN22_VAE if version == "2.2" else WAN21_VAE, frames, 32, 32)
    for kind, got in zip(("encode", "decode"), measured):
        held, _ = vae_video_bytes_per_px(kind, version, frames)
        estimated = (VAE_ACT_PER_PX[(kind, version)] + held) * px
        assert 0.93 <= got / estimated <= 1.05, (version, kind, got, estimated, got / estimated)


def test_planner_counts_the_frame_conversion_after_decoding():
    from comfy_kiwi.frames import vae_to_frames
    from comfy_kiwi.memory.planner import vae_video_bytes_per_px
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1                     # the decoded video, fp32
    with LivePeak() as m:
        vae_to_frames(x)
    assert m.peak + x.nbytes == vae_video_bytes_per_px("decode", "2.2", 9)[1] * 32 * 32


def test_fp32_intermediates_are_most_of_a_blocks_backward_set():
    """The terms the first estimate left out: at the 5B's widths the fp32 copies and LoRA casts are over half."""
    from comfy_kiwi.models.wan_config import preset
    terms = block_terms(preset("wan2.2-ti2v-5b"), lora=True)
    fp32 = sum(v for k, v in terms.items() if "fp32" in k or "LoRA" in k)
    assert fp32 / sum(terms.values()) > 0.5
