"""Loading Wan VAEs from every supported layout, version detection, describe_vae, and clear errors."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.loading.vae_loader import describe_vae, load_vae
from comfy_kiwi.models.wan_vae import tiny_config
from comfy_kiwi.testing.tiny_vae import (diffusers_state_dict, original_state_dict, random_frames, tiny_vae,
                                         write_diffusers_folder, write_kiwi_vae_folder, write_original_file)

VERSIONS = ["2.1", "2.2"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """For each version: the source model and the same weights in every layout."""
    root = tmp_path_factory.mktemp("vae")
    out = {}
    for v in VERSIONS:
        vae = tiny_vae(v, seed=3)
        d = root / v
        out[v] = {
            "model": vae,
            "original file": write_original_file(vae, d / "wan_vae.safetensors"),
            "prefix model.": write_original_file(vae, d / "p1.safetensors", prefix="model."),
            "prefix module.": write_original_file(vae, d / "p2.safetensors", prefix="module."),
            "prefix vae.": write_original_file(vae, d / "p3.safetensors", prefix="vae."),
            "prefix first_stage_model.": write_original_file(vae, d / "p4.safetensors", prefix="first_stage_model."),
            "kiwi vae folder": write_kiwi_vae_folder(vae, d / "kiwi" / "vae"),
            "kiwi release root": d / "kiwi",
            "diffusers folder": write_diffusers_folder(vae, d / "diffusers"),
            "state dict": original_state_dict(vae),
            "diffusers state dict": diffusers_state_dict(vae),
        }
    return out


KINDS = ["original file", "prefix model.", "prefix module.", "prefix vae.", "prefix first_stage_model.",
         "kiwi vae folder", "kiwi release root", "diffusers folder", "state dict", "diffusers state dict"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_layout_loads_the_same_weights(sources, version, kind):
    src = sources[version]
    vae = load_vae(src[kind])
    ref = src["model"]
    assert vae.version == version and vae.config == ref.config
    assert vae.z_dim == (16 if version == "2.1" else 48)
    assert vae.spatial_factor == (8 if version == "2.1" else 16) and vae.temporal_factor == 4
    sd, ref_sd = vae.state_dict(), ref.state_dict()
    assert sd.keys() == ref_sd.keys()
    assert all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    assert not any(p.is_meta for p in vae.parameters())


@pytest.mark.parametrize("version", VERSIONS)
def test_loaded_model_encodes_like_the_source(sources, version):
    src = sources[version]
    s = src["model"].spatial_factor
    x = random_frames(5, 2 * s, 2 * s)
    assert torch.equal(load_vae(src["diffusers folder"]).encode(x), src["model"].encode(x))


def test_dtype_is_kept_or_overridden(tmp_path):
    vae = tiny_vae("2.2")
    path = write_original_file(vae, tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    assert load_vae(path).dtype == torch.bfloat16
    loaded = load_vae(path, dtype=torch.float32)
    assert loaded.dtype == torch.float32
    x = random_frames(5, 32, 32)
    z_bf16, z_fp32 = load_vae(path).encode(x), loaded.encode(x)
    assert z_bf16.dtype == torch.float32                          # outputs are fp32 whatever the weights
    assert (z_bf16 - z_fp32).abs().max() < 0.1 * z_fp32.abs().max()
    y_bf16, y_fp32 = load_vae(path).decode(z_fp32), loaded.decode(z_fp32)
    assert (y_bf16 - y_fp32).abs().mean() < 0.02
    with pytest.raises(InputError, match="not supported"):
        load_vae(path, dtype=torch.int8)


@pytest.mark.parametrize("version", VERSIONS)
def test_describe_vae(sources, version):
    src = sources[version]
    formats = {"original file": "original", "prefix vae.": "original", "kiwi vae folder": "kiwi-vae-folder",
               "kiwi release root": "kiwi-vae-folder", "diffusers folder": "diffusers"}
    for kind, fmt in formats.items():
        info = describe_vae(src[kind])
        json.dumps(info)
        assert info["kind"] == "vae" and info["format"] == fmt and info["version"] == version
        assert info["z_dim"] == src["model"].z_dim and info["dtype"] == "float32"
        assert info["config"]["dim"] == 8 and len(info["config"]["latents_mean"]) == info["z_dim"]
        assert info["missing_keys"] == 0
    assert describe_vae(src["prefix vae."])["prefix"] == "vae."


def test_release_stats_come_from_config_json(tmp_path):
    vae = tiny_vae("2.1")
    folder = write_kiwi_vae_folder(vae, tmp_path / "vae")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["latents_mean"] = [0.5] * 16
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_vae(folder).config.latents_mean == (0.5,) * 16


def test_unreleased_z_dim_needs_stats_from_a_config(tmp_path):
    cfg = replace(tiny_config("2.1"), z_dim=4, latents_mean=(0.1,) * 4, latents_std=(2.0,) * 4)
    vae = tiny_vae(config=cfg)
    with pytest.raises(CheckpointError, match="no published latent statistics"):
        load_vae(write_original_file(vae, tmp_path / "z4.safetensors"))
    assert load_vae(write_kiwi_vae_folder(vae, tmp_path / "vae")).config == cfg


def test_not_a_vae(tmp_path):
    dit = tmp_path / "dit.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "head.modulation": torch.zeros(1, 2, 4)}, str(dit))
    assert describe_vae(dit) is None
    with pytest.raises(CheckpointError, match="not a Wan VAE") as e:
        load_vae(dit)
    assert str(dit) in str(e.value) and "blocks.0.self_attn.q.weight" in str(e.value)


def test_describe_vae_passes_on_folders_without_weights(tmp_path):
    (tmp_path / "processor").mkdir()
    (tmp_path / "processor" / "tokenizer.json").write_text("{}")
    assert describe_vae(tmp_path / "processor") is None
    with pytest.raises(CheckpointError, match="no .safetensors"):
        load_vae(tmp_path / "processor")


def test_missing_and_misshaped_keys_are_listed(tmp_path):
    sd = original_state_dict(tiny_vae("2.1"))
    del sd["decoder.upsamples.1.residual.6.weight"]
    del sd["encoder.middle.1.to_qkv.bias"]
    sd["decoder.middle.1.proj.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as e:
        load_vae(path)
    msg = str(e.value)
    assert str(path) in msg and "missing keys (2)" in msg
    assert "decoder.upsamples.1.residual.6.weight" in msg and "encoder.middle.1.to_qkv.bias" in msg
    assert "mis-shaped" in msg and "decoder.middle.1.proj.weight" in msg


def test_missing_architecture_key_is_named():
    sd = original_state_dict(tiny_vae("2.2"))
    del sd["conv2.weight"]
    with pytest.raises(CheckpointError, match="conv2.weight"):
        load_vae(sd)


def test_config_json_that_does_not_fit_is_rejected(tmp_path):
    folder = write_kiwi_vae_folder(tiny_vae("2.2"), tmp_path / "vae")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["z_dim"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="z_dim"):
        load_vae(folder)


def test_two_vaes_in_one_file_are_rejected():
    sd = original_state_dict(tiny_vae("2.1"))
    both = {**{"a." + k: v for k, v in sd.items()}, **{"b." + k: v for k, v in sd.items()}}
    with pytest.raises(CheckpointError, match="more than one VAE"):
        load_vae(both)


@pytest.mark.parametrize("frames", [0, 2, 4, 8, 80])
def test_frame_count_must_be_4k_plus_1(frames):
    vae = tiny_vae("2.1")
    with pytest.raises(InputError, match=r"4k\+1 frames") as e:
        vae.encode(torch.zeros(1, 3, frames, 16, 16))
    assert f"got {frames}" in str(e.value)
    with pytest.raises(InputError, match=r"4k\+1"):
        vae.encode(torch.zeros(1, 3, frames, 16, 16), tiled=True)


@pytest.mark.parametrize("version,size", [("2.1", (20, 16)), ("2.1", (16, 12)), ("2.2", (24, 32)), ("2.2", (32, 8))])
def test_frame_size_must_divide(version, size):
    vae = tiny_vae(version)
    with pytest.raises(InputError, match=f"multiple of {vae.spatial_factor}"):
        vae.encode(torch.zeros(1, 3, 5, *size))


def test_bad_shapes_are_explained():
    vae = tiny_vae("2.2")
    with pytest.raises(InputError, match=r"\[B, 3, F, H, W\]"):
        vae.encode(torch.zeros(3, 5, 32, 32))
    with pytest.raises(InputError, match="z_dim 48"):
        vae.decode(torch.zeros(1, 16, 2, 2, 2))
    assert vae.latent_shape(81, 704, 1280) == (48, 21, 44, 80)
