"""The consumer path: a DiT LoRA trained beside a frozen (bf16/fp8, block-swapped, checkpointed) DiT, exported
under ComfyUI LoraLoader keys, loaded by comfy_kiwi.models.dit_lora (the Kiwi LoRA Loader node's library
path) with the same outputs as the merged model; and the 24 GB estimate."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from comfy_kiwi.models.dit_lora import DiTHandle, load_dit_lora
from comfy_kiwi.testing.tiny_dit import random_inputs
from comfy_kiwi.testing.tiny_release import tiny_kiwi_dit
from comfy_kiwi.training_lib.block_swap_training import TrainingBlockSwap
from comfy_kiwi.training_lib.dit_lora_train import DEFAULT_TARGETS, DiTLoraAdapter
from trainer_fixtures import one_thread  # noqa: F401 (fixture)
from trainer.memory import estimate_kiwi_lora, format_kiwi_lora, lora_params

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_adapter(dit, rank=4, alpha=8.0, seed=0):
    adapter = DiTLoraAdapter(dit, rank=rank, alpha=alpha, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():                       # as if trained: B no longer zero
        for pair in adapter.pairs:
            pair.lora_B.copy_(torch.randn(pair.lora_B.shape, generator=g) * 0.1)
    return adapter


def forward(dit, inputs):
    return dit(inputs["latents"], inputs["timestep"], inputs["context"])


def test_lora_export_loads_with_the_merged_models_outputs(tmp_path):
    dit = tiny_kiwi_dit(seed=2)
    dit.context_embedding = "none"
    inputs = random_inputs(dit, frames=2, height=4, width=4, context_width=dit.config.dim)
    base_out = forward(dit, inputs)
    adapter = trained_adapter(dit)
    hooked = forward(dit, inputs)                                  # training-time forward (hooks)
    adapter.detach()
    assert torch.equal(forward(dit, inputs), base_out)             # detached: the base model is untouched
    assert not torch.allclose(hooked, base_out, atol=1e-4)         # the LoRA matters

    path = tmp_path / "lora.safetensors"
    state = adapter.comfyui_state_dict()
    save_file(state, str(path))
    keys = set(state)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.cross_attn.o.lora_B.weight" in keys
    assert "diffusion_model.blocks.0.ffn.2.alpha" in keys and float(state["diffusion_model.blocks.0.ffn.2.alpha"]) == 8
    assert len(keys) == 3 * len(DEFAULT_TARGETS) * len(dit.blocks)

    lora = load_dit_lora(path)
    handle = DiTHandle(dit).with_lora(lora, 1.0)
    with handle.applied() as report:
        loaded = forward(dit, inputs)
    assert report.applied == len(DEFAULT_TARGETS) * len(dit.blocks) and not report.unmatched
    merged = adapter.merged_into(copy.deepcopy(dit))
    expect = forward(merged, inputs)
    assert torch.allclose(loaded, expect, atol=1e-5, rtol=1e-4)
    assert torch.allclose(hooked, expect, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fp8", [False, True])
def test_training_block_swap_matches_resident_training(fp8):
    """Same loss and LoRA gradients with the last block swapped (gradient checkpointing on)."""
    results = []
    for swap in (0, 1):
        dit = tiny_kiwi_dit(seed=4)
        dit.context_embedding = "none"
        dit.requires_grad_(False)
        if fp8:
            from comfy_kiwi.memory.fp8 import quantize_dit_fp8
            quantize_dit_fp8(dit)
        adapter = trained_adapter(dit, seed=3)
        dit.gradient_checkpointing = True
        dit.train()
        swapper = TrainingBlockSwap(dit, swap, compute_device="cpu").install() if swap else None
        inputs = random_inputs(dit, frames=2, height=4, width=4, context_width=dit.config.dim)
        loss = forward(dit, inputs).float().pow(2).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in adapter.parameters()]))
        if swapper is not None:
            assert swapper.peak_resident_blocks <= len(dit.blocks)
            swapper.remove()
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert any(g.abs().sum() > 0 for g in g0)


def test_block_swap_refuses_a_trainable_dit_or_no_checkpointing():
    from comfy_kiwi.errors import InputError
    dit = tiny_kiwi_dit(seed=1)
    dit.requires_grad_(False)
    with pytest.raises(InputError, match="needs gradient checkpointing"):
        TrainingBlockSwap(dit, 1)
    dit.gradient_checkpointing = True
    dit.blocks[0].ffn[0].weight.requires_grad_(True)
    with pytest.raises(InputError, match="keeps the DiT frozen"):
        TrainingBlockSwap(dit, 1)


def test_lora_parameter_count_matches_the_adapter():
    dit = tiny_kiwi_dit()
    from comfy_kiwi.models.wan_config import PRESETS
    from comfy_kiwi.testing.tiny_release import tiny_kiwi_dit_config
    PRESETS["_test-tiny-kiwi"] = tiny_kiwi_dit_config()
    try:
        n = lora_params("_test-tiny-kiwi", rank=4)
    finally:
        del PRESETS["_test-tiny-kiwi"]
    assert n == sum(p.numel() for p in DiTLoraAdapter(dit, rank=4).parameters())


def test_5b_lora_at_480p_fits_24_gb():
    bf16 = estimate_kiwi_lora("wan2.2-ti2v-5b", 480, 832, 81)
    fp8 = estimate_kiwi_lora("wan2.2-ti2v-5b", 480, 832, 81, storage="fp8")
    swap = estimate_kiwi_lora("wan2.2-ti2v-5b", 480, 832, 81, storage="fp8", block_swap=10)
    print("\n" + "\n\n".join(format_kiwi_lora(e) for e in (bf16, fp8, swap)))
    assert 4.9e9 < bf16.base_params < 5.2e9 and bf16.tokens == 21 * 15 * 26 + 15 * 26
    assert swap.total_gib < fp8.total_gib < bf16.total_gib < 24
    no_ckpt = estimate_kiwi_lora("wan2.2-ti2v-5b", 480, 832, 81, checkpointing=False)
    assert no_ckpt.total_gib > 24                      # checkpointing is what makes 81 frames fit
