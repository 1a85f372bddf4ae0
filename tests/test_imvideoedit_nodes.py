"""ImVideoEdit nodes run directly, as ComfyUI loads the pack: DiT → ImVideoEdit Loader → Sampler → VAE Decode,
with the umT5 caption context and the Wan2.1 VAE-encoded source, on tiny models in their own models folder."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import comfy_harness as H
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.methods import imvideoedit as ive
from comfy_kiwi.testing import tiny_dit, tiny_vae
from comfy_kiwi.testing.tiny_release import tiny_dit_lora, tiny_video_frames
from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5

ROOT = Path(__file__).resolve().parents[1]
OURS = ("KiwiImVideoEditLoader", "KiwiUMT5Loader", "KiwiUMT5Encode", "KiwiImVideoEditSampler")
CAPTION = "a green circle on a white background"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models = tmp_path_factory.mktemp("ive_nodes") / "models"
    dit = tiny_dit.tiny_dit("2.1", seed=3)
    tiny_dit.write_original_file(dit, models / "diffusion_models" / "wan21_tiny.safetensors")
    dit22 = tiny_dit.tiny_dit("2.2", seed=3)
    tiny_dit.write_original_file(dit22, models / "diffusion_models" / "wan22_tiny.safetensors")
    tiny_vae.write_original_file(tiny_vae.tiny_vae("2.1", seed=4), models / "vae" / "wan_2.1_tiny.safetensors")
    write_tiny_umt5(models / "text_encoders" / "umt5-tiny", d_model=32)
    (models / "text_encoders" / "not-a-model").mkdir()
    H.randomised_imvideoedit_weights(dit, models / "loras" / "ive_tiny.safetensors")
    save_file(tiny_dit_lora(dit), str(models / "loras" / "dit_lora_tiny.safetensors"))
    previous = comfy_adapter._models_dir
    comfy_adapter.set_models_dir(models)
    try:
        yield {"classes": H.load_pack(ROOT).NODE_CLASS_MAPPINGS, "models": models}
    finally:
        comfy_adapter.set_models_dir(previous)


def run(classes, name, *args):
    cls = classes[name]
    return getattr(cls(), cls.FUNCTION)(*args)


def parts(classes):
    (dit,) = run(classes, "KiwiDiTLoader", "wan21_tiny.safetensors", "fp32", "cpu", "sdpa")
    (vae,) = run(classes, "KiwiVAELoader", "wan_2.1_tiny.safetensors", "fp32", "cpu")
    (umt5,) = run(classes, "KiwiUMT5Loader", "umt5-tiny", "fp32", "cpu")
    return dit, vae, umt5


def test_nodes_are_well_formed(env):
    classes = env["classes"]
    for name in OURS:
        cls = classes[name]
        assert cls.CATEGORY == "Kiwi Edit/ImVideoEdit" and cls.DESCRIPTION.strip()
        specs = {k: v for sec in cls.INPUT_TYPES().values() for k, v in sec.items()}
        assert all(spec[1]["tooltip"].strip() for spec in specs.values()), name
        assert set(specs) <= set(inspect.signature(getattr(cls, cls.FUNCTION)).parameters)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert classes["KiwiUMT5Loader"].INPUT_TYPES()["required"]["encoder_name"][0] == ["umt5-tiny"]
    assert "ive_tiny.safetensors" in classes["KiwiImVideoEditLoader"].INPUT_TYPES()["required"]["weights_name"][0]


def test_edit_through_the_nodes_matches_the_library(env):
    from comfy_kiwi.methods.imvideoedit_pipeline import edit_with_imvideoedit
    from comfy_kiwi.pipeline import EditSettings
    classes = env["classes"]
    dit, vae, umt5 = parts(classes)
    (handle,) = run(classes, "KiwiImVideoEditLoader", "ive_tiny.safetensors", dit)
    (images, count, width, height) = run(classes, "KiwiPrepareFrames", tiny_video_frames(7, 72, 88), 921600, 0, "trim")
    assert (count, width, height) == (5, 64, 64)
    (source,) = run(classes, "KiwiEncodeSource", vae, images, "model default", False)
    (cond,) = run(classes, "KiwiUMT5Encode", umt5, CAPTION, 16)
    assert cond.context.shape == (1, 16, 32)
    (latent,) = run(classes, "KiwiImVideoEditSampler", handle, cond, source, 3, 2, 5.0, "kiwi")
    assert latent.shape == (1, 16, 2, 8, 8)
    assert not dit.model._forward_pre_hooks                    # the shared DiT is unhooked after sampling
    (frames,) = run(classes, "KiwiVAEDecode", vae, latent, False)
    assert frames.shape == (5, 64, 64, 3)

    (again,) = run(classes, "KiwiImVideoEditSampler", handle, cond, source, 3, 2, 5.0, "kiwi")
    assert torch.equal(again, latent)
    (other,) = run(classes, "KiwiImVideoEditSampler", handle, cond, source, 4, 2, 5.0, "kiwi")
    assert not torch.allclose(other, latent)

    result = edit_with_imvideoedit(dit.model, vae, umt5, handle.weights, tiny_video_frames(7, 72, 88), CAPTION,
                                   EditSettings(steps=2, seed=3, progress=False), text_len=16)
    assert torch.allclose(result.latents, latent, atol=1e-5)


def test_dit_loras_apply_to_the_base_model_only(env):
    """LoRAs of the DiT handle go on after the modules attach: the attention copies inside the modules do
    not get LoRA hooks, and nothing stays hooked afterwards."""
    from comfy_kiwi.models.dit_lora import loras_applied
    classes = env["classes"]
    dit, vae, umt5 = parts(classes)
    (with_lora,) = run(classes, "KiwiLoraLoader", dit, "dit_lora_tiny.safetensors", 1.0)
    (cond,) = run(classes, "KiwiUMT5Encode", umt5, CAPTION, 16)
    source = run(classes, "KiwiEncodeSource", vae, tiny_video_frames(5, 64, 64), "model default", False)[0]
    (plain_handle,) = run(classes, "KiwiImVideoEditLoader", "ive_tiny.safetensors", dit)
    (lora_handle,) = run(classes, "KiwiImVideoEditLoader", "ive_tiny.safetensors", with_lora)
    sampler = classes["KiwiImVideoEditSampler"]()
    (plain,) = sampler.sample(plain_handle, cond, source, 3, 2, 5.0, "kiwi")
    (lora,) = sampler.sample(lora_handle, cond, source, 3, 2, 5.0, "kiwi")
    assert not torch.allclose(lora, plain, atol=1e-4)
    with ive.applied(dit.model, lora_handle.weights) as adapter:
        assert not any(m._forward_hooks for m in adapter.modules())
        with loras_applied(dit.model, with_lora.loras):
            expected = ive.sample(dit.model, source.source_latents, cond.context, steps=2, seed=3, progress=False)
    assert torch.allclose(lora, expected, atol=1e-6)
    assert torch.equal(sampler.sample(plain_handle, cond, source, 3, 2, 5.0, "kiwi")[0], plain)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in dit.model.modules())


def test_clear_errors(env, tmp_path):
    from comfy_kiwi.errors import CheckpointError, InputError
    from comfy_kiwi.pipeline import EditConditioning, SourceConditioning
    classes = env["classes"]
    dit, vae, umt5 = parts(classes)
    (handle,) = run(classes, "KiwiImVideoEditLoader", "ive_tiny.safetensors", dit)
    (dit22,) = run(classes, "KiwiDiTLoader", "wan22_tiny.safetensors", "fp32", "cpu", "sdpa")
    with pytest.raises(InputError, match="Wan2.1 T2V DiT"):
        run(classes, "KiwiImVideoEditLoader", "ive_tiny.safetensors", dit22)
    bad = env["models"] / "loras" / "lora_tiny.safetensors"
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(CheckpointError, match="not an ImVideoEdit weights file"):
        run(classes, "KiwiImVideoEditLoader", "lora_tiny.safetensors", dit)
    with pytest.raises(CheckpointError, match="not a umT5 folder"):
        run(classes, "KiwiUMT5Loader", "not-a-model", "fp32", "cpu")
    with pytest.raises(CheckpointError, match="was not found"):
        run(classes, "KiwiUMT5Loader", "gone", "fp32", "cpu")
    with pytest.raises(InputError, match="caption is empty"):
        run(classes, "KiwiUMT5Encode", umt5, "  ", 16)

    (cond,) = run(classes, "KiwiUMT5Encode", umt5, CAPTION, 16)
    src = torch.randn(1, 16, 2, 8, 8)
    sampler = classes["KiwiImVideoEditSampler"]()
    with pytest.raises(InputError, match="reference"):
        sampler.sample(handle, cond, SourceConditioning(src, torch.randn(1, 16, 1, 8, 8)), 0, 1, 5.0, "kiwi")
    with pytest.raises(InputError, match="Wan2.1 VAE"):
        sampler.sample(handle, cond, SourceConditioning(torch.randn(1, 48, 2, 8, 8)), 0, 1, 5.0, "kiwi")
    with pytest.raises(InputError, match="umT5"):
        sampler.sample(handle, EditConditioning(torch.randn(1, 16, 64)), SourceConditioning(src), 0, 1, 5.0, "kiwi")
    assert not dit.model._forward_pre_hooks
