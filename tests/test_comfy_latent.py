"""Kiwi latents ↔ ComfyUI LATENT (comfy_kiwi.comfyui.latent): exact inverses, and clear refusals. That ComfyUI's
own VAE decodes the converted latents like Kiwi's does is tested in the server (tests/test_real_comfyui.py)."""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.comfyui import latent as comfy_latent
from comfy_kiwi.errors import InputError
from comfy_kiwi.testing.tiny_vae import tiny_vae


@pytest.fixture(scope="module")
def vae():
    return tiny_vae("2.2", dim=8)


def test_raw_scale_is_the_vae_posterior_mean(vae):
    frames = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    kiwi = vae.encode(frames)
    raw = comfy_latent.to_comfy(kiwi, vae)["samples"]
    # what the VAE computed before normalising: its posterior mean (ComfyUI's VAE Encode output)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert not torch.allclose(raw, kiwi)
    assert torch.allclose((raw - mean) / std, kiwi, atol=1e-5)
    assert torch.allclose(comfy_latent.from_comfy({"samples": raw, "batch_index": [0]}, vae), kiwi, atol=1e-5)


@pytest.mark.parametrize("bad, words", [
    ({"samples": torch.zeros(1, 4, 8, 8)}, "Image-model latents"),
    ({"samples": torch.zeros(1, 16, 2, 4, 4)}, "has 16 channels but this VAE's latents have 48"),
    (torch.zeros(1, 48, 2, 4, 4), "expected a ComfyUI LATENT"),
])
def test_wrong_latents_are_refused_clearly(vae, bad, words):
    with pytest.raises(InputError, match=words):
        comfy_latent.from_comfy(bad, vae)
