import pytest
import torch

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.models.dit_lora import loras_applied, parse_lora
from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_dit
from comfy_kiwi.training_lib.checkpoint_export import (
    dit_lora_to_comfyui, from_kiwi_training_keys, to_kiwi_training_keys,
)


def _parts():
    dit = tiny_dit("2.1", seed=0, embedders=True).state_dict()
    mllm = {"image_queries": torch.randn(4, 8), "video_queries": torch.randn(6, 8),
            "ref_queries": torch.randn(5, 8)}
    for prefix in ("connector", "ref_connector"):
        for i in (0, 2):
            mllm[f"{prefix}.{i}.weight"] = torch.randn(3, 3)
            mllm[f"{prefix}.{i}.bias"] = torch.randn(3)
    lora = {f"model.model.language_model.layers.{n}.self_attn.{p}_proj.lora_{ab}.default.weight": torch.randn(2, 2)
            for n in (0, 35) for p in "qkvo" for ab in "AB"}
    return {"dit": dit, "mllm": mllm, "mllm_lora": lora}


def test_kiwi_names_and_round_trip():
    parts = _parts()
    flat = to_kiwi_training_keys(parts)
    assert len(flat) == sum(len(p) for p in parts.values())
    assert {"mllm.image_queries.q", "mllm.video_queries.q", "mllm.ref_queries.q",
            "mllm.connetor.0.weight", "mllm.connetor.2.bias", "mllm.ref_connector.2.weight",
            "dit.blocks.0.self_attn.q.weight",
            "mllm.model.model.language_model.layers.35.self_attn.o_proj.lora_B.default.weight"} <= set(flat)
    assert not any(k.startswith("mllm.connector.") for k in flat)      # the release spelling
    assert any(k.startswith("vae_condition.patch_embedding.") for k in flat)
    assert any(k.startswith("ref_vae_condition.patch_embedding.") for k in flat)
    assert not any("embedder" in k for k in flat)
    back = from_kiwi_training_keys(flat)
    for name, part in parts.items():
        assert set(back[name]) == set(part)
        assert all(back[name][k] is part[k] for k in part)
    # the "pipe." prefix is accepted as well
    piped = from_kiwi_training_keys({"pipe." + k: v for k, v in flat.items()})
    assert set(piped["dit"]) == set(parts["dit"])


def test_errors_are_specific():
    with pytest.raises(InputError, match="unknown MLLM tensor"):
        to_kiwi_training_keys({"mllm": {"bogus": torch.zeros(1)}})
    with pytest.raises(InputError, match="unknown parts"):
        to_kiwi_training_keys({"vae": {}})
    with pytest.raises(InputError, match="LoRA key"):
        to_kiwi_training_keys({"mllm_lora": {"model.visual.lora_A.default.weight": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="unexpected"):
        from_kiwi_training_keys({"text_encoder.x": torch.zeros(1)})


def _run(model):
    inp = random_inputs(model, seed=5)
    with torch.no_grad():
        return model(inp["latents"], inp["timestep"], inp["context"])


def test_comfyui_lora_export_loads_with_same_delta():
    model = tiny_dit("2.1", seed=0)
    g = torch.Generator().manual_seed(3)
    rank, alpha = 4, 2.0
    source = {}
    for n in range(2):
        for mod in ("self_attn.q", "self_attn.v", "ffn.0"):
            w = dict(model.named_modules())[f"blocks.{n}.{mod}"].weight
            source[f"dit.blocks.{n}.{mod}.lora_A.default.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.1
            source[f"dit.blocks.{n}.{mod}.lora_B.default.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.1
    exported = dit_lora_to_comfyui(source, alpha)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in exported
    assert exported["diffusion_model.blocks.1.ffn.0.alpha"].item() == alpha
    lora = parse_lora(exported)
    assert len(lora.layers) == 6 and not lora.unknown_keys
    for name, layer in lora.layers.items():
        a = source[f"dit.{name}.lora_A.default.weight"]
        b = source[f"dit.{name}.lora_B.default.weight"]
        torch.testing.assert_close(layer.delta(), (b @ a) * (alpha / rank))
    # forward with the hooks equals a model with the peft deltas merged by hand
    merged = tiny_dit("2.1", seed=0)
    mods = dict(merged.named_modules())
    with torch.no_grad():
        for name in lora.layers:
            a = source[f"dit.{name}.lora_A.default.weight"]
            b = source[f"dit.{name}.lora_B.default.weight"]
            mods[name].weight += (b @ a) * (alpha / rank)
    with loras_applied(model, [(lora, 1.0)]) as report:
        patched = _run(model)
    assert report.applied == 6 and report.unmatched == []
    torch.testing.assert_close(patched, _run(merged), rtol=1e-4, atol=1e-5)


def test_comfyui_lora_export_errors():
    with pytest.raises(InputError, match="lacks lora_B"):
        dit_lora_to_comfyui({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 3)}, 2.0)
    with pytest.raises(InputError, match="not a DiT LoRA"):
        dit_lora_to_comfyui({"blocks.0.self_attn.q.weight": torch.zeros(2, 3)}, 2.0)
