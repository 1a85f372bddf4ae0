"""Kiwi-Edit / InstructX training on tiny models: every shipped preset runs, exactly its declared parameter
groups change (all other tensors bit-identical), the fixed-draw loss falls, and the outputs load."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import load_config
from trainer.data.cache import CachedDataset, build_cache
from trainer.data.datasets import read_records
from trainer.evaluate import fixed_loss
from trainer.loop import _loaders, train
from trainer.methods import get_method
from trainer.methods.kiwi_module import group_of
from trainer_fixtures import tiny_preset, write_kiwi_data, write_kiwi_models, one_thread  # noqa: F401 (fixture)

PRESETS = ["kiwi-stage1", "kiwi-stage2", "kiwi-stage3", "kiwi-stage3-2-1-1", "instructx-align", "instructx-full",
           "instructx-quality", "kiwi-lora-5b-480p"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kiwi")
    return root, write_kiwi_models(root / "models"), write_kiwi_data(root / "data", count=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def preset_cfg(tiny, preset, name=None, **overrides):
    root, models, data = tiny
    opts = {"optimizer": {"lr": 2e-3}, "schedule": {"grad_accum": 0}}     # one micro-step per dataset
    if preset == "kiwi-lora-5b-480p":
        opts["method"] = {"options": {"dit_storage": "fp8", "block_swap": 1}}   # the tiny DiT has 2 blocks
    opts.update(overrides)
    cfg = load_config(tiny_preset(preset, root / (name or preset), models, data, **opts))
    if preset in ("instructx-full", "instructx-quality"):     # 128:16:16 would make 4 image-only micro-steps
        cfg.data.mix_weights = []
    return cfg


def fresh(cfg):
    """The module as the run starts (same seed, same loading), without training."""
    method = get_method(cfg.method.name)(cfg)
    torch.manual_seed(cfg.schedule.seed)
    return method, method.build(method.load_models(cfg, torch.device("cpu")))


def datasets(cfg, method):
    out = []
    for spec in cfg.dataset_specs():
        path = build_cache(read_records(spec.dataset, spec.format, spec.base_path), cfg, *_loaders(cfg, "cpu"),
                           log=lambda *a: None, method=method, spec=spec)
        out.append(CachedDataset(path))
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_exactly_its_declared_groups(tiny, preset):
    cfg = preset_cfg(tiny, preset)
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == cfg.schedule.max_steps and all(math.isfinite(x) for x in result["losses"])
    trained = result["module"]
    method, base = fresh(cfg)
    declared = set(cfg.method.options.trainable)

    before, after = dict(base.named_parameters()), dict(trained.named_parameters())
    assert set(before) == set(after)
    changed = {n for n in after if not torch.equal(after[n].detach().cpu(), before[n].detach().cpu())}
    groups_seen = {group_of(n) for n in before} - {None}
    assert declared <= groups_seen, f"declared groups missing from the model: {declared - groups_seen}"
    for name in before:
        group = group_of(name)
        if name.startswith("dit.text_embedding."):     # unused on the MLLM path: no gradient, never changes
            assert name not in changed
        elif group in declared:
            assert name in changed, f"{preset}: {name} ({group}) is declared trainable but did not change"
        else:
            assert name not in changed, f"{preset}: {name} ({group}) changed but is not declared"
    # the frozen base DiT weights are the file's, the frozen Qwen weights the folder's
    assert any(n.startswith("dit.blocks.") for n in before)
    if "dit" not in declared:
        assert not any(n.startswith("dit.blocks.") and n in changed for n in before)

    # the fixed-draw loss (same noise levels and noise for both models) falls
    sets = datasets(cfg, method)
    loss_before = sum(fixed_loss(method, base, d, cfg.data.text_len, repeats=1) for d in sets)
    loss_after = sum(fixed_loss(method, trained, d, cfg.data.text_len, repeats=1) for d in sets)
    print(f"{preset}: fixed-draw loss {loss_before:.4f} -> {loss_after:.4f}")
    assert loss_after < loss_before

    final = sorted(p.name for p in cfg.output_dir.glob("*.safetensors"))
    expect = (["kiwi.safetensors"] if declared - {"dit_lora"} else []) + \
             (["kiwi-dit-lora.safetensors"] if "dit_lora" in declared else [])
    assert final == sorted(expect)


def test_stage_outputs_load_in_the_library(tiny):
    """A stage-3 output is a Kiwi training checkpoint: load_dit reads the DiT + embedders, the MLLM loader
    reads base folder + checkpoint; the loaded weights are the trained ones."""
    from safetensors.torch import load_file

    from comfy_kiwi.loading.dit_loader import load_dit
    from comfy_kiwi.mllm.loader import load_mllm_encoder
    root, models, _ = tiny
    cfg = preset_cfg(tiny, "kiwi-stage3", "load", schedule={"max_steps": 1})
    module = train(cfg, log=lambda *a: None)["module"]
    path = cfg.output_dir / "kiwi.safetensors"
    keys = set(load_file(str(path)))
    assert {"mllm.connetor.0.weight", "mllm.ref_queries.q", "vae_condition.patch_embedding.weight",
            "ref_vae_condition.patch_embedding.weight", "dit.blocks.0.self_attn.q.weight"} <= keys
    assert any(k.endswith("q_proj.lora_A.default.weight") for k in keys)

    dit = load_dit(path, dtype=torch.float32)
    for k, v in dit.state_dict().items():
        assert torch.equal(v, module.dit.state_dict()[k]), k
    enc = load_mllm_encoder(path, base=models["mllm"], dtype=torch.float32)
    assert torch.equal(enc.ref_queries, module.mllm.ref_queries.detach())
    assert enc.source_info["lora_layers"] == 8            # 2 layers × q/k/v/o, merged

    # the next stage starts from it
    nxt = preset_cfg(tiny, "kiwi-stage3", "next", schedule={"max_steps": 1}, optimizer={"lr": 1e-12},
                     checkpoint={"init_from": str(path)})
    method, start = fresh(nxt)
    assert torch.equal(start.mllm.image_queries, module.mllm.image_queries.detach())
    assert torch.equal(start.dit.ref_embedder.patch_embedding.weight, module.dit.ref_embedder.patch_embedding.weight)


def test_kiwi_resume_is_exact(tiny):
    whole = preset_cfg(tiny, "kiwi-stage2", "whole", schedule={"max_steps": 3}, checkpoint={"every": 1})
    full = train(whole, log=lambda *a: None)["losses"]
    part = preset_cfg(tiny, "kiwi-stage2", "part", schedule={"max_steps": 3}, checkpoint={"every": 1})
    first = train(part, stop_after=2, log=lambda *a: None)["losses"]      # killed after step 2's checkpoint
    rest = train(part, resume="auto", log=lambda *a: None)["losses"]
    assert first + rest == pytest.approx(full, rel=1e-5, abs=1e-7)


def test_bf16_models_keep_trainable_mllm_parts_in_fp32_and_sample(tiny):
    """A bf16 Qwen/DiT (as on a GPU) trains its queries, connector and LoRA in fp32 master weights (a 1e-5
    update would vanish in bf16 rounding); samples are written during training."""
    cfg = preset_cfg(tiny, "kiwi-stage1", "bf16", model={"dtype": "bf16"}, schedule={"max_steps": 2},
                     sampling={"every": 2, "count": 1, "steps": 2})
    result = train(cfg, log=lambda *a: None)
    module = result["module"]
    assert module.mllm.image_queries.dtype == torch.float32 and module.mllm.connector[0].weight.dtype == torch.float32
    lora = [p for n, p in module.mllm.named_parameters() if ".lora_A." in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert module.mllm.model.model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert all(math.isfinite(x) for x in result["losses"])
    assert (cfg.output_dir / "samples" / "step-00000002-item0.png").is_file()


def test_loss_weighting_option_sets_the_draws_weight():
    from types import SimpleNamespace

    from comfy_kiwi.errors import InputError
    from comfy_kiwi.training_lib.kiwi_numerics import weight_for_timestep
    from trainer.methods.kiwi import KiwiMethod
    with pytest.raises(InputError, match="loss_weighting is 'snr'"):
        KiwiMethod.parse_options({"loss_weighting": "snr"})
    method = KiwiMethod.__new__(KiwiMethod)
    method.cfg = SimpleNamespace(schedule=SimpleNamespace(timestep_shift=5.0))
    for weighting in ("kiwi", "uniform"):
        method.options = KiwiMethod.parse_options({"loss_weighting": weighting})
        draws = method.draws({"target": torch.zeros(6, 48, 1, 2, 2)}, torch.Generator().manual_seed(0))
        expected = weight_for_timestep(draws["t"], 5.0) if weighting == "kiwi" else torch.ones(6)
        assert torch.equal(draws["weight"], expected), weighting
    assert KiwiMethod.parse_options({}).loss_weighting == "kiwi"          # the release's weighting by default


def test_edit_region_weight_option_weighs_the_changed_cells():
    from comfy_kiwi.errors import InputError
    from trainer.methods.kiwi import KiwiMethod
    from trainer.methods.kiwi_module import KiwiModule
    assert KiwiMethod.parse_options({}).edit_region_weight == 0.0        # the papers' plain mean by default
    with pytest.raises(InputError, match="edit_region_weight must be ≥ 0"):
        KiwiMethod.parse_options({"edit_region_weight": -1.0})

    class Zero(torch.nn.Module):                          # predicts 0: the loss is the weighted mean of target²
        dtype = torch.float32

        def forward(self, x, *a, **k):
            return torch.zeros_like(x)

    x0 = torch.zeros(1, 2, 1, 1, 2)
    src = x0.clone()
    src[0, 0, 0, 0, 1] = 1.0                              # the edit changed cell 1
    batch = {"target": x0, "source": src, "context": torch.zeros(1, 1, 4)}
    noise = torch.zeros_like(x0)
    noise[0, :, 0, 0, 1] = 1.0                            # flow target ε − x0: 1 only in the changed cell
    draws = {"t": torch.tensor([500.0]), "sigma": torch.tensor([0.5]), "weight": torch.ones(1), "noise": noise,
             "reference_scale": torch.ones(1)}
    losses = [KiwiModule(Zero(), None, None, None, False, (factor, 0.05, keep))(batch, draws).item()
              for factor, keep in ((0.0, 0.0), (3.0, 0.0), (3.0, 0.4))]
    # 2/4 plain; (2·4) / (2·4 + 2·1) weighted; keep 0.4 with half the cells changed caps the changed weight at
    # 0.6·0.5 / (0.4·0.5) = 1.5: (2·1.5) / (2·1.5 + 2·1)
    assert losses == pytest.approx([0.5, 4 / 5, 3 / 5])
    assert KiwiMethod.parse_options({}).edit_region_keep_share == 0.0
    with pytest.raises(InputError, match="edit_region_keep_share must be in"):
        KiwiMethod.parse_options({"edit_region_keep_share": 1.0})
