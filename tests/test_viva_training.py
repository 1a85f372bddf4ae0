"""VIVA through the trainer (tiny DiT + tiny Qwen instructor): a short run, the masked loss, outputs that load,
and an inference with the library sampler's refiner path (CFG 2.0 on the instruction only)."""

from __future__ import annotations

import pytest
import torch

from trainer.config import load_config
from trainer.loop import train
from trainer_fixtures import one_thread, tiny_preset, write_kiwi_data, write_kiwi_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("viva")
    data = write_kiwi_data(root / "data", count=2)
    # add a mask column (white = edited) to the video CSV
    from comfy_kiwi.video_io import write_video
    lines = data["video"].read_text().splitlines()
    mask = torch.zeros(5, 64, 64, 3)
    mask[:, 16:48, 16:48] = 1.0                                   # white square = edited region
    write_video(root / "data" / "mask.mp4", mask, fps=8)
    data["video"].write_text("\n".join([lines[0] + ",mask"] + [ln + ",mask.mp4" for ln in lines[1:]]) + "\n")
    return root, write_kiwi_models(root / "models"), data


def test_viva_trains_and_samples(tiny):
    from comfy_kiwi.loading.dit_loader import load_dit
    from comfy_kiwi.methods.viva import load_viva
    root, models, data = tiny
    cfg = load_config(tiny_preset("viva-wan2.2-5b", root / "run", models, data,
                                  schedule={"max_steps": 3}, optimizer={"lr": 1e-3}))
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
    module = result["module"]
    assert module.dit.source_mode == "concat"
    # only the refiner and the channel-concat embedder trained
    assert not any(p.requires_grad for n, p in module.dit.named_parameters() if not n.startswith("source_mixer."))
    out = cfg.output_dir / "viva.safetensors"
    assert out.is_file()
    dit = load_dit(models["dit"], dtype=torch.float32)
    refiner = load_viva(out, dit)
    assert dit.source_mode == "concat"
    for k, v in refiner.state_dict().items():
        assert torch.equal(v, module.refiner.state_dict()[k])
    # inference through the trainer's sample hook (library sampler, refiner per step)
    from trainer.data.cache import CachedDataset, to_device
    from trainer.methods import get_method
    method = get_method("viva")(cfg)
    cache = sorted(cfg.cache_dir.glob("latents-*.safetensors"))[-1]
    batch = to_device(method.collate([CachedDataset(cache)[0]]), "cpu")
    lat = method.sample(module, batch, steps=2, shift=5.0, seed=0)
    assert lat.shape == batch["target"][:1].shape and torch.isfinite(lat).all()


def test_masked_loss_column_reaches_the_loss(tiny):
    from comfy_kiwi.methods.viva_loss import masked_flow_matching_loss
    pred, target = torch.randn(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
    ones = torch.ones(1, 1, 2, 2, 2)
    plain = masked_flow_matching_loss(pred, target)
    assert torch.allclose(masked_flow_matching_loss(pred, target, ones, w_m=1.0), 2 * plain)


def test_viva_full_dit_without_source_conditioning(tiny):
    root, models, data = tiny
    cfg = load_config(tiny_preset("viva-wan2.2-5b", root / "full", models, data, schedule={"max_steps": 1},
                                  method={"options": {"train_dit": True, "source_conditioning": "none"}}))
    result = train(cfg, log=lambda *a: None)
    module = result["module"]
    assert module.dit.source_mixer is None and module.dit.source_mode == "add_sigma"
    assert (cfg.output_dir / "viva-dit.safetensors").is_file() and (cfg.output_dir / "viva.safetensors").is_file()
    assert any(p.requires_grad for p in module.dit.blocks.parameters())
