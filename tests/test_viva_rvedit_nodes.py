"""VIVA and RVEDiT nodes run as ComfyUI loads the pack, on tiny models in their own models folder: loader → encode
→ sampler, equal to the library call, the shared DiT unchanged afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import comfy_harness as H
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.testing.tiny_release import tiny_kiwi_dit, tiny_video_frames, write_tiny_models_dir

from test_imvideoedit_nodes import ROOT, run

RELEASE = "kiwi-edit-5b-instruct-reference-diffusers"
OURS = ("KiwiVIVALoader", "KiwiVIVAEncode", "KiwiVIVASampler", "KiwiRVEDiTLoader", "KiwiRVEDiTSampler")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from comfy_kiwi.methods import viva
    from comfy_kiwi.methods.rvedit_streams import RVEDiTStreams
    from comfy_kiwi.testing.tiny_qwen import TINY_HIDDEN
    from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
    models = write_tiny_models_dir(tmp_path_factory.mktemp("viva_nodes") / "models").models_dir
    (models / "loras").mkdir(exist_ok=True)
    dit = tiny_kiwi_dit(seed=1)
    refiner = viva.attach_viva(dit, TINY_HIDDEN)
    with torch.no_grad():                       # trained-looking weights: the gates are no longer zero
        for p in [*refiner.parameters(), *dit.source_mixer.parameters()]:
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    dit.ref_embedder = None                       # the tiny Kiwi DiT's own: VIVA weights without reference tokens
    viva.save_viva(models / "loras" / "viva_tiny.safetensors", dit, refiner)
    dit.attach_condition_embedders(source=False, reference=True)          # VIVA weights trained with references
    with torch.no_grad():
        for p in dit.ref_embedder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    viva.save_viva(models / "loras" / "viva_ref_tiny.safetensors", dit, refiner)
    # an Edit-GRPO LoRA as the trainer writes it (ComfyUI keys, VIVA's self/cross-attention targets)
    from safetensors.torch import save_file
    from comfy_kiwi.methods.flow_grpo import LORA_TARGETS
    from comfy_kiwi.training_lib.dit_lora_train import DiTLoraAdapter
    adapter = DiTLoraAdapter(dit, 4, 8.0, LORA_TARGETS)
    with torch.no_grad():
        for pair in adapter.pairs:
            pair.lora_B.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    save_file(adapter.comfyui_state_dict(), str(models / "loras" / "edit_grpo_tiny.safetensors"))
    adapter.detach()
    write_tiny_umt5(models / "text_encoders" / "umt5-tiny", d_model=32)
    previous = comfy_adapter._models_dir
    comfy_adapter.set_models_dir(models)
    try:
        classes = H.load_pack(ROOT).NODE_CLASS_MAPPINGS
        dit_h, vae, mllm = run(classes, "KiwiReleaseLoader", RELEASE, "fp32", "cpu", "sdpa")
        _write_trained_rvedit(models / "loras" / "rvedit_tiny.safetensors", dit, mllm)
        frames = tiny_video_frames(5, 64, 64)
        (src,) = run(classes, "KiwiEncodeSource", vae, frames, "model default", False)
        yield {"classes": classes, "dit": dit_h, "mllm": mllm, "frames": frames, "source": src, "vae": vae}
    finally:
        comfy_adapter.set_models_dir(previous)


def _write_trained_rvedit(path, dit, mllm):
    """rvedit.safetensors as the trainer writes it: the X_v embedder + L_s and a trained-looking MLLM connector + LoRA."""
    import copy

    from safetensors.torch import save_file
    from comfy_kiwi.methods.rvedit_streams import RVEDiTStreams
    from comfy_kiwi.mllm.lora import add_lora
    from trainer.methods.rvedit import mllm_parts
    trained = add_lora(copy.deepcopy(mllm), rank=4, alpha=4)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if name.startswith("connector.") or ".lora_B." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    streams = RVEDiTStreams.for_dit(dit)
    save_file({**streams.prefixed_state_dict(), **{k: v.contiguous() for k, v in mllm_parts(trained).items()}},
              str(path), metadata={**streams.metadata(), "mllm_lora_alpha": "4"})


def test_nodes_are_well_formed_and_registered(env):
    c = env["classes"]
    for name in OURS:
        cls = c[name]
        assert cls.CATEGORY.startswith("Kiwi Edit/") and cls.DESCRIPTION.strip()
        specs = {k: v for sec in cls.INPUT_TYPES().values() for k, v in sec.items()}
        assert all(spec[1]["tooltip"].strip() for spec in specs.values()), name
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert c["KiwiVIVASampler"].INPUT_TYPES()["required"]["cfg"][1]["default"] == 2.0      # VIVA's preset


def test_viva_nodes_edit_like_the_library_and_leave_the_dit_alone(env):
    from comfy_kiwi.methods import viva
    from comfy_kiwi.pipeline import sample_edit
    c, dit = env["classes"], env["dit"]
    (weights,) = run(c, "KiwiVIVALoader", "viva_tiny.safetensors", dit)
    (cond,) = run(c, "KiwiVIVAEncode", env["mllm"], weights, env["frames"], "Make the square red.", True)
    assert cond.step_context.refiner is weights.refiner and cond.negative is not None
    (lat,) = run(c, "KiwiVIVASampler", dit, weights, cond, env["source"], 0, 2, 5.0, 2.0)
    assert lat.shape == env["source"].source_latents.shape and torch.isfinite(lat).all()
    assert dit.model.source_mixer is None and dit.model.source_mode == "add_sigma"     # restored
    with viva.applied(dit.model, weights):
        ref = sample_edit(dit.model, cond, env["source"], viva.viva_settings(steps=2, progress=False))
    assert torch.allclose(lat, ref.float())
    with pytest.raises(Exception, match="not a VIVA encoding"):
        run(c, "KiwiVIVASampler", dit, weights, type(cond)(cond.context), env["source"], 0, 2, 5.0, 1.0)


def test_viva_reference_latents_join_the_noisy_tokens_through_the_nodes(env):
    """Weights with a reference embedder: the reference given to Kiwi Encode Source reaches the DiT as tokens (as in
    training), the result equals the library call and differs from the run without it; weights without one refuse."""
    from comfy_kiwi.methods import viva
    from comfy_kiwi.pipeline import sample_edit
    c, dit = env["classes"], env["dit"]
    ref_image = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(2))
    (weights,) = run(c, "KiwiVIVALoader", "viva_ref_tiny.safetensors", dit)
    assert weights.ref_embedder is not None
    (cond,) = run(c, "KiwiVIVAEncode", env["mllm"], weights, env["frames"], "Put this hat on it.", True, ref_image)
    (src,) = run(c, "KiwiEncodeSource", env["vae"], env["frames"], "model default", False, ref_image)
    assert src.reference_latents is not None
    (lat,) = run(c, "KiwiVIVASampler", dit, weights, cond, src, 0, 2, 5.0, 2.0)
    (without,) = run(c, "KiwiVIVASampler", dit, weights, cond, env["source"], 0, 2, 5.0, 2.0)
    assert not torch.allclose(lat, without, atol=1e-5)
    assert dit.model.ref_embedder is not weights.ref_embedder                 # restored after the run
    with viva.applied(dit.model, weights):
        ref = sample_edit(dit.model, cond, src, viva.viva_settings(steps=2, progress=False))
    assert torch.allclose(lat, ref.float())
    (plain,) = run(c, "KiwiVIVALoader", "viva_tiny.safetensors", dit)
    (cond2,) = run(c, "KiwiVIVAEncode", env["mllm"], plain, env["frames"], "Put this hat on it.", True, ref_image)
    with pytest.raises(Exception, match="no reference embedder"):
        run(c, "KiwiVIVASampler", dit, plain, cond2, src, 0, 2, 5.0, 2.0)


def test_rvedit_nodes_route_and_match_the_library(env):
    """The node chain feeds the trainer's streams: X_e from the MLLM with the run's connector + LoRA, X_ℓ from the
    instruction's umT5 rows; the result equals the library call."""
    from comfy_kiwi.methods.rvedit import CrossAttentionTap
    from comfy_kiwi.methods.rvedit_streams import routed_conditioning, trained_mllm
    from comfy_kiwi.pipeline import EditSettings, sample_edit
    c, dit = env["classes"], env["dit"]
    instruction = "Make the square red."
    streams, mllm = run(c, "KiwiRVEDiTLoader", "rvedit_tiny.safetensors", dit, -1, env["mllm"])
    assert streams.split == len(dit.model.blocks) // 2
    assert mllm is not env["mllm"]                            # the release's MLLM is not changed
    (cond,) = run(c, "KiwiMLLMEncode", mllm, env["frames"], instruction, False)
    (plain,) = run(c, "KiwiMLLMEncode", env["mllm"], env["frames"], instruction, False)
    assert not torch.allclose(cond.context, plain.context, atol=1e-4)      # the trained connector + LoRA act
    path = Path(comfy_adapter._models_dir) / "loras" / "rvedit_tiny.safetensors"
    want = trained_mllm(env["mllm"], path).encode(instruction, env["frames"])
    assert torch.allclose(cond.context, want, atol=1e-5)
    (umt5,) = run(c, "KiwiUMT5Loader", "umt5-tiny", "fp32", "cpu")
    (x_l,) = run(c, "KiwiUMT5Encode", umt5, instruction, 16)
    n = len(dit.model.blocks)
    with CrossAttentionTap(dit.model, range(n), capture="input") as tap:
        (lat,) = run(c, "KiwiRVEDiTSampler", dit, streams, cond, env["source"], 0, 2, 5.0, 1.0, x_l)
    assert torch.isfinite(lat).all()
    for i in range(n):                           # shallow blocks: X_e only; deep blocks: X_e + X_v + X_ℓ
        length = tap.inputs[i][1].shape[1]
        assert (length == cond.context.shape[1]) == (i < streams.split), (i, length)
    assert len(dit.model.blocks[0]._forward_pre_hooks) == 0        # routing hooks removed after the run
    lib = sample_edit(dit.model, routed_conditioning(dit.model, streams, cond, env["source"].source_latents,
                                                     x_l.context), env["source"], EditSettings(steps=2, progress=False))
    assert torch.allclose(lat, lib.float(), atol=1e-5)


def test_edit_grpo_lora_samples_through_the_lora_loader_and_the_viva_sampler(env):
    c, dit = env["classes"], env["dit"]
    (weights,) = run(c, "KiwiVIVALoader", "viva_tiny.safetensors", dit)
    (cond,) = run(c, "KiwiVIVAEncode", env["mllm"], weights, env["frames"], "Make the square red.", True)
    (plain,) = run(c, "KiwiVIVASampler", dit, weights, cond, env["source"], 0, 2, 5.0, 2.0)
    (with_lora,) = run(c, "KiwiLoraLoader", dit, "edit_grpo_tiny.safetensors", 1.0)
    (tuned,) = run(c, "KiwiVIVASampler", with_lora, weights, cond, env["source"], 0, 2, 5.0, 2.0)
    assert torch.isfinite(tuned).all() and not torch.allclose(plain, tuned)
    (again,) = run(c, "KiwiVIVASampler", dit, weights, cond, env["source"], 0, 2, 5.0, 2.0)
    assert torch.equal(plain, again)                       # the LoRA was removed after its run
