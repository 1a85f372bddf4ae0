"""RVEDiT through the trainer (tiny Kiwi release + tiny umT5): the paper preset trains exactly the DiT, the X_v
embedder, the MLLM-to-DiT connector and the MLLM LoRA; X_e and the alignment pass's X_e* come from the MLLM;
the sampler's routed path keeps X_v/X_ℓ out of the shallow blocks; outputs load."""

from __future__ import annotations

import pytest
import torch

from trainer.config import load_config
from trainer.loop import train
from trainer_fixtures import one_thread, tiny_preset, write_kiwi_data, write_kiwi_models  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
CAPTION = "a red square on a white background"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
    root = tmp_path_factory.mktemp("rvedit")
    data = write_kiwi_data(root / "data", count=2)
    lines = data["video"].read_text().splitlines()       # a target caption column for the alignment pass
    data["video"].write_text("\n".join([lines[0] + ",target_caption"] +
                                       [ln + f",{CAPTION}" for ln in lines[1:]]) + "\n")
    models = write_kiwi_models(root / "models")
    models["umt5"] = write_tiny_umt5(root / "models" / "umt5", d_model=32)
    return root, models, data


def _cfg(tiny, name, **options):
    root, models, data = tiny
    opts = {"video_pool": [1, 1, 1], "mllm_lora_rank": 4, **options}
    sections = {"model": {"text_encoder": str(models["umt5"])},
                "schedule": {"max_steps": 3}, "optimizer": {"lr": 1e-3}, "method": {"options": opts}}
    return load_config(tiny_preset("rvedit-kiwi-5b", root / name, models, data, **sections))


def rvedit_group(name: str) -> str:
    """The parameter group of an RVEDiTModule parameter name."""
    if name.startswith("streams."):
        return "x_v_embedder"
    if name.startswith("dit."):
        for part in ("text_embedding", "ref_embedder"):
            if name.startswith(f"dit.{part}."):
                return part
        return "dit"
    if ".lora_A." in name or ".lora_B." in name:
        return "mllm_lora"
    if name.startswith("mllm.connector."):
        return "mllm_connector"
    return "mllm_frozen"          # the Qwen weights, vision tower, learnable queries, the reference connector


# RVEDiT §5 / Alg. 1: the DiT (full fine-tune) and the MLLM-to-DiT connector + MLLM LoRA train jointly; X_v's
# embedder is ours (it makes the X_v stream) and trains with them
RVEDIT_TRAINED = {"dit", "x_v_embedder", "mllm_connector", "mllm_lora"}


def test_rvedit_paper_preset_trains_exactly_its_groups_with_mllm_tokens(tiny, monkeypatch):
    from comfy_kiwi.methods.rvedit import CrossAttentionTap
    from comfy_kiwi.methods.rvedit_streams import load_rvedit
    from trainer.methods.rvedit import RVEDiTMethod
    cfg = _cfg(tiny, "align")
    assert cfg.method.options.align_weight == 0.75
    before, build, calls = {}, RVEDiTMethod.build, []

    def recording(self, models):
        module = build(self, models)
        before.update({k: v.detach().clone() for k, v in module.named_parameters()})
        encode = module.mllm.encode_batch

        def spy(texts, frames, *a, **k):       # which text on which frames, and whether gradients are recorded
            calls.append((list(texts), frames.detach().clone(), torch.is_grad_enabled()))
            return encode(texts, frames, *a, **k)
        module.mllm.encode_batch = spy
        return module
    monkeypatch.setattr(RVEDiTMethod, "build", recording)
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
    module = result["module"]
    assert module.streams.split == len(module.dit.blocks) // 2
    changed, unchanged = {}, {}
    for n, p in module.named_parameters():
        (changed if not torch.equal(p.detach(), before[n]) else unchanged).setdefault(rvedit_group(n), []).append(n)
    assert set(changed) == RVEDIT_TRAINED, sorted(changed)
    assert set(unchanged) <= {"text_embedding", "ref_embedder", "mllm_frozen"}, sorted(unchanged)
    # X_e (editing pass, with gradients) = the MLLM on the instruction + source frames; X_e* (reference pass,
    # no gradients) = the MLLM on the target caption + target frames: one of each per step
    from trainer.data.cache import CachedDataset, to_device
    from trainer.methods import get_method
    method = get_method("rvedit")(cfg)
    ds = CachedDataset(sorted(cfg.cache_dir.glob("latents-*.safetensors"))[-1])
    items = [ds[i] for i in range(len(ds))]
    targets = [it["mllm_target_frames"][0].float() / 255 for it in items]
    sources = [it["mllm_frames"][0].float() / 255 for it in items]
    ref_calls = [c for c in calls if c[0] == [CAPTION]]
    edit_calls = [c for c in calls if c[0] != [CAPTION]]
    assert len(ref_calls) == len(edit_calls) == 3
    assert all(not grad and any(torch.equal(f, t) for t in targets) for _, f, grad in ref_calls)
    assert all(grad and texts[0].startswith("Turn the") and any(torch.equal(f, s) for s in sources)
               for texts, f, grad in edit_calls)
    out = cfg.output_dir / "rvedit.safetensors"
    streams = load_rvedit(out, module.dit)
    for k, v in streams.state_dict().items():
        assert torch.equal(v, module.streams.state_dict()[k])
    from comfy_kiwi.loading.dit_loader import load_dit          # the fine-tuned Kiwi DiT loads as trained
    tuned = load_dit(cfg.output_dir / "rvedit-dit.safetensors", dtype=torch.float32)
    assert all(torch.equal(v, module.dit.state_dict()[k]) for k, v in tuned.state_dict().items())
    # the trained connector + LoRA travel in rvedit.safetensors: applied to the MLLM the run started from, it
    # gives the editing tokens the trained module gives
    from comfy_kiwi.methods.rvedit_streams import trained_mllm
    base = method._mllm()
    batch = to_device(method.collate([items[0]]), "cpu")
    frames = batch["mllm_frames"][0].float() / 255
    with torch.no_grad():
        start = base.encode_batch(batch["prompt"], frames)
        mllm = trained_mllm(base, out)
        want = module.editing_tokens(batch)
        got = mllm.encode_batch(batch["prompt"], frames)
    assert mllm is not base and torch.equal(base.encode_batch(batch["prompt"], frames), start)
    assert not torch.allclose(start, want, atol=1e-4) and torch.allclose(got, want, atol=1e-4, rtol=1e-4)

    # inference through the library sampler's routed path: shallow blocks see X_e only
    n = len(module.dit.blocks)
    with CrossAttentionTap(module.dit, range(n), capture="input") as tap:
        lat = method.sample(module, batch, steps=2, shift=5.0, seed=0)
    assert lat.shape == batch["target"][:1].shape and torch.isfinite(lat).all()
    x_e_len = module.editing_tokens(batch).shape[1]
    for i in range(n):
        ctx = tap.inputs[i][1]
        if i < module.streams.split:
            assert ctx.shape[1] == x_e_len
        else:
            assert ctx.shape[1] > x_e_len


def test_rvedit_alignment_without_a_target_caption_is_refused(tiny, tmp_path):
    from comfy_kiwi.errors import InputError
    from trainer.methods import get_method
    root, models, data = tiny
    plain = write_kiwi_data(tmp_path / "data", count=1)
    cfg = load_config(tiny_preset("rvedit-kiwi-5b", tmp_path / "run", models, plain,
                                  model={"text_encoder": str(models["umt5"])}))
    with pytest.raises(InputError, match="target_caption"):
        get_method("rvedit")(cfg)


def test_rvedit_without_alignment_is_plain_flow_matching(tiny):
    cfg = _cfg(tiny, "plain", align_weight=0.0, dit_training="lora", lora_rank=4, lora_alpha=4.0)
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == 3
    assert (cfg.output_dir / "rvedit-dit-lora.safetensors").is_file()
    assert not any(p.requires_grad for n, p in result["module"].dit.named_parameters() if ".lora_" not in n)
