"""VIVA through the trainer (tiny DiT + tiny Qwen instructor): a short run of the paper preset (entire DiT +
refiner + projector train, reference tokens, image/video co-training, condition dropout), the masked loss, outputs
that load, and an inference with the library sampler's refiner path (CFG 2.0 on the instruction only)."""

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
    # the preset's video dataset: videos with a reference image and a mask column (white = edited)
    from comfy_kiwi.video_io import write_video
    lines = data["reference"].read_text().splitlines()
    mask = torch.zeros(5, 64, 64, 3)
    mask[:, 16:48, 16:48] = 1.0                                   # white square = edited region
    write_video(root / "data" / "mask.mp4", mask, fps=8)
    data["reference"].write_text("\n".join([lines[0] + ",mask"] + [ln + ",mask.mp4" for ln in lines[1:]]) + "\n")
    data["video"] = data["reference"]
    return root, write_kiwi_models(root / "models"), data


def viva_group(name: str) -> str:
    """The parameter group of a VivaModule parameter name."""
    for prefix, group in (("refiner.", "refiner"), ("dit.source_mixer.", "projector"),
                          ("dit.ref_embedder.", "reference_embedder"), ("dit.text_embedding.", "text_embedding")):
        if name.startswith(prefix):
            return group
    return "dit"


# what VIVA trains: the entire DiT with the refiner and the projector (+ our reference embedder for Fig. 2's
# reference tokens); the umT5 text embedding is unused on the refined-context path and the instructor is frozen
VIVA_TRAINED = {"dit", "refiner", "projector", "reference_embedder"}


def test_viva_paper_preset_trains_exactly_its_groups_and_samples(tiny, monkeypatch):
    from comfy_kiwi.loading.dit_loader import load_dit
    from comfy_kiwi.methods.viva import load_viva
    from trainer.methods.viva import VivaMethod
    root, models, data = tiny
    cfg = load_config(tiny_preset("viva-wan2.2-5b", root / "run", models, data,
                                  schedule={"max_steps": 3}, optimizer={"lr": 1e-3}))
    assert cfg.optimizer.lr == 1e-3 and cfg.data.mix_weights == [3, 2]
    opts = cfg.method.options
    assert opts.train_dit and opts.reference_tokens and opts.condition_dropout == 0.1
    before, build = {}, VivaMethod.build

    def recording(self, models):
        module = build(self, models)
        before.update({k: v.detach().clone() for k, v in module.named_parameters()})
        return module
    monkeypatch.setattr(VivaMethod, "build", recording)
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
    module = result["module"]
    assert module.dit.source_mode == "concat" and module.dit.ref_embedder is not None
    changed, unchanged = {}, {}
    for n, p in module.named_parameters():
        (changed if not torch.equal(p.detach(), before[n]) else unchanged).setdefault(viva_group(n), []).append(n)
    assert set(changed) == VIVA_TRAINED, sorted(changed)
    assert set(unchanged) == {"text_embedding"}, {g: v[:3] for g, v in unchanged.items()}
    # the DiT started from the file (nothing but the new parts was initialised here)
    base = load_dit(models["dit"], dtype=torch.float32).state_dict()
    assert all(torch.equal(before["dit." + k], v) for k, v in base.items())
    out = cfg.output_dir / "viva.safetensors"
    assert out.is_file() and (cfg.output_dir / "viva-dit.safetensors").is_file()
    dit = load_dit(models["dit"], dtype=torch.float32)
    refiner = load_viva(out, dit)
    assert dit.source_mode == "concat" and dit.ref_embedder is not None
    for k, v in refiner.state_dict().items():
        assert torch.equal(v, module.refiner.state_dict()[k])
    # the fine-tuned DiT file loads (Kiwi DiT Loader's reader) and, with viva.safetensors, is the trained model
    tuned = load_dit(cfg.output_dir / "viva-dit.safetensors", dtype=torch.float32)
    load_viva(out, tuned)
    assert all(torch.equal(v, module.dit.state_dict()[k]) for k, v in tuned.state_dict().items())
    # inference through the trainer's sample hook (library sampler, refiner per step, CFG 2.0 with the
    # cached empty-instruction encoding, reference tokens)
    from trainer.data.cache import CachedDataset, to_device
    from trainer.methods import get_method
    method = get_method("viva")(cfg)
    cache = [CachedDataset(c) for c in sorted(cfg.cache_dir.glob("latents-*.safetensors"))]
    ds = next(d for d in cache if "reference_latents" in d[0])
    batch = to_device(method.collate([ds[0]]), "cpu")
    lat = method.sample(module, batch, steps=2, shift=5.0, seed=0)
    assert lat.shape == batch["target"][:1].shape and torch.isfinite(lat).all()


def test_condition_dropout_happens_at_the_configured_rate_and_swaps_in_the_empty_instruction(tiny):
    from trainer.methods.viva import dropped_condition
    root, models, data = tiny
    for rate in (0.1, 0.3):
        cfg = load_config(tiny_preset("viva-wan2.2-5b", root / f"rate{rate}", models, data,
                                      method={"options": {"condition_dropout": rate}}))
        from trainer.methods import get_method
        method = get_method("viva")(cfg)
        batch = {"target": torch.zeros(4000, 1, 1, 1, 1)}
        drop = method.draws(batch, torch.Generator().manual_seed(0))["drop"]
        assert drop.dtype == torch.bool and abs(float(drop.float().mean()) - rate) < 0.025, (rate, drop.float().mean())
    hidden, null = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    mask, null_mask = torch.ones(3, 5, dtype=torch.bool), torch.tensor([[True] * 2 + [False] * 3] * 3)
    b = {"vlm_hidden": hidden, "vlm_mask": mask, "vlm_hidden_null": null, "vlm_mask_null": null_mask}
    h, m = dropped_condition(b, torch.tensor([False, True, False]))
    assert torch.equal(h[1], null[1]) and torch.equal(m[1], null_mask[1])
    assert torch.equal(h[[0, 2]], hidden[[0, 2]]) and torch.equal(m[[0, 2]], mask[[0, 2]])


def test_masked_loss_column_reaches_the_loss(tiny):
    from comfy_kiwi.methods.viva_loss import masked_flow_matching_loss
    pred, target = torch.randn(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
    ones = torch.ones(1, 1, 2, 2, 2)
    plain = masked_flow_matching_loss(pred, target)
    assert torch.allclose(masked_flow_matching_loss(pred, target, ones, w_m=1.0), 2 * plain)


def test_viva_refiner_only_without_source_conditioning(tiny):
    root, models, data = tiny
    cfg = load_config(tiny_preset("viva-wan2.2-5b", root / "small", models, data, schedule={"max_steps": 1},
                                  method={"options": {"train_dit": False, "source_conditioning": "none"}}))
    result = train(cfg, log=lambda *a: None)
    module = result["module"]
    assert module.dit.source_mixer is None and module.dit.source_mode == "add_sigma"
    assert (cfg.output_dir / "viva.safetensors").is_file() and not (cfg.output_dir / "viva-dit.safetensors").exists()
    assert not any(p.requires_grad for p in module.dit.blocks.parameters())
