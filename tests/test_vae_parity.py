"""WanVAE against diffusers' AutoencoderKLWan holding the same random weights (tiny 2.1 and 2.2 configs),
plus the full-size architectures checked key by key (on the meta device)."""

from dataclasses import replace
from functools import lru_cache

import pytest
import torch

from comfy_kiwi.loading.vae_keys import diffusers_to_original, original_to_diffusers
from comfy_kiwi.models.wan_vae import WAN21_VAE, WAN22_VAE, WanVAE, patchify, tiny_config, unpatchify
from comfy_kiwi.testing.tiny_vae import diffusers_kwargs, diffusers_twin, random_frames, tiny_vae

TOL = 1e-5


@lru_cache(maxsize=None)
def _pair(version: str):
    vae = tiny_vae(version, seed=11)
    return vae, diffusers_twin(vae)


def _stats(vae):
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return mean, std


def _reference_encode(ref, vae, x):
    mean, std = _stats(vae)
    with torch.no_grad():
        return (ref.encode(x).latent_dist.mean - mean) / std


def _reference_decode(ref, vae, z):
    mean, std = _stats(vae)
    with torch.no_grad():
        return ref.decode(z * std + mean).sample   # diffusers clamps to [-1, 1]


@pytest.mark.parametrize("version", ["2.1", "2.2"])
@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_decode_match_diffusers(version, frames):
    vae, ref = _pair(version)
    s = vae.spatial_factor
    x = random_frames(frames, 3 * s, 2 * s, seed=frames)            # [1, 3, F, 3s, 2s]
    z = vae.encode(x)
    z_ref = _reference_encode(ref, vae, x)
    assert z.shape == (1, vae.z_dim, (frames - 1) // 4 + 1, 3, 2) == z_ref.shape
    enc_err = (z - z_ref).abs().max().item()

    y = vae.decode(z)
    y_ref = _reference_decode(ref, vae, z)
    assert y.shape == x.shape == y_ref.shape
    dec_err = (y - y_ref).abs().max().item()
    print(f"\nparity wan{version} F={frames}: encode max|Δ|={enc_err:.3e}  decode max|Δ|={dec_err:.3e}")
    assert enc_err < TOL
    assert dec_err < TOL
    # the comparison is meaningful: latents are not tiny and most pixels are not clamped
    assert z.abs().mean() > 0.1
    assert (y.abs() < 0.999).float().mean() > 0.5


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_batch_of_two_matches_diffusers(version):
    vae, ref = _pair(version)
    s = vae.spatial_factor
    x = random_frames(5, 2 * s, 2 * s, seed=7, batch=2)
    z = vae.encode(x)
    assert (z - _reference_encode(ref, vae, x)).abs().max() < TOL
    assert not torch.allclose(z[0], z[1])
    assert (vae.decode(z) - _reference_decode(ref, vae, z)).abs().max() < TOL


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_released_depth_matches_diffusers(version):
    """Two residual blocks per stage and (1, 2, 4, 4) multipliers, as released (narrow widths)."""
    cfg = replace(tiny_config(version, dim=4), dim_mult=(1, 2, 4, 4), num_res_blocks=2)
    vae = tiny_vae(config=cfg, seed=2)
    ref = diffusers_twin(vae)
    s = vae.spatial_factor
    x = random_frames(5, 2 * s, 2 * s, seed=9)
    z = vae.encode(x)
    enc_err = (z - _reference_encode(ref, vae, x)).abs().max().item()
    dec_err = (vae.decode(z) - _reference_decode(ref, vae, z)).abs().max().item()
    print(f"\nparity wan{version} released depth F=5: encode max|Δ|={enc_err:.3e}  decode max|Δ|={dec_err:.3e}")
    assert enc_err < TOL and dec_err < TOL


@pytest.mark.parametrize("version", ["2.1", "2.2"])
@pytest.mark.parametrize("param", ["encoder.middle.2.residual.3.gamma", "decoder.head.0.gamma", "conv1.bias"])
def test_parity_check_detects_a_changed_weight(version, param):
    """The parity tolerance is far below what one perturbed tensor changes (the test can fail)."""
    vae, ref = _pair(version)
    other = tiny_vae(version, seed=11)
    with torch.no_grad():
        other.get_parameter(param).mul_(1.05)
    s = vae.spatial_factor
    x = random_frames(5, 2 * s, 2 * s, seed=3)
    z = other.encode(x)
    enc_err = (z - _reference_encode(ref, vae, x)).abs().max().item()
    dec_err = (other.decode(z) - _reference_decode(ref, vae, z)).abs().max().item()
    assert max(enc_err, dec_err) > 100 * TOL


@pytest.mark.parametrize("cfg", [WAN21_VAE, WAN22_VAE], ids=["2.1", "2.2"])
def test_full_size_architecture_matches_diffusers(cfg):
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        ours = WanVAE(cfg).state_dict()
        theirs = AutoencoderKLWan(**diffusers_kwargs(cfg)).state_dict()
    names = original_to_diffusers(ours)
    assert sorted(names.values()) == sorted(theirs)
    for k, v in ours.items():
        assert tuple(v.shape) == tuple(theirs[names[k]].shape), k
    back = diffusers_to_original(theirs)
    assert all(back[names[k]] == k for k in ours)
    assert cfg.spatial_factor == (8 if cfg.version == "2.1" else 16)


def test_wan21_names_agree_with_diffusers_single_file_converter():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        ours = WanVAE(WAN21_VAE).state_dict()
    assert set(convert_wan_vae_to_diffusers(dict(ours))) == set(original_to_diffusers(ours).values())


# Keys and shapes of the released files (wan_2.1_vae / wan2.2_vae), as probed by ComfyUI and others.
RELEASED = {
    "2.1": {"decoder.middle.0.residual.0.gamma": (384, 1, 1, 1), "decoder.conv1.weight": (384, 16, 3, 3, 3),
            "encoder.head.2.weight": (32, 384, 3, 3, 3), "encoder.conv1.weight": (96, 3, 3, 3, 3),
            "conv1.weight": (32, 32, 1, 1, 1), "conv2.weight": (16, 16, 1, 1, 1)},
    "2.2": {"decoder.upsamples.0.upsamples.0.residual.2.weight": (1024, 1024, 3, 3, 3),
            "encoder.downsamples.0.downsamples.2.resample.1.weight": (160, 160, 3, 3),
            "encoder.downsamples.1.downsamples.2.time_conv.weight": (320, 320, 3, 1, 1),
            "decoder.upsamples.1.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
            "decoder.upsamples.2.upsamples.3.resample.1.weight": (512, 512, 3, 3),
            "decoder.upsamples.3.upsamples.2.residual.6.weight": (256, 256, 3, 3, 3),
            "encoder.conv1.weight": (160, 12, 3, 3, 3), "conv1.weight": (96, 96, 1, 1, 1),
            "decoder.head.2.weight": (12, 256, 3, 3, 3)},
}


@pytest.mark.parametrize("cfg", [WAN21_VAE, WAN22_VAE], ids=["2.1", "2.2"])
def test_full_size_keys_are_the_released_ones(cfg):
    with torch.device("meta"):
        vae = WanVAE(cfg)
    sd = vae.state_dict()
    for key, shape in RELEASED[cfg.version].items():
        assert tuple(sd[key].shape) == shape, key
    assert "decoder.upsamples.3.upsamples.3.resample.1.weight" not in sd
    assert vae.temporal_factor == 4 and vae.z_dim == (16 if cfg.version == "2.1" else 48)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 5, 8, 12)
    p = patchify(x, 2)
    assert p.shape == (2, 12, 5, 4, 6)
    assert torch.equal(unpatchify(p, 2), x)
    # channel c·4 + dx·2 + dy holds pixel (2y+dy, 2x+dx)
    assert torch.equal(p[:, 1 * 4 + 1 * 2 + 0, :, 1, 2], x[:, 1, :, 2, 5])


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_blocks_give_the_same_result_with_autograd_on(version):
    """encode/decode overwrite their own temporaries (no autograd); the graph-safe path must agree."""
    from comfy_kiwi.models.wan_vae_blocks import StreamCache

    vae, _ = _pair(version)
    x = patchify(random_frames(1, 2 * vae.spatial_factor, 2 * vae.spatial_factor), vae.config.patch_size)
    with torch.no_grad():
        fast = vae.encoder(x, StreamCache())
    with torch.enable_grad():
        safe = vae.encoder(x.requires_grad_(), StreamCache())
        safe.sum().backward()
    assert torch.equal(fast, safe.detach())
    assert x.grad is not None and torch.isfinite(x.grad).all()
