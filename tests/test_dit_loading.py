"""Loading Wan DiTs from every supported layout and dtype, the key maps, describe_dit, and clear errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from comfy_kiwi.errors import BackendUnavailableError, CheckpointError, InputError
from comfy_kiwi.loading.dit_keys import (diffusers_to_original, diffusers_to_original_key, original_to_diffusers,
                                         original_to_diffusers_key)
from comfy_kiwi.loading.dit_loader import describe_dit, load_dit
from comfy_kiwi.models.wan_config import PRESETS, infer_dit_config
from comfy_kiwi.models.wan_dit import WanDiT
from comfy_kiwi.testing.tiny_dit import (FP8, dequantized_twin, diffusers_state_dict, diffusers_twin,
                                         fp8_state_dict, original_state_dict, random_inputs, tiny_config, tiny_dit,
                                         write_diffusers_folder, write_kiwi_checkpoint, write_kiwi_release,
                                         write_original_file, write_pickle_file)


# --- key maps -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["2.1", "2.2"])
def test_key_maps_match_diffusers_and_round_trip(kind):
    model = tiny_dit(kind)
    orig = list(original_state_dict(model))
    to_diff = original_to_diffusers(orig)
    assert set(to_diff.values()) == set(diffusers_twin(model).state_dict())      # diffusers' own names
    back = diffusers_to_original(to_diff.values())
    assert [back[to_diff[k]] for k in orig] == orig
    assert len(set(to_diff.values())) == len(orig)


def test_key_map_examples_and_passthrough():
    pairs = {"blocks.3.self_attn.o.weight": "blocks.3.attn1.to_out.0.weight",
             "blocks.0.cross_attn.norm_k.weight": "blocks.0.attn2.norm_k.weight",
             "blocks.12.norm3.bias": "blocks.12.norm2.bias",
             "blocks.1.ffn.0.scale_weight": "blocks.1.ffn.net.0.proj.scale_weight",
             "blocks.1.modulation": "blocks.1.scale_shift_table",
             "head.modulation": "scale_shift_table", "head.head.bias": "proj_out.bias",
             "time_projection.1.weight": "condition_embedder.time_proj.weight",
             "text_embedding.2.weight": "condition_embedder.text_embedder.linear_2.weight"}
    for o, d in pairs.items():
        assert original_to_diffusers_key(o) == d and diffusers_to_original_key(d) == o
    for odd in ("img_emb.proj.0.weight", "blocks.0.cross_attn.k_img.weight", "foo"):
        assert diffusers_to_original_key(original_to_diffusers_key(odd)) == odd


# --- every layout ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return tiny_dit("2.2", seed=21, embedders=True)


@pytest.fixture(scope="module")
def sources(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("dit")
    return {
        "original file": write_original_file(model, d / "wan.safetensors"),
        "original .pt": write_pickle_file(model, d / "wan.pt"),
        "comfyui prefix": write_original_file(model, d / "comfy.safetensors", prefix="model.diffusion_model."),
        "diffusers folder": write_diffusers_folder(model, d / "diffusers"),
        "diffusers sharded": write_diffusers_folder(model, d / "sharded", max_shard_size="1MB"),
        "diffusers file": write_original_file(model, d / "dfile.safetensors", state=diffusers_state_dict(model)),
        "state dict": original_state_dict(model),
        "diffusers state dict": diffusers_state_dict(model),
        "kiwi release (ref last)": write_kiwi_release(model, d / "release_last", reference_first=False),
        "kiwi release (ref first)": write_kiwi_release(model, d / "release_first", reference_first=True),
        "kiwi checkpoint pipe.": write_kiwi_checkpoint(model, d / "ckpt_pipe.safetensors", prefix="pipe."),
        "kiwi checkpoint dit.": write_kiwi_checkpoint(model, d / "ckpt.safetensors"),
    }


EXPECT = {  # format, has embedders, reference_first, context_embedding
    "original file": ("original", False, False, "auto"),
    "original .pt": ("original", False, False, "auto"),
    "comfyui prefix": ("comfyui", False, False, "auto"),
    "diffusers folder": ("diffusers", False, False, "auto"),
    "diffusers sharded": ("diffusers", False, False, "auto"),
    "diffusers file": ("diffusers", False, False, "auto"),
    "state dict": ("original", False, False, "auto"),
    "diffusers state dict": ("diffusers", False, False, "auto"),
    "kiwi release (ref last)": ("kiwi-release", True, False, "none"),
    "kiwi release (ref first)": ("kiwi-release", True, True, "none"),
    "kiwi checkpoint pipe.": ("kiwi-checkpoint", True, False, "none"),
    "kiwi checkpoint dit.": ("kiwi-checkpoint", True, False, "none"),
}


@pytest.mark.parametrize("kind", list(EXPECT))
def test_every_layout_gives_the_same_model(model, sources, kind):
    fmt, embedders, ref_first, ctx_mode = EXPECT[kind]
    dit = load_dit(sources[kind])
    assert dit.config == model.config and not any(p.is_meta for p in dit.parameters())
    assert dit.reference_first is ref_first and dit.context_embedding == ctx_mode
    assert (dit.source_embedder is not None) is embedders and (dit.ref_embedder is not None) is embedders
    sd, ref = dit.state_dict(), model.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in sd)
    inp = random_inputs(model, frames=2, height=4, width=6, context_len=5)
    kw = {}
    if embedders:
        kw = dict(source_latents=torch.randn_like(inp["latents"]), source_scale=0.4,
                  reference_latents=torch.randn(1, 48, 1, 4, 6))
    dit.context_embedding = model.context_embedding = "text"
    with torch.no_grad():
        assert torch.equal(dit(**inp, **kw), model(**inp, **kw, reference_first=ref_first))
    info = describe_dit(sources[kind])
    json.dumps(info)
    assert info["kind"] == "dit" and info["format"] == fmt and info["architecture"] == "tiny-wan2.2"
    assert info["config"] == model.config.to_dict() and info["dtype"] == "float32"
    assert (info["has_source_embedder"], info["has_ref_embedder"], info["reference_first"]) == \
        (embedders, embedders, ref_first)
    assert info["missing_keys"] == 0


def test_kiwi_stage2_release_without_reference_embedder(model, tmp_path):
    root = write_kiwi_release(model, tmp_path / "stage2", with_reference=False)
    dit = load_dit(root)
    assert dit.source_embedder is not None and dit.ref_embedder is None and dit.context_embedding == "none"
    assert describe_dit(root)["has_ref_embedder"] is False


def test_release_transformer_folder_alone_is_plain_diffusers(sources):
    dit = load_dit(sources["kiwi release (ref first)"] / "transformer")
    assert dit.source_embedder is None and dit.context_embedding == "auto"


def test_embedder_folder_is_described_not_loaded(sources):
    folder = sources["kiwi release (ref first)"] / "ref_embedder"
    info = describe_dit(folder)
    assert info == {"kind": "kiwi-embedder", "in_dim": 48, "dim": 256, "patch_size": [1, 2, 2],
                    "ref_pad_first": True, "dtype": "float32"}
    with pytest.raises(CheckpointError, match="one Kiwi-Edit condition embedder .* no full DiT weights"):
        load_dit(folder)


def test_presets_and_config_inference():
    assert PRESETS["wan2.1-t2v-1.3b"].rope_split == (44, 42, 42)
    for name in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-ti2v-5b"):
        with torch.device("meta"):
            sd = WanDiT(PRESETS[name]).state_dict()
        from comfy_kiwi.loading.files import state_dict_from_tensors
        assert infer_dit_config(state_dict_from_tensors(sd)) == PRESETS[name]


def test_custom_width_needs_heads(tmp_path):
    model = tiny_dit(config=tiny_config("2.1", dim=96, num_heads=4))
    with pytest.raises(CheckpointError, match="cannot tell the number of attention heads .* pass num_heads"):
        load_dit(original_state_dict(model))
    assert load_dit(original_state_dict(model), num_heads=4).config == model.config
    # files written by comfy_kiwi carry a "num_heads" metadata entry when the width does not tell
    assert load_dit(write_original_file(model, tmp_path / "custom.safetensors")).config == model.config
    # a diffusers folder names its heads in config.json
    assert load_dit(write_diffusers_folder(model, tmp_path / "d")).config == model.config


# --- dtypes --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_stored_dtype_is_kept_or_cast(tmp_path, dtype):
    model = tiny_dit("2.1", seed=3)
    path = write_original_file(model, tmp_path / "w.safetensors", dtype=dtype)
    dit = load_dit(path)
    assert dit.dtype == dtype and all(p.dtype == dtype for p in dit.parameters())
    assert describe_dit(path)["dtype"] == str(dtype).removeprefix("torch.")
    inp = random_inputs(model, batch=2)
    with torch.no_grad():
        ref = model(**inp)
        out = dit(**inp)
        cast = load_dit(path, dtype=torch.float32)(**inp)
    assert out.dtype == torch.float32
    tol = 0 if dtype == torch.float32 else 0.05 * ref.abs().max().item()
    assert (out - ref).abs().max() <= tol and (cast - ref).abs().max() <= tol


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled-fp8"])
def test_fp8_weights_stay_fp8_and_match_dequantized(tmp_path, scaled):
    model = tiny_dit("2.1", seed=5)
    state = fp8_state_dict(model, scaled=scaled)
    path = write_original_file(model, tmp_path / "fp8.safetensors", prefix="model.diffusion_model.", state=state)
    twin = dequantized_twin(model, state)
    dit = load_dit(path)
    assert dit.blocks[0].self_attn.q.weight.dtype == FP8 and dit.blocks[1].ffn[2].weight.dtype == FP8
    assert dit.blocks[0].norm3.weight.dtype == torch.bfloat16 and dit.head.head.weight.dtype == torch.bfloat16
    assert dit.dtype == torch.bfloat16 and dit.time_embedding[0].weight.dtype == torch.bfloat16
    assert (dit.blocks[0].self_attn.q.scale_weight is not None) is scaled
    inp = random_inputs(model, batch=2)
    with torch.no_grad():
        exact = load_dit(path, dtype=torch.float32)(**inp)      # fp8 values upcast exactly
        ref = twin(**inp)
        fp8 = dit(**inp)
    assert (exact - ref).abs().max() <= 1e-5
    assert (fp8 - ref).abs().max() < 0.05 * ref.abs().max()
    info = describe_dit(path)
    assert info["weight_dtype"] == "float8_e4m3fn" and info["dtype"] == "bfloat16" and info["fp8_scaled"] is scaled


def test_fp8_on_load(tmp_path):
    model = tiny_dit("2.1", seed=5)
    dit = load_dit(original_state_dict(model), dtype=torch.float8_e4m3fn)
    assert dit.blocks[0].cross_attn.v.weight.dtype == FP8 and dit.patch_embedding.weight.dtype == torch.bfloat16
    with pytest.raises(InputError, match="DiT dtype torch.int8 is not supported"):
        load_dit(original_state_dict(model), dtype=torch.int8)


# --- errors --------------------------------------------------------------------------------------------

def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x00" * 7 + b"hello, this is not a model" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors: not a safetensors file"):
        load_dit(junk)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: not a checkpoint. Accepted"):
        load_dit(text)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_dit(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no .safetensors weights"):
        load_dit(tmp_path / "empty")
    assert describe_dit(tmp_path / "empty") is None


def test_unknown_architecture(tmp_path):
    from comfy_kiwi.testing.tiny_vae import tiny_vae, write_original_file as write_vae

    vae = write_vae(tiny_vae("2.1"), tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match=r"vae.safetensors: not a Wan DiT checkpoint; expected a Wan DiT.*"
                                              r"Found keys such as"):
        load_dit(vae)
    assert describe_dit(vae) is None
    other = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match="encoder.layer.0.weight"):
        load_dit(other)


def test_missing_keys_are_listed(model):
    sd = original_state_dict(model)
    del sd["blocks.1.ffn.2.weight"], sd["blocks.0.cross_attn.norm_k.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): .*blocks.0.cross_attn.norm_k.weight.*"
                                              r"blocks.1.ffn.2.weight"):
        load_dit(sd)


def test_misshaped_keys_show_both_shapes(model):
    sd = original_state_dict(model)
    sd["blocks.0.self_attn.k.weight"] = torch.zeros(256, 128)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys \(1\): blocks.0.self_attn.k.weight: "
                                              r"file \[256, 128\] vs model \[256, 256\]"):
        load_dit(sd)


def test_unexpected_keys_and_diffusers_naming(model, tmp_path):
    sd = diffusers_state_dict(model)
    sd["blocks.0.attn2.add_k_proj.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"read as diffusers layout; known key names are shown in the "
                                              r"original.*unexpected keys \(1\): blocks.0.attn2.add_k_proj.weight"):
        load_dit(sd)


def test_image_to_video_variant_is_refused(model):
    sd = original_state_dict(model)
    sd["img_emb.proj.1.weight"] = torch.zeros(4, 4)
    with pytest.raises(CheckpointError, match="image-to-video Wan DiT"):
        load_dit(sd)


def test_checkpoint_without_dit_says_what_it_holds(model, tmp_path):
    path = write_kiwi_checkpoint(None, tmp_path / "stage1.safetensors", prefix="pipe.",
                                 parts=("source", "ref", "mllm"), embedders_from=model)
    with pytest.raises(CheckpointError, match=r"stage1.safetensors: holds a source embedder \(vae_condition.\*\), "
                                              r"a reference embedder .*MLLM parts \(3 tensors.*no full DiT weights"):
        load_dit(path)
    assert describe_dit(path) is None


def test_diffusers_config_must_agree(model, tmp_path):
    folder = write_diffusers_folder(model, tmp_path / "d")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json says num_layers=3 but the weights have 2"):
        load_dit(folder)


def test_two_dits_in_one_file(model, tmp_path):
    sd = original_state_dict(model)
    both = {**{"a." + k: v for k, v in sd.items()}, **{"b." + k: v for k, v in sd.items()}}
    with pytest.raises(CheckpointError, match="holds more than one DiT"):
        load_dit(both)


def test_attention_backend_is_checked_and_set(model):
    sd = original_state_dict(model)
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        load_dit(sd, attention="xformers")
    dit = load_dit(sd, attention="sdpa")
    assert dit.attention_backend == "sdpa" and dit.blocks[1].cross_attn.backend == "sdpa"
