"""Tiled VAE encode/decode: exact when one tile covers the frame, exact blending for a spatially local
model, and close to untiled for a real (tiny, random) Wan VAE."""

from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from comfy_kiwi.errors import InputError
from comfy_kiwi.models.vae_tiling import ramp, tile_starts, tiled_decode, tiled_encode
from comfy_kiwi.testing.tiny_vae import random_frames, tiny_vae


@lru_cache(maxsize=None)
def _vae(version):
    return tiny_vae(version, seed=5)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_one_tile_covering_the_frame_is_exact(version):
    vae = _vae(version)
    s = vae.spatial_factor
    x = random_frames(5, 4 * s, 6 * s, seed=1)
    z = vae.encode(x)
    y = vae.decode(z)
    for tile in [(4 * s, 6 * s), (8 * s, 8 * s)]:          # exactly the frame, larger than the frame
        assert torch.equal(vae.encode(x, tiled=True, tile=tile, stride=tile), z)
    for tile in [(4, 6), (30, 52)]:                          # latent units; (30, 52) is the Kiwi default
        assert torch.equal(vae.decode(z, tiled=True, tile=tile, stride=(1, 1)), y)
    # the Kiwi defaults on a frame smaller than one tile: also exact
    assert torch.equal(tiled_encode(vae, x), z)
    assert torch.equal(tiled_decode(vae, z), y)


class _LocalVAE:
    """A spatially local stand-in with the VAE interface: every output pixel depends on one input
    (latent) pixel only, so any tiling must reproduce the untiled result up to rounding."""

    spatial_factor, temporal_factor, z_dim = 4, 4, 6

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.enc = torch.randn(self.z_dim, 3, generator=g)
        self.dec = torch.randn(3, self.z_dim, generator=g)

    def check_frames_shape(self, shape):
        pass

    def check_latents_shape(self, shape):
        pass

    def encode_untiled(self, x):                                     # [B,3,4k+1,H,W] → [B,z,k+1,H/4,W/4]
        x = F.avg_pool3d(x[:, :, ::4], (1, 4, 4))
        return torch.einsum("zc,bcthw->bzthw", self.enc, x)

    def decode_raw(self, z, out_device=None):                        # → [B,3,4(T-1)+1,4h,4w]
        y = torch.einsum("cz,bzthw->bcthw", self.dec, z).repeat_interleave(4, 2)[:, :, 3:]
        return y.repeat_interleave(4, 3).repeat_interleave(4, 4)


@pytest.mark.parametrize("tile,stride", [((4, 4), (2, 2)), ((5, 7), (3, 4)), ((6, 6), (6, 6)),
                                         ((3, 8), (1, 5)), ((30, 52), (15, 26))])
def test_blending_is_exact_for_a_local_model(tile, stride):
    vae = _LocalVAE()
    x = random_frames(9, 4 * 11, 4 * 13, seed=2)                     # latent grid 11×13: edge tiles get cut
    z = vae.encode_untiled(x)
    te = tiled_encode(vae, x, tile=(4 * tile[0], 4 * tile[1]), stride=(4 * stride[0], 4 * stride[1]))
    td = tiled_decode(vae, z, tile=tile, stride=stride)
    assert (te - z).abs().max() < 1e-5
    assert (td - vae.decode_raw(z).clamp(-1, 1)).abs().max() < 1e-5


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_small_tiles_stay_close_to_untiled(version):
    """Real tiny VAE, tiles much smaller than its receptive field (the mid-block attention is global):
    tiling is an approximation here; report the difference, and check that blending the overlaps
    beats hard seams."""
    vae = _vae(version)
    s = vae.spatial_factor
    x = random_frames(5, 8 * s, 12 * s, seed=3)
    z = vae.encode(x)
    y = vae.decode(z)
    zt = vae.encode(x, tiled=True, tile=(6 * s, 8 * s), stride=(3 * s, 4 * s))
    yt = vae.decode(z, tiled=True, tile=(6, 8), stride=(3, 4))
    z_seams = vae.encode(x, tiled=True, tile=(6 * s, 8 * s), stride=(6 * s, 8 * s))
    y_seams = vae.decode(z, tiled=True, tile=(6, 8), stride=(6, 8))
    assert zt.shape == z.shape and yt.shape == y.shape
    assert torch.isfinite(zt).all() and yt.abs().max() <= 1.0
    de, dd = (zt - z).abs(), (yt - y).abs()
    print(f"\ntiled vs untiled wan{version} (tile 6x8 latent, stride 3x4, frame 8x12 latent): "
          f"encode max {de.max():.3f} mean {de.mean():.4f} (|z| mean {z.abs().mean():.3f}); "
          f"decode max {dd.max():.3f} mean {dd.mean():.4f} (|y| mean {y.abs().mean():.3f}); "
          f"hard seams: encode mean {(z_seams - z).abs().mean():.4f}, decode mean {(y_seams - y).abs().mean():.4f}")
    assert de.mean() < (z_seams - z).abs().mean()
    assert dd.mean() < (y_seams - y).abs().mean()


def test_tile_starts_and_ramps():
    assert tile_starts(64, 30, 15) == [0, 15, 30, 45]
    assert tile_starts(30, 30, 15) == [0]
    assert tile_starts(10, 30, 15) == [0]
    assert tile_starts(31, 30, 15) == [0, 15]
    assert torch.allclose(ramp(6, 3, True, True), torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]))
    assert torch.equal(ramp(4, 2, False, False), torch.ones(4))
    assert torch.equal(ramp(4, 0, True, True), torch.ones(4))


def test_bad_tiles_are_rejected():
    vae = _vae("2.1")
    x = random_frames(1, 16, 16)
    with pytest.raises(InputError, match="stride"):
        tiled_decode(vae, vae.encode(x), tile=(2, 2), stride=(3, 3))
    with pytest.raises(InputError, match="multiples of 8"):
        tiled_encode(vae, x, tile=(12, 16), stride=(8, 8))
    with pytest.raises(InputError, match="positive"):
        tiled_decode(vae, vae.encode(x), tile=(0, 2), stride=(1, 1))
