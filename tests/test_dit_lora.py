"""DiT LoRA: key formats, the delta B@A·strength·alpha/rank, exact removal, unmatched keys reported."""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.errors import CheckpointError
from comfy_kiwi.loading.dit_keys import original_to_diffusers_key
from comfy_kiwi.models.dit_lora import DiTHandle, load_dit_lora, loras_applied, parse_lora
from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_dit
from comfy_kiwi.testing.tiny_release import tiny_dit_lora


@pytest.fixture(scope="module")
def model():
    return tiny_dit("2.1", seed=0)


def _run(model):
    inp = random_inputs(model, seed=5)
    with torch.no_grad():
        return model(inp["latents"], inp["timestep"], inp["context"])


def _merged_copy(model, lora, strength):
    merged = tiny_dit("2.1", seed=0)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name, layer in lora.layers.items():
            modules[name].weight += layer.delta(strength).to(modules[name].weight.dtype)
    return merged


def test_hook_equals_merged_weights_and_is_removed_exactly(model):
    lora = parse_lora(tiny_dit_lora(model, rank=4))
    assert len(lora.layers) == 2 * 2 * 4 and all(l.scale == 0.5 for l in lora.layers.values())  # alpha 2, rank 4
    before = _run(model)
    with loras_applied(model, [(lora, 0.7)]) as report:
        patched = _run(model)
    assert report.applied == len(lora.layers) and report.unmatched == []
    torch.testing.assert_close(patched, _run(_merged_copy(model, lora, 0.7)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(patched, before)
    assert torch.equal(_run(model), before)          # hooks gone, weights never touched


def _renamed(state, module_fn, suffix_fn=lambda s: s):
    """Rename the module part of every LoRA key (keys are '<module><suffix>')."""
    out = {}
    for key, value in state.items():
        module, suffix = (key[:-len(".alpha")], ".alpha") if key.endswith(".alpha") else \
            (key.rsplit(".lora_", 1)[0], ".lora_" + key.rsplit(".lora_", 1)[1])
        out[module_fn(module.removeprefix("diffusion_model.")) + suffix_fn(suffix)] = value
    return out


def test_key_variants_give_the_same_layers(model):
    comfy = tiny_dit_lora(model)
    variants = {
        "no prefix": _renamed(comfy, lambda m: m),
        "ComfyUI checkpoint prefix": _renamed(comfy, lambda m: "model.diffusion_model." + m),
        "down/up": _renamed(comfy, lambda m: "diffusion_model." + m,
                            lambda s: s.replace("lora_A", "lora_down").replace("lora_B", "lora_up")),
        "diffusers": _renamed(comfy, lambda m: "transformer." + original_to_diffusers_key(m)),
        "peft": _renamed(comfy, lambda m: "base_model.model." + m, lambda s: s.replace(".weight", ".default.weight")),
        "kohya": _renamed(comfy, lambda m: "lora_unet_" + m.replace(".", "_"),
                          lambda s: s.replace("lora_A", "lora_down").replace("lora_B", "lora_up")),
    }
    base = parse_lora(comfy)
    for name, state in variants.items():
        lora = parse_lora(state, source=name)
        pairs, unmatched = lora.match(model)
        assert not unmatched and len(pairs) == len(base.layers), name
        deltas = {m: l.delta() for m, l in base.layers.items()}
        for module, layer in pairs:
            target = next(n for n, m in model.named_modules() if m is module)
            torch.testing.assert_close(layer.delta(), deltas[target]), name


def test_unmatched_and_broken_loras_are_reported(model, tmp_path):
    state = tiny_dit_lora(model)
    state["diffusion_model.blocks.9.self_attn.q.lora_A.weight"] = torch.zeros(4, 64)
    state["diffusion_model.blocks.9.self_attn.q.lora_B.weight"] = torch.zeros(64, 4)
    state["diffusion_model.blocks.0.self_attn.q.lora_A.weight"] = torch.zeros(4, 7)   # wrong width
    pairs, unmatched = parse_lora(state).match(model)
    assert any("blocks.9.self_attn.q (no such layer)" in u for u in unmatched)
    assert any("blocks.0.self_attn.q (LoRA" in u for u in unmatched)
    with loras_applied(model, [(parse_lora(state), 1.0)]) as report:
        assert len(report.unmatched) == 2
    with pytest.raises(CheckpointError, match="only one of A/B"):
        parse_lora({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 64)})
    with pytest.raises(CheckpointError, match="no LoRA layers found"):
        parse_lora({"encoder.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not found"):
        load_dit_lora(tmp_path / "missing.safetensors")


def test_handle_stacks_loras_without_changing_the_model(model):
    lora = parse_lora(tiny_dit_lora(model))
    handle = DiTHandle(model)
    stacked = handle.with_lora(lora, 0.5).with_lora(lora, 0.5)
    assert handle.loras == () and len(stacked.loras) == 2
    with stacked.applied():
        two_halves = _run(model)
    with handle.with_lora(lora, 1.0).applied():
        one = _run(model)
    torch.testing.assert_close(two_halves, one, rtol=1e-4, atol=1e-5)
