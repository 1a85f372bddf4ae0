"""Edit-GRPO: rollouts and policy loss over a velocity function (toy reward rises; KL is zero while the LoRA is
zero) and a short run through the trainer with tiny CLIP / PickScore rewards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfy_kiwi.methods import edit_grpo as eg
from comfy_kiwi.methods import flow_grpo as fg
from trainer_fixtures import one_thread, tiny_preset, write_kiwi_data, write_kiwi_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rollout_log_probs_match_an_independent_gaussian_density():
    cfg = fg.EditGRPOConfig(sampling_steps=3, group_size=2)
    theta = torch.tensor(0.3)
    r = eg.rollout(lambda x, s: x * 0 + theta, torch.randn(2, 1, 1, 2, 2, generator=torch.Generator().manual_seed(0)),
                   cfg, torch.Generator().manual_seed(1))
    for i in range(r.steps):
        x, s, s_next = r.xs[i], float(r.sigmas[i]), float(r.sigmas[i + 1])
        mean, std = fg.step_distribution(x, torch.full_like(x, 0.3), s, s_next, cfg.noise_level)
        dist = torch.distributions.Normal(mean, std.expand_as(mean).clamp_min(1e-30))
        expected = dist.log_prob(r.xs[i + 1]).flatten(1).mean(1) if float(std.max()) > 0 else torch.zeros(2)
        assert torch.allclose(r.log_probs[i], expected, atol=1e-4)


def test_grpo_updates_raise_a_toy_reward_on_average():
    """A one-parameter policy v = θ; reward = mean of the final sample. GRPO updates move θ so the reward rises."""
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([theta], lr=0.5)
    cfg = fg.EditGRPOConfig(sampling_steps=4, group_size=8, timestep_fraction=1.0, kl_beta=0.0, clip_range=0.2)

    def velocity(x, s):
        return torch.zeros_like(x) + theta

    def mean_reward(seed):
        with torch.no_grad():
            r = eg.rollout(velocity, torch.randn(64, 1, 1, 2, 2, generator=torch.Generator().manual_seed(seed)), cfg,
                           torch.Generator().manual_seed(seed + 1))
        return float(r.final.mean())

    before = mean_reward(100)
    g = torch.Generator().manual_seed(5)
    for step in range(15):
        r = eg.rollout(velocity, torch.randn(8, 1, 1, 2, 2, generator=g), cfg, g)
        reward = r.final.flatten(1).mean(1)
        adv = fg.group_advantages(reward, cfg.adv_clip)
        loss = eg.policy_loss(velocity, r, adv, eg.trainable_steps(r, cfg, g), cfg).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_reward(100) > before + 0.1


def test_kl_is_zero_while_the_lora_is_zero_and_positive_after():
    from comfy_kiwi.testing import tiny_dit
    from comfy_kiwi.training_lib.dit_lora_train import DiTLoraAdapter
    dit = tiny_dit.tiny_dit("2.1", seed=2).requires_grad_(False)
    inp = tiny_dit.random_inputs(dit, frames=1, height=4, width=4)
    adapter = DiTLoraAdapter(dit, rank=4, alpha=8.0, targets=fg.LORA_TARGETS)
    cfg = fg.EditGRPOConfig(sampling_steps=2, group_size=2, kl_beta=1.0)

    def velocity(x, s):
        return dit(x, torch.full((x.shape[0],), 1000 * s), inp["context"].expand(x.shape[0], -1, -1))
    noise = torch.randn(2, *inp["latents"].shape[1:], generator=torch.Generator().manual_seed(0))
    r = eg.rollout(velocity, noise, cfg, torch.Generator().manual_seed(1))
    terms = eg.policy_loss(velocity, r, torch.tensor([1.0, -1.0]), [0], cfg, adapter)
    assert float(terms.kl) == 0.0 and abs(float(terms.ratio) - 1.0) < 1e-5
    with torch.no_grad():
        for p in adapter.pairs:
            p.lora_B.normal_(0, 0.1)
    assert float(eg.policy_loss(velocity, r, torch.tensor([1.0, -1.0]), [0], cfg, adapter).kl) > 0
    assert adapter._handles            # hooks are back after the reference pass


EDITED, SOURCE = "a blue car", "a red car on a street"


def _captioned(data: dict, edited=EDITED, source=SOURCE) -> dict:
    """The video CSV with both descriptions (target_caption = edited video, source_caption = source video)."""
    lines = data["video"].read_text().splitlines()
    data["video"].write_text("\n".join([lines[0] + ",target_caption,source_caption"] +
                                       [f"{ln},{edited},{source}" for ln in lines[1:]]) + "\n")
    return data


def _grpo_cfg(tmp_path, data, models, **options):
    from comfy_kiwi.testing.tiny_clip import tiny_clip_files
    from trainer.config import load_config
    clip = tiny_clip_files()
    opts = {"viva_weights": "", "clip_model": str(clip.clip), "pickscore_model": str(clip.pickscore),
            "group_size": 2, "sampling_steps": 2, "lora_rank": 4, "lora_alpha": 8.0, "reward_max_frames": 2, **options}
    return load_config(tiny_preset("edit-grpo-viva-5b", tmp_path / "run", models, data,
                                   schedule={"max_steps": 2}, method={"options": opts})), clip


def test_edit_grpo_without_both_descriptions_stops_with_the_column_names(tmp_path):
    from comfy_kiwi.errors import InputError
    from trainer.methods import get_method
    models = write_kiwi_models(tmp_path / "models")
    data = write_kiwi_data(tmp_path / "data", count=1)
    cfg, _ = _grpo_cfg(tmp_path, data, models)
    with pytest.raises(InputError, match="target_caption.*source_caption"):
        get_method("edit-grpo")(cfg)
    _captioned(data, source="")
    with pytest.raises(InputError, match=r"missing source_caption"):
        get_method("edit-grpo")(cfg)


def _hand_c(clip, frames, text, k):
    """C(V, t) by hand: the mean of k evenly spaced frames' unit CLIP features, normalised, · the unit text feature."""
    idx = torch.linspace(0, frames.shape[0] - 1, k).round().long()
    f = torch.nn.functional.normalize(clip.image_features(frames[idx]).float(), dim=-1).mean(0)
    t = torch.nn.functional.normalize(clip.text_features([text])[0].float(), dim=-1)
    return float(torch.dot(torch.nn.functional.normalize(f, dim=0), t))


def test_edit_grpo_logs_each_reward_and_r_if_is_edited_minus_source(tmp_path, monkeypatch):
    """A tiny run on a CSV with both descriptions: metrics.jsonl holds every reward's group mean per step; the
    logged R_IF is C(V, edited) − C(V, source) recomputed here from the decoded rollouts; each reward model
    reads the texts VIVA gives it; only the LoRA trains and gets gradients."""
    import json

    from comfy_kiwi.judging.clip_models import ClipModel, load_clip
    from comfy_kiwi.loading.dit_loader import load_dit
    from trainer.loop import train
    models = write_kiwi_models(tmp_path / "models")
    data = _captioned(write_kiwi_data(tmp_path / "data", count=1))
    cfg, clip_files = _grpo_cfg(tmp_path, data, models)
    seen = []                                   # (model folder, text) for every text a reward model encodes
    text_features = ClipModel.text_features

    def recording(self, texts):
        seen.extend((Path(self.source).name, t) for t in texts)
        return text_features(self, texts)
    monkeypatch.setattr(ClipModel, "text_features", recording)
    before = {k: v.clone() for k, v in load_dit(models["dit"], dtype=torch.float32).state_dict().items()}
    result = train(cfg, log=lambda *a: None)
    monkeypatch.setattr(ClipModel, "text_features", text_features)
    module = result["module"]
    assert result["step"] == 2 and module.last_rewards.shape == (1, 2)
    # R_IF and R_SP by CLIP with the edited and source descriptions; PickScore on the edited one only
    assert {t for m, t in seen if m == clip_files.clip.name} == {EDITED, SOURCE}
    assert {t for m, t in seen if m == clip_files.pickscore.name} == {EDITED}
    lines = [json.loads(ln) for ln in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2]
    for ln in lines:
        assert {"reward/R_IF", "reward/R_SP", "reward/R_PS", "reward/reward", "kl", "ratio"} <= set(ln)
        assert abs(ln["reward/R_PS"]) <= 1.0        # PickScore on its cosine scale, not ×100
    clip = load_clip(clip_files.clip)
    videos = module.last_videos                 # the last step's group, decoded as the trainer decoded it
    r_if = sum(_hand_c(clip, v, EDITED, 2) - _hand_c(clip, v, SOURCE, 2) for v in videos) / len(videos)
    assert abs(lines[-1]["reward/R_IF"] - r_if) < 1e-5, (lines[-1]["reward/R_IF"], r_if)
    last = lines[-1]
    assert abs(last["reward/reward"] - (last["reward/R_IF"] + last["reward/R_SP"] + last["reward/R_PS"])) < 1e-5
    # no gradients for anything but the LoRA (the frozen channel-concat mixer and refiner included)
    lora = {id(p) for p in module.adapter.parameters()}
    assert module.dit.source_mixer is not None
    assert [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in lora] == []
    for k, v in module.dit.state_dict().items():
        if k in before:
            assert torch.equal(v, before[k]), k               # the base DiT never changes
    assert any(float(p.lora_B.detach().abs().sum()) > 0 for p in module.adapter.pairs)
    assert (cfg.output_dir / "edit-grpo-lora.safetensors").is_file()
    # inference with the trained LoRA through the method's sample hook (the library sampler's VIVA path)
    from trainer.data.cache import CachedDataset, to_device
    from trainer.methods import get_method
    method = get_method("edit-grpo")(cfg)
    cache = sorted(cfg.cache_dir.glob("latents-*.safetensors"))[-1]
    batch = to_device(method.collate([CachedDataset(cache)[0]]), "cpu")
    lat = method.sample(module, batch, steps=2, shift=5.0, seed=0)
    assert lat.shape == batch["target"][:1].shape and torch.isfinite(lat).all()
