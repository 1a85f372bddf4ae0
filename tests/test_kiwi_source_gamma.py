"""Kiwi-Edit paper's learnable γ(t) source scale (Eq. 1) beside the release's fixed σ.

Pinned: γ starts equal to σ = t/1000 and interpolates linearly between integer timesteps; with γ attached
the DiT adds E_s(x_src)·γ(1000σ) in place of E_s(x_src)·σ; the default (no γ) leaves the DiT's state dict
and numerics as they were; γ trains with the source_embedder group, is saved as ``vae_condition.gamma.table``
and load_dit attaches it again. The default path's bit-exactness against the release is pinned by
test_kiwi_numerics.py, test_pipeline.py and test_dit_conditioning.py.
"""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.models.conditioning import SourceGamma
from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_dit
from trainer_fixtures import tiny_preset, write_kiwi_data, write_kiwi_models, one_thread  # noqa: F401 (fixture)


def test_gamma_starts_at_sigma_and_interpolates_linearly():
    """Mutations tried: table initialised to ones → fails the σ check; nearest-knot lookup instead of linear
    interpolation → fails the midpoint check."""
    gamma = SourceGamma()
    t = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 1000
    torch.testing.assert_close(gamma(t), t / 1000, atol=1e-6, rtol=0)
    with torch.no_grad():
        gamma.table.copy_(torch.randn(SourceGamma.KNOTS, generator=torch.Generator().manual_seed(1)))
    mid = gamma(torch.tensor([2.5, 999.25, 1000.0]))
    tab = gamma.table
    expected = torch.stack([(tab[2] + tab[3]) / 2, 0.75 * tab[999] + 0.25 * tab[1000], tab[1000]])
    torch.testing.assert_close(mid, expected)


def _pair(seed=4):
    plain = tiny_dit("2.2", seed=seed, embedders=True)
    with_gamma = tiny_dit("2.2", seed=seed, embedders=True)
    with_gamma.source_embedder.attach_gamma()
    return plain, with_gamma


def test_dit_scales_the_source_by_gamma_in_place_of_sigma():
    """Eq. 1: x = E_x(x_t) + γ(t)·E_s(x_src). Mutations tried: σ·γ(t) (γ multiplying instead of replacing σ)
    → fails; γ ignored in ``_source_scale`` → fails."""
    plain, with_gamma = _pair()
    keys = set(plain.state_dict())
    assert set(with_gamma.state_dict()) == keys | {"source_embedder.gamma.table"}
    x = random_inputs(plain, batch=2, context_width=plain.config.dim)
    src = torch.randn_like(x["latents"])
    sigma = torch.tensor([0.3, 0.85])
    # at initialisation γ(1000σ) = σ: the same output as the release's path
    torch.testing.assert_close(with_gamma(**x, source_latents=src, source_scale=sigma),
                               plain(**x, source_latents=src, source_scale=sigma), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        with_gamma.source_embedder.gamma.table.mul_(3.0).add_(0.2)
    gamma = with_gamma.source_embedder.gamma(1000 * sigma).detach()
    out = with_gamma(**x, source_latents=src, source_scale=sigma)
    assert torch.equal(out, plain(**x, source_latents=src, source_scale=gamma))
    assert not torch.allclose(out, plain(**x, source_latents=src, source_scale=sigma), atol=1e-3)


def test_default_path_has_no_gamma():
    """The release's σ stays the default: a fresh or loaded DiT has no γ and no extra keys."""
    dit = tiny_dit("2.2", embedders=True)
    assert dit.source_embedder.gamma is None
    assert not any("gamma" in k for k in dit.state_dict())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gamma")
    return root, write_kiwi_models(root / "models"), write_kiwi_data(root / "data", count=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_trainer_option_trains_saves_and_reloads_gamma(tiny):
    """``source_scale = "gamma"``: γ trains with the source embedder, is saved as vae_condition.gamma.table
    and load_dit rebuilds a DiT that uses it. Mutation tried: not attaching γ in load_models → fails."""
    from safetensors.torch import load_file

    from comfy_kiwi.loading.dit_loader import load_dit
    from trainer.config import load_config
    from trainer.loop import train
    root, models, data = tiny
    toml = tiny_preset("kiwi-stage2", root / "run", models, data, optimizer={"lr": 2e-3},
                       schedule={"grad_accum": 0, "max_steps": 2}, method={"options": {"source_scale": "gamma"}})
    cfg = load_config(toml)
    result = train(cfg, log=lambda *a: None)
    table = result["module"].dit.source_embedder.gamma.table.detach().cpu()
    assert not torch.allclose(table, SourceGamma().table.detach(), atol=1e-7)     # it trained
    saved = load_file(str(cfg.output_dir / "kiwi.safetensors"))
    assert torch.equal(saved["vae_condition.gamma.table"], table)
    dit = load_dit(cfg.output_dir / "kiwi.safetensors", dtype=torch.float32)
    assert torch.equal(dit.source_embedder.gamma.table, table)
    # a release folder keeps it as source_embedder/ gamma.table, and its loader attaches it
    from trainer.__main__ import main as trainer_main
    out = root / "release"
    assert trainer_main(["export", "--config", str(toml), "--to", "release", "--out", str(out)]) == 0
    assert "gamma.table" in load_file(str(out / "source_embedder" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(load_dit(out, dtype=torch.float32).source_embedder.gamma.table, table)

    with pytest.raises(InputError, match="source_scale"):
        load_config(tiny_preset("kiwi-stage2", root / "bad", models, data,
                                method={"options": {"source_scale": "learned"}}))
    with pytest.raises(InputError, match="source_input"):
        load_config(tiny_preset("kiwi-stage1", root / "bad1", models, data,
                                method={"options": {"source_scale": "gamma"}}))
