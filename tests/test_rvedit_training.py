"""RVEDiT through the trainer (tiny Kiwi release + tiny umT5): routed conditioning and the alignment loss
train; the sampler's routed path keeps X_v/X_ℓ out of the shallow blocks; outputs load."""

from __future__ import annotations

import pytest
import torch

from trainer.config import load_config
from trainer.loop import train
from trainer_fixtures import one_thread, tiny_preset, write_kiwi_data, write_kiwi_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
    root = tmp_path_factory.mktemp("rvedit")
    data = write_kiwi_data(root / "data", count=2)
    lines = data["video"].read_text().splitlines()       # a target caption column for the alignment pass
    data["video"].write_text("\n".join([lines[0] + ",target_caption"] +
                                       [ln + ",a red square on a white background" for ln in lines[1:]]) + "\n")
    models = write_kiwi_models(root / "models")
    models["umt5"] = write_tiny_umt5(root / "models" / "umt5", d_model=32)
    return root, models, data


def _cfg(tiny, name, **options):
    root, models, data = tiny
    opts = {"video_pool": [1, 1, 1], **options}
    sections = {"model": {"text_encoder": str(models["umt5"])},
                "schedule": {"max_steps": 3}, "optimizer": {"lr": 1e-3}, "method": {"options": opts}}
    return load_config(tiny_preset("rvedit-kiwi-5b", root / name, models, data, **sections))


def test_rvedit_trains_with_alignment_and_samples_routed(tiny):
    from comfy_kiwi.methods.rvedit import CrossAttentionTap
    from comfy_kiwi.methods.rvedit_streams import load_rvedit
    cfg = _cfg(tiny, "align", align_weight=0.75)
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
    module = result["module"]
    assert module.streams.split == len(module.dit.blocks) // 2
    out = cfg.output_dir / "rvedit.safetensors"
    streams = load_rvedit(out, module.dit)
    for k, v in streams.state_dict().items():
        assert torch.equal(v, module.streams.state_dict()[k])
    assert (cfg.output_dir / "rvedit-dit.safetensors").is_file()

    # inference through the library sampler's routed path: shallow blocks see X_e only
    from trainer.data.cache import CachedDataset, to_device
    from trainer.methods import get_method
    method = get_method("rvedit")(cfg)
    method.num_blocks = len(module.dit.blocks)
    cache = sorted(cfg.cache_dir.glob("latents-*.safetensors"))
    items = [CachedDataset(c) for c in cache]
    ds = next(d for d in items if "mllm_context" in d[0])
    batch = to_device(method.collate([ds[0]]), "cpu")
    n = len(module.dit.blocks)
    with CrossAttentionTap(module.dit, range(n), capture="input") as tap:
        lat = method.sample(module, batch, steps=2, shift=5.0, seed=0)
    assert lat.shape == batch["target"][:1].shape and torch.isfinite(lat).all()
    x_e = batch["mllm_context"]
    for i in range(n):
        ctx = tap.inputs[i][1]
        if i < module.streams.split:
            assert ctx.shape[1] == x_e.shape[1]
        else:
            assert ctx.shape[1] > x_e.shape[1]


def test_rvedit_without_alignment_is_plain_flow_matching(tiny):
    cfg = _cfg(tiny, "plain", align_weight=0.0, dit_training="lora", lora_rank=4, lora_alpha=4.0)
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == 3
    assert (cfg.output_dir / "rvedit-dit-lora.safetensors").is_file()
    assert not any(p.requires_grad for p in result["module"].dit.parameters())
