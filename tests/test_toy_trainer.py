"""The toy world through the project's trainer: the toy presets read lossless toy data, the toy codec and
the toy release, and ``python -m trainer``'s Kiwi loss is the in-memory toy driver's loss, gradient for
gradient (so the benchmark's fast ablation runs train the same objective as the shipped model's run)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "trainer" / "presets"


def _toy_run_folder(tmp_path: Path, count: int = 2):
    """init/ (a small untrained toy release), data/<name>/metadata.csv and the four toy presets."""
    from comfy_kiwi.toy.data import dataset_examples
    from comfy_kiwi.toy.examples import write_csv_dataset
    from comfy_kiwi.toy.models import ToyModelConfig
    from comfy_kiwi.toy.release import write_toy_release
    from comfy_kiwi.toy.train import ToyTrainConfig, build_models
    small = ToyModelConfig(dit_dim=48, dit_ffn=96, dit_heads=2, dit_layers=1, num_queries=4)
    models = build_models(ToyTrainConfig(model=small, seed=3))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)     # as if partly trained: the adaLN-zero init gives most weights no gradient yet
        for p in models.dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    write_toy_release(tmp_path / "init", models.dit, models.encoder, dit_dtype=torch.float32)
    examples = {}
    for name in ("image", "video", "reference"):
        examples[name] = dataset_examples(name, "train", count)
        write_csv_dataset(tmp_path / "data" / name, examples[name])
    for n in (1, 2, 3, 4):
        shutil.copy(PRESETS / f"toy-kiwi-stage{n}.toml", tmp_path)
    return models, examples


def _without_init_from(path: Path) -> Path:
    text = re.sub(r'(?m)^init_from = .*$', 'init_from = ""', path.read_text())
    out = path.with_name(path.stem + "-fresh.toml")
    out.write_text(text)
    return out


def test_toy_video_files_are_lossless(tmp_path):
    from comfy_kiwi.toy.data import dataset_examples
    from comfy_kiwi.toy.examples import write_csv_dataset
    from trainer.data.datasets import load_pixels, read_records
    ex = dataset_examples("video", "train", 1)[0]
    records = read_records(write_csv_dataset(tmp_path, [ex]), "kiwi")
    pixels = load_pixels(records[0].source, (32, 32), 17)                     # [1, 3, F, H, W] in [-1, 1]
    drawn = torch.from_numpy(ex.source).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert records[0].source.endswith(".mkv")
    assert torch.equal(((pixels[0] + 1) * 127.5).round(), ((drawn + 1) * 127.5).round())


def test_trainer_kiwi_loss_and_gradients_equal_the_toy_driver(tmp_path):
    from comfy_kiwi.toy.data import prepare_samples
    from comfy_kiwi.toy.train import ToyModels, training_loss
    from comfy_kiwi.training_lib import kiwi_numerics as kn
    from trainer.config import load_config
    from trainer.data.cache import CachedDataset, build_cache
    from trainer.data.datasets import read_records
    from trainer.methods import get_method
    models, examples = _toy_run_folder(tmp_path)
    cfg = load_config(_without_init_from(tmp_path / "toy-kiwi-stage3.toml"))
    method = get_method("kiwi")(cfg)
    method.device = torch.device("cpu")
    vae = method.load_models(cfg, "cpu")["vae"]
    assert type(vae).__name__ == "ToyPatchCodec"                             # load_vae read the codec folder
    datasets = {}
    for spec in cfg.dataset_specs():
        cache = build_cache(read_records(spec.dataset, spec.format, spec.base_path), cfg, lambda: vae, None,
                            log=lambda *a: None, method=method, spec=spec)
        datasets[spec.name] = CachedDataset(cache)
    # the MLLM sees the release folder's own frame count (4), not the kiwi-edit preset's 16
    assert datasets["video"][0]["mllm_frames"].shape[-4] == models.encoder.config.max_frames == 4
    module = method.build(method.load_models(cfg, "cpu"))
    toy = ToyModels(models.dit, models.encoder)
    toy.dit.train()
    toy.encoder.train()
    toy.encoder.model.requires_grad_(True)
    for name in ("image", "video", "reference"):
        batch = method.collate([datasets[name][i] for i in range(2)])
        g = torch.Generator().manual_seed(11)
        ids = kn.sample_timestep_ids(2, g)                                   # the toy driver's draw order
        t, sigma = kn.timestep_and_sigma(ids, 5.0)
        weighting = method.options.loss_weighting                            # the toy presets: "uniform"
        draws = {"t": t, "sigma": sigma, "weight": kn.timestep_loss_weight(t, 5.0, weighting),
                 "noise": torch.randn(batch["target"].shape, generator=g), "reference_scale": torch.ones(2)}
        module.zero_grad()
        ours = module(batch, draws)
        ours.backward()
        samples = prepare_samples(examples[name], toy.encoder)
        toy.dit.zero_grad()
        toy.encoder.zero_grad()
        ref_loss = training_loss(toy, samples, torch.Generator().manual_seed(11), 5.0, weighting,
                                 method.options.edit_region_weight,              # the toy presets: 30
                                 method.options.edit_region_keep_share)
        ref_loss.backward()
        torch.testing.assert_close(ours, ref_loss, rtol=1e-5, atol=1e-6)
        pairs = [(module.dit.blocks[0].self_attn.q.weight, toy.dit.blocks[0].self_attn.q.weight),
                 (module.dit.source_embedder.patch_embedding.weight, toy.dit.source_embedder.patch_embedding.weight),
                 (module.mllm.connector[2].weight, toy.encoder.connector[2].weight),
                 (module.mllm.model.model.language_model.layers[0].mlp.up_proj.weight,
                  toy.encoder.model.model.language_model.layers[0].mlp.up_proj.weight),
                 (module.mllm.model.model.visual.blocks[0].mlp.up_proj.weight,
                  toy.encoder.model.model.visual.blocks[0].mlp.up_proj.weight)]
        if name == "reference":
            pairs.append((module.dit.ref_embedder.patch_embedding.weight, toy.dit.ref_embedder.patch_embedding.weight))
        for ours_p, ref_p in pairs:
            assert ref_p.grad is not None and ref_p.grad.abs().sum() > 0
            torch.testing.assert_close(ours_p.grad, ref_p.grad, rtol=1e-4, atol=1e-7)


def test_toy_curriculum_runs_through_the_trainer_and_exports_a_release(tmp_path):
    """The four stages chained by init_from (a few steps each; the settling stage reads stage 3's latent
    cache), exported with ``trainer export --to release``: the release edits through the toy pipeline, and
    the whole language model really trained."""
    from safetensors.torch import load_file

    from comfy_kiwi.toy.release import is_toy_release, load_toy_pipeline
    from trainer.config import load_config
    from trainer.export import export
    from trainer.loop import train
    _toy_run_folder(tmp_path)
    for n in (1, 2, 3, 4):
        cfg = load_config(tmp_path / f"toy-kiwi-stage{n}.toml",
                          {"schedule": {"max_steps": 2, "batch_size": 2}, "logging": {"progress": False, "tensorboard": False}})
        train(cfg, log=lambda *a: None)
        if n == 2:      # stage 2's language model starts from stage 1's trained weights (init_from)
            from trainer.methods import get_method
            stage1 = load_file(str(tmp_path / "runs" / "toy-kiwi-stage1" / "kiwi.safetensors"))
            enc = get_method("kiwi")(cfg).load_mllm("cpu", 48, trainable=True)
            torch.testing.assert_close(enc.model.model.language_model.layers[0].mlp.up_proj.weight,
                                       stage1["mllm.model.model.language_model.layers.0.mlp.up_proj.weight"])
    assert cfg.cache_dir == tmp_path / "runs" / "toy-kiwi-stage3" / "cache"
    assert not (tmp_path / "runs" / "toy-kiwi-stage4" / "cache").exists()
    final = load_file(str(tmp_path / "runs" / "toy-kiwi-stage4" / "kiwi.safetensors"))
    assert any(k.startswith("mllm.model.model.language_model.layers.") for k in final)
    assert any(k.startswith("mllm.model.model.visual.") for k in final)
    assert "ref_vae_condition.patch_embedding.weight" in final
    init = load_file(str(tmp_path / "init" / "mllm_encoder" / "model.safetensors"))
    key = next(k for k in init if "layers.0.mlp.up_proj" in k and "visual" not in k)
    trained = final["mllm.model.model.language_model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(trained, init[key])                            # stage weights moved off the init
    out = export(cfg, "release", tmp_path / "release")
    assert is_toy_release(out)
    pipe = load_toy_pipeline(out)
    torch.testing.assert_close(pipe.mllm.model.model.language_model.layers[0].mlp.up_proj.weight, trained)


def test_mllm_model_group_refuses_a_lora_next_to_it(tmp_path):
    from comfy_kiwi.errors import InputError
    from trainer.config import load_config
    _toy_run_folder(tmp_path, count=1)
    with pytest.raises(InputError, match="either the whole language model"):
        load_config(tmp_path / "toy-kiwi-stage1.toml",
                    {"method": {"options": {"trainable": ["mllm_model", "mllm_lora"]}}})


def test_concat_ablation_uses_the_dits_viva_source_mode():
    """The benchmark's channel-concat ablation is WanDiT's own VIVA path (source_mixer), starting as the
    base DiT (P = [I | 0]) and reading the source once the projector's right half moves."""
    from comfy_kiwi.toy.models import ToyModelConfig
    from comfy_kiwi.toy.source_modes import dit_velocity
    from comfy_kiwi.toy.train import ToyTrainConfig, build_models
    small = ToyModelConfig(dit_dim=48, dit_ffn=96, dit_heads=2, dit_layers=1, num_queries=4)
    dit = build_models(ToyTrainConfig(model=small, source_mode="concat", embedder_init="zero")).dit
    assert dit.source_mode == "concat" and dit.source_mixer is not None
    with torch.no_grad():
        dit.head.head.weight.normal_(0, 0.1)
        g = torch.Generator().manual_seed(0)
        x, src = torch.randn(1, 48, 2, 8, 8, generator=g), torch.randn(1, 48, 2, 8, 8, generator=g)
        ctx, t, sigma = torch.randn(1, 4, 48, generator=g), torch.tensor([500.0]), torch.tensor([0.5])
        base = dit_velocity(dit, x, t, sigma, ctx, None, None, "none")
        torch.testing.assert_close(dit_velocity(dit, x, t, sigma, ctx, src, None, "concat"), base)
        dit.source_mixer.projector.weight[:, 48:].normal_(0, 0.1)
        moved = dit_velocity(dit, x, t, sigma, ctx, src, None, "concat")
        assert (moved - base).abs().max() > 1e-3
    live = build_models(ToyTrainConfig(model=small, source_mode="concat")).dit     # the benchmark's random init
    assert live.source_mixer.projector.weight[:, 48:].abs().sum() > 0


def test_decay_share_tail_of_the_trainer_lr_schedule():
    """``schedule.decay_share``: constant (after the Kiwi warm-up) until the last share of max_steps, then a
    straight fall to 5 %; 0 leaves the schedule untouched; values outside [0, 1) are refused."""
    from comfy_kiwi.errors import InputError
    from trainer.config import ScheduleConfig, TrainConfig, validate
    from trainer.loop import lr_lambda
    f = lr_lambda(ScheduleConfig(max_steps=100, lr_schedule="kiwi_constant", decay_share=0.4))
    assert f(0) == pytest.approx(1 / 3) and f(10) == 1.0 and f(59) == 1.0
    assert f(60) == 1.0 and f(80) == pytest.approx(1 - 0.95 * 0.5) and f(99) == pytest.approx(1 - 0.95 * 39 / 40)
    flat = lr_lambda(ScheduleConfig(max_steps=100, lr_schedule="kiwi_constant"))
    assert [flat(s) for s in (0, 50, 99)] == [pytest.approx(1 / 3), 1.0, 1.0]
    cfg = TrainConfig()
    cfg.schedule.decay_share = 1.0
    with pytest.raises(InputError, match="decay_share"):
        validate(cfg, check_files=False)


def test_toy_driver_defaults_are_the_toy_presets():
    """The in-memory driver (the ablations) trains the shipped recipe: its data, loss options, learning rate
    and stage lengths are the presets'."""
    import tomllib

    from comfy_kiwi.toy.train import ToyTrainConfig
    from trainer.methods import get_method
    presets = Path(__file__).resolve().parents[1] / "trainer" / "presets"
    driver = ToyTrainConfig()
    stages = driver.stages()
    assert len(stages) == 4 and [s.settle for s in stages] == [False, False, False, True]
    for n, stage in enumerate(stages, 1):
        preset = tomllib.loads((presets / f"toy-kiwi-stage{n}.toml").read_text())
        assert preset["schedule"]["max_steps"] == stage.steps, n
        assert tuple(d["name"] for d in preset["data"]["datasets"]) == stage.datasets, n
        equal = [1] * len(stage.datasets)                 # the trainer's default: round robin
        assert tuple(preset["data"].get("mix_weights", equal)) == (stage.weights or tuple(equal)), n
        if n == 3:                                        # the lr falls over the same last steps
            assert preset["schedule"]["decay_share"] * stage.steps == pytest.approx(driver.decay * driver.steps)
        else:
            assert preset["schedule"].get("decay_share", 0) == 0, n
        options = get_method("kiwi").parse_options(preset["method"]["options"])
        assert ((options.loss_weighting, options.edit_region_weight, options.edit_region_keep_share)
                == (driver.loss_weighting, driver.edit_region_weight, stage.keep_share)), n
        final = 1 - 0.95 * (driver.decay > 0)             # settling: the curriculum's final lr (5 % of it)
        assert preset["optimizer"]["lr"] == pytest.approx(driver.lr * (final if stage.settle else 1)), n


def test_toy_driver_settles_at_the_final_lr_with_the_cap(monkeypatch):
    """After the curriculum (lr falling to 5 % over its last 30 %), the settling stage trains stage 3's data
    at that final lr with the edit-region cap; the curriculum's stages train without the cap."""
    import comfy_kiwi.toy.train as toy_train
    from comfy_kiwi.toy.models import ToyModelConfig
    from comfy_kiwi.training_lib.kiwi_numerics import constant_lr_warmup, linear_tail
    small = ToyModelConfig(dit_dim=48, dit_ffn=96, dit_heads=2, dit_layers=1, num_queries=4)
    cfg = toy_train.ToyTrainConfig(steps=20, settle_share=0.2, settle_keep_share=0.3, decay=0.3, model=small,
                                   pool=2, batch=1, threads=1)
    calls, lrs = [], []

    def loss(models, samples, g, shift, weighting, edit_region, keep_share):
        calls.append(keep_share)
        return models.dit.head.head.weight.sum() * 0.0

    monkeypatch.setattr(toy_train, "training_loss", loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda opt, *a, **k: lrs.append(opt.param_groups[0]["lr"]))
    toy_train.train(cfg, log=lambda *a: None)
    expected = [cfg.lr * constant_lr_warmup(i) * linear_tail(i, 20, 0.3) for i in range(20)] + [cfg.lr * 0.05] * 4
    assert lrs == pytest.approx(expected)
    # micro-batches per step: 1 (stage 1, 3 steps), 2 (stage 2, 7), 3 (stage 3, 10), 3 (settling, 4)
    assert calls == [0.0] * (3 + 14 + 30) + [0.3] * 12
