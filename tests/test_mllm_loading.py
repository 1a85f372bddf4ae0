"""Loading the MLLM encoder: Kiwi release folders, base Qwen folder + training checkpoint,
named errors for missing parts, saving the extras, describe_mllm."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.mllm.loader import describe_mllm, load_mllm_encoder, save_mllm_encoder_extras
from comfy_kiwi.testing.tiny_qwen import (TINY_DIT_DIM, TINY_LORA_RANK, build_tiny_qwen, tiny_kiwi_files,
                                          tiny_lora_tensors, write_tiny_release, write_tiny_training_checkpoint)


@pytest.fixture(scope="module")
def files():
    return tiny_kiwi_files()


def frames(n, h=48, w=64, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def copy_release(files, tmp_path):
    dst = tmp_path / "release"
    shutil.copytree(files.release, dst)
    return dst


def test_release_folder(files):
    enc = load_mllm_encoder(files.release)
    tiny = build_tiny_qwen()
    ref_state = tiny.model.state_dict()
    for key, value in enc.model.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    assert enc.model.lm_head.weight is enc.model.model.language_model.embed_tokens.weight
    extras = load_file(str(files.release / "mllm_encoder" / "diffusion_pytorch_model.safetensors"))
    ours = enc.extras_state_dict()
    assert set(ours) == set(extras)
    for key in extras:
        assert torch.equal(ours[key], extras[key]), key
    assert enc.config.dit_dim == TINY_DIT_DIM and enc.config.has_reference
    assert enc.config.max_pixels_per_frame == 262144 and enc.config.ref_max_pixels == 28 * 28 * 768
    # placeholder id read from the tokenizer, not hard-coded to 151646
    assert enc.processor.placeholder_id == tiny.token_ids["<|object_ref_start|>"]
    assert enc.source_info["kind"] == "kiwi-release"


def test_mllm_encoder_subfolder_and_dtype(files):
    enc = load_mllm_encoder(files.release / "mllm_encoder", dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in enc.parameters())
    out = enc.encode("make it red", frames(2))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 512, TINY_DIT_DIM)


def test_base_plus_training_checkpoint(files, tmp_path):
    base_only = load_mllm_encoder(files.base)
    enc = load_mllm_encoder(files.checkpoint, base=files.base)
    raw = load_file(str(files.checkpoint))
    assert any(k.startswith("pipe.mllm.connetor.") for k in raw)      # the released typo
    assert torch.equal(enc.image_queries, raw["pipe.mllm.image_queries.q"])
    assert torch.equal(enc.ref_queries, raw["pipe.mllm.ref_queries.q"])
    assert torch.equal(enc.connector[2].weight, raw["pipe.mllm.connetor.2.weight"])
    assert torch.equal(enc.ref_connector[0].bias, raw["pipe.mllm.ref_connector.0.bias"])
    # LoRA merged: W = W0 + (alpha/r) B @ A with alpha = r
    for i in range(2):
        for proj in ("q_proj", "o_proj"):
            key = f"pipe.mllm.model.model.language_model.layers.{i}.self_attn.{proj}"
            w0 = getattr(base_only.model.model.language_model.layers[i].self_attn, proj).weight
            w = getattr(enc.model.model.language_model.layers[i].self_attn, proj).weight
            want = w0 + raw[key + ".lora_B.default.weight"] @ raw[key + ".lora_A.default.weight"]
            torch.testing.assert_close(w, want, rtol=0, atol=1e-6)
    for a, b in zip(base_only.model.model.visual.parameters(), enc.model.model.visual.parameters()):
        assert torch.equal(a, b)                                        # vision tower untouched
    assert enc.source_info["lora_layers"] == 8 and enc.source_info["untrained"] == []
    # without the pipe. prefix, same result
    plain = write_tiny_training_checkpoint(tmp_path / "plain.safetensors", prefix="")
    enc2 = load_mllm_encoder(plain, base=files.base)
    for (k, v), (k2, v2) in zip(enc.state_dict().items(), enc2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_base_only_training_init_is_deterministic(files):
    a = load_mllm_encoder(files.base)
    b = load_mllm_encoder(files.base)
    for (k, v), (k2, v2) in zip(a.extras_state_dict().items(), b.extras_state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert 0.015 < a.video_queries.std() < 0.025                        # randn * 0.02
    assert torch.all(a.connector[2].weight == 0) and torch.all(a.ref_connector[2].bias == 0)
    assert torch.all(a.encode("make it red", frames(3)) == 0)           # zero-initialised last layer


def test_stage2_checkpoint_leaves_ref_branch_untrained(files, tmp_path):
    ckpt = write_tiny_training_checkpoint(tmp_path / "stage2.safetensors", with_reference=False, with_lora=False)
    enc = load_mllm_encoder(ckpt, base=files.base)
    assert set(enc.source_info["untrained"]) == {"ref_queries", "ref_connector.0.weight", "ref_connector.0.bias",
                                                 "ref_connector.2.weight", "ref_connector.2.bias"}
    assert enc.source_info["lora_layers"] == 0


def test_release_missing_parts_named(files, tmp_path):
    rel = copy_release(files, tmp_path)
    shutil.rmtree(rel / "processor")
    with pytest.raises(CheckpointError, match=r"has no processor/ folder \(tokenizer and image processor"):
        load_mllm_encoder(rel)
    rel = copy_release(files, tmp_path / "b")
    (rel / "processor" / "qwen_config.json").unlink()
    with pytest.raises(CheckpointError, match="qwen_config.json"):
        load_mllm_encoder(rel)
    rel = copy_release(files, tmp_path / "c")
    (rel / "mllm_encoder" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="learnable queries and connectors"):
        load_mllm_encoder(rel)
    rel = copy_release(files, tmp_path / "d")
    for f in ("tokenizer.json", "vocab.json"):
        (rel / "processor" / f).unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        load_mllm_encoder(rel)
    rel = copy_release(files, tmp_path / "e")
    (rel / "processor" / "chat_template.jinja").unlink()
    with pytest.raises(CheckpointError, match="no chat template"):
        load_mllm_encoder(rel)
    rel = copy_release(files, tmp_path / "f")
    (rel / "mllm_encoder" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard files missing"):
        load_mllm_encoder(rel)


def test_release_bad_tensors_named(files, tmp_path):
    rel = copy_release(files, tmp_path)
    path = rel / "mllm_encoder" / "diffusion_pytorch_model.safetensors"
    extras = load_file(str(path))
    extras["connector.0.bias"] = torch.zeros(7)
    save_file(extras, str(path))
    with pytest.raises(CheckpointError, match=r"connector\.0\.bias"):
        load_mllm_encoder(rel)
    rel = copy_release(files, tmp_path / "b")
    cfg_path = rel / "mllm_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_video_queries"] = 300
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_video_queries: config 300 vs tensors 512"):
        load_mllm_encoder(rel)
    rel = copy_release(files, tmp_path / "c")
    shard = rel / "mllm_encoder" / "model-00002-of-00002.safetensors"
    weights = load_file(str(shard))
    del weights["model.norm.weight"]
    save_file(weights, str(shard))
    index = rel / "mllm_encoder" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["model.norm.weight"]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): language_model\.norm\.weight"):
        load_mllm_encoder(rel)


def test_checkpoint_errors(files, tmp_path):
    dit_only = tmp_path / "dit.safetensors"
    save_file({"pipe.dit.blocks.0.x": torch.zeros(2)}, str(dit_only))
    with pytest.raises(CheckpointError, match="no MLLM tensors"):
        load_mllm_encoder(dit_only, base=files.base)
    odd = tmp_path / "odd.safetensors"
    save_file({"mllm.image_queries.q": torch.zeros(256, 64), "mllm.strange.weight": torch.zeros(2)}, str(odd))
    with pytest.raises(CheckpointError, match="unexpected MLLM tensor 'mllm.strange.weight'"):
        load_mllm_encoder(odd, base=files.base)
    lora = {k: v for k, v in tiny_lora_tensors().items() if ".layers.0." in k}
    lora = {k.replace(".layers.0.", ".layers.7."): v for k, v in lora.items()}
    far = tmp_path / "far.safetensors"
    save_file(lora, str(far))
    with pytest.raises(CheckpointError, match="layers.7.self_attn"):
        load_mllm_encoder(far, base=files.base)
    half = tmp_path / "half.safetensors"
    save_file({k: v for k, v in tiny_lora_tensors().items() if "lora_A" in k}, str(half))
    with pytest.raises(CheckpointError, match="without both A and B"):
        load_mllm_encoder(half, base=files.base)
    wide = tmp_path / "wide.safetensors"
    save_file({"mllm.image_queries.q": torch.zeros(256, 65)}, str(wide))
    with pytest.raises(CheckpointError, match="width 65"):
        load_mllm_encoder(wide, base=files.base)
    with pytest.raises(InputError, match="base="):
        load_mllm_encoder(files.checkpoint)
    with pytest.raises(CheckpointError, match="neither a Kiwi-Edit release"):
        load_mllm_encoder(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_mllm_encoder(tmp_path / "nothing")


def test_release_without_reference_branch(tmp_path):
    rel = write_tiny_release(tmp_path / "instruct-only", with_reference=False)
    enc = load_mllm_encoder(rel)
    assert not enc.config.has_reference and enc.ref_connector is None
    assert enc.encode("make it red", frames(3)).shape == (1, 512, TINY_DIT_DIM)
    with pytest.raises(InputError, match="no reference branch"):
        enc.encode("make it red", frames(3), frames(1))


def test_save_extras_round_trip(files, tmp_path):
    enc = load_mllm_encoder(files.checkpoint, base=files.base)
    rel = copy_release(files, tmp_path)
    target = save_mllm_encoder_extras(enc, rel / "mllm_encoder")
    assert target.name == "diffusion_pytorch_model.safetensors"
    saved = load_file(str(target))
    assert set(saved) == {"image_queries", "video_queries", "ref_queries", "connector.0.weight", "connector.0.bias",
                          "connector.2.weight", "connector.2.bias", "ref_connector.0.weight", "ref_connector.0.bias",
                          "ref_connector.2.weight", "ref_connector.2.bias"}
    again = load_mllm_encoder(rel)
    for key, value in enc.extras_state_dict().items():
        assert torch.equal(again.extras_state_dict()[key], value), key
    single = save_mllm_encoder_extras(enc, tmp_path / "x" / "extras.safetensors")
    assert set(load_file(str(single))) == set(saved)


def test_describe(files, tmp_path):
    rel = describe_mllm(files.release)
    assert rel["kind"] == "kiwi-release-mllm" and rel["queries"] == {"image": 256, "video": 512, "ref": 768}
    assert rel["dit_dim"] == TINY_DIT_DIM and rel["qwen"]["hidden_size"] == 64
    assert describe_mllm(files.release / "mllm_encoder")["path"] == str(files.release)
    assert describe_mllm(files.base)["kind"] == "qwen2.5-vl"
    ckpt = describe_mllm(files.checkpoint)
    assert ckpt["kind"] == "kiwi-training-checkpoint" and ckpt["lora"] == {"layers": 8, "rank": TINY_LORA_RANK}
    assert describe_mllm(tmp_path) is None
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.w": torch.zeros(1)}, str(other))
    assert describe_mllm(other) is None


def test_bf16_load_keeps_rope_buffers_fp32(files):
    enc = load_mllm_encoder(files.release, dtype=torch.bfloat16)
    buffers = dict(enc.model.named_buffers())
    assert buffers and all(b.dtype == torch.float32 for n, b in buffers.items() if "inv_freq" in n)
    assert enc.connector[0].weight.dtype == torch.bfloat16 and enc.video_queries.dtype == torch.bfloat16
