"""MLLM LoRA: peft injection into the language model only, fp32 merge, checkpoint-key merge."""

import pytest
import torch

from comfy_kiwi.mllm.loader import load_mllm_encoder
from comfy_kiwi.mllm.lora import add_lora, lora_state_dict, merge_lora, merge_lora_tensors
from comfy_kiwi.testing.tiny_qwen import tiny_kiwi_files

pytest.importorskip("peft")


def frames(n, seed=0):
    return torch.rand(n, 48, 64, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def enc():
    return load_mllm_encoder(tiny_kiwi_files().release)


def randomise_lora(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_zero_lora_is_base_and_only_language_model_is_wrapped(enc):
    src = frames(3)
    before = enc.encode("make it red", src)
    vision_before = {k: v.clone() for k, v in enc.model.model.visual.state_dict().items()}
    add_lora(enc, rank=8)
    after = enc.encode("make it red", src)
    torch.testing.assert_close(after, before, rtol=0, atol=0)            # B = 0 at init
    names = list(lora_state_dict(enc))
    assert names and all(n.startswith("model.model.language_model.layers.") for n in names)
    assert {n.split(".")[6] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(names) == 2 * 4 * 2                                       # A,B x 4 projections x 2 layers
    trainable = [n for n, p in enc.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert all(not p.requires_grad for p in enc.model.model.visual.parameters())
    for k, v in enc.model.model.visual.state_dict().items():
        assert torch.equal(v, vision_before[k]), k
    # the training checkpoint's key names are the encoder's with "mllm."
    assert names[0].startswith("model.model.language_model.layers.0.self_attn.")
    assert names[0].endswith((".lora_A.default.weight", ".lora_B.default.weight"))


def test_merge_equals_unmerged(enc):
    src, ref = frames(3, seed=1), frames(1, seed=2)
    add_lora(enc, rank=4, alpha=8)                                       # scale 2
    randomise_lora(enc)
    unmerged = enc.encode("make it red", src, ref)
    assert merge_lora(enc) == 8
    assert not lora_state_dict(enc)
    assert type(enc.model.model.language_model.layers[0].self_attn.q_proj) is torch.nn.Linear
    merged = enc.encode("make it red", src, ref)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


def test_training_state_merges_like_peft(enc):
    fresh = load_mllm_encoder(tiny_kiwi_files().release)
    add_lora(enc, rank=4)
    randomise_lora(enc, seed=3)
    state = {k: v.clone() for k, v in lora_state_dict(enc).items()}
    expected = enc.encode("make it red", frames(2))
    assert merge_lora_tensors(fresh, state, source="trained LoRA") == 8
    torch.testing.assert_close(fresh.encode("make it red", frames(2)), expected, rtol=0, atol=1e-5)
    # the vision tower of the merged model is the base one
    base = load_mllm_encoder(tiny_kiwi_files().release)
    for a, b in zip(base.model.model.visual.parameters(), fresh.model.model.visual.parameters()):
        assert torch.equal(a, b)


def test_merge_math_is_fp32_and_scaled():
    enc = load_mllm_encoder(tiny_kiwi_files().release, dtype=torch.bfloat16)
    lin = enc.model.model.language_model.layers[1].self_attn.v_proj
    w0 = lin.weight.detach().float().clone()
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, lin.in_features, generator=g)
    b = torch.randn(lin.out_features, 2, generator=g)
    key = "model.model.language_model.layers.1.self_attn.v_proj"
    merge_lora_tensors(enc, {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, alpha=1.0)
    want = (w0 + 0.5 * (b @ a)).to(torch.bfloat16)
    assert torch.equal(lin.weight, want)
