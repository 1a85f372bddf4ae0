"""`python -m comfy_kiwi edit --imvideoedit` end to end on tiny Wan2.1 files, and the library function behind it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy_harness as H
from comfy_kiwi.cli import main
from comfy_kiwi.methods import imvideoedit as ive
from comfy_kiwi.testing import tiny_dit, tiny_vae
from comfy_kiwi.testing.tiny_release import tiny_video_frames
from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
from comfy_kiwi.video_io import read_video, write_video

CAPTION = "a red square on a white background"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ive")
    dit = tiny_dit.tiny_dit("2.1", seed=3)
    out = {
        "dit": tiny_dit.write_original_file(dit, root / "wan21_dit.safetensors"),
        "vae": tiny_vae.write_original_file(tiny_vae.tiny_vae("2.1", seed=4), root / "wan_2.1_vae.safetensors"),
        "umt5": write_tiny_umt5(root / "umt5", d_model=32),
        "weights": H.randomised_imvideoedit_weights(dit, root / "ive.safetensors"),
        "video": root / "source.mp4",
        "dit22": tiny_dit.write_original_file(tiny_dit.tiny_dit("2.2", seed=3), root / "wan22_dit.safetensors"),
        "vae22": tiny_vae.write_original_file(tiny_vae.tiny_vae("2.2", seed=4), root / "wan2.2_vae.safetensors"),
    }
    torch.manual_seed(0)
    zero = ive.attach(dit)
    out["zero_weights"] = zero.save(root / "ive_zero.safetensors")
    zero.detach()
    write_video(out["video"], tiny_video_frames(7, 72, 88), fps=8)
    return out


def argv(files, tmp_path, name="out.mp4", **change):
    args = {"--imvideoedit": files["weights"], "--model": files["dit"], "--vae": files["vae"],
            "--text-encoder": files["umt5"], "--video": files["video"], "--instruction": CAPTION,
            "--out": tmp_path / name, "--steps": 2, "--seed": 3, "--text-len": 16,
            "--save-latents": tmp_path / (name + ".latents.safetensors")}
    args.update(change)
    return ["edit"] + [str(x) for k, v in args.items() if v is not None for x in (k, v)]


def latents_of(tmp_path, name):
    return load_file(str(tmp_path / (name + ".latents.safetensors")))["latents"]


def test_cli_end_to_end_as_a_subprocess(files, tmp_path):
    r = subprocess.run([sys.executable, "-m", "comfy_kiwi", *argv(files, tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 5 and summary["size"] == [64, 64]          # 7 frames trimmed to 4k+1
    assert summary["latents"] == [1, 16, 2, 8, 8]
    frames, fps = read_video(tmp_path / "out.mp4")
    assert frames.shape == (5, 64, 64, 3) and fps == pytest.approx(8)
    saved = load_file(str(tmp_path / "out.mp4.latents.safetensors"))
    assert saved["context"].shape == (1, 16, 32)


def test_seed_determinism_and_the_weights_matter(files, tmp_path):
    assert main(argv(files, tmp_path, "a.mp4")) == 0
    assert main(argv(files, tmp_path, "b.mp4")) == 0
    assert torch.equal(latents_of(tmp_path, "a.mp4"), latents_of(tmp_path, "b.mp4"))
    assert main(argv(files, tmp_path, "c.mp4", **{"--seed": 4})) == 0
    assert not torch.allclose(latents_of(tmp_path, "c.mp4"), latents_of(tmp_path, "a.mp4"))
    assert main(argv(files, tmp_path, "zero.mp4", **{"--imvideoedit": files["zero_weights"]})) == 0
    zero = latents_of(tmp_path, "zero.mp4")
    assert not torch.allclose(zero, latents_of(tmp_path, "a.mp4"), atol=1e-3)

    # zero-initialised modules leave the base model exactly: the same as sampling the plain DiT on the target
    from comfy_kiwi.loading.dit_loader import load_dit
    from comfy_kiwi.sampling import flow_sigmas, noise_like, sample_euler
    dit = load_dit(files["dit"], dtype=torch.float32)
    ctx = load_file(str(tmp_path / "zero.mp4.latents.safetensors"))["context"]
    x = noise_like(tuple(zero.shape), 3, dtype=torch.float32)
    plain = sample_euler(lambda x, s, i: dit(x, torch.full((1,), 1000.0 * s), ctx), x, flow_sigmas(2, 5.0, "kiwi"),
                         progress=False)
    assert torch.allclose(plain, zero, atol=1e-4)


def test_library_function_matches_the_cli(files, tmp_path):
    from comfy_kiwi.methods.imvideoedit_pipeline import edit_with_imvideoedit, load_parts
    from comfy_kiwi.pipeline import EditSettings
    assert main(argv(files, tmp_path, "cli.mp4")) == 0
    dit, vae, encoder, weights = load_parts(files["dit"], files["vae"], files["umt5"], files["weights"],
                                            torch.float32, "cpu")
    frames, _ = read_video(files["video"])
    result = edit_with_imvideoedit(dit, vae, encoder, weights, frames, CAPTION,
                                   EditSettings(steps=2, seed=3, progress=False), text_len=16)
    assert torch.equal(result.latents, latents_of(tmp_path, "cli.mp4"))
    assert result.frames.shape == (5, 64, 64, 3)
    assert not dit._forward_pre_hooks                          # the modules are detached after the edit


@pytest.mark.parametrize("change,message", [
    ({"--text-encoder": None}, "--text-encoder"),
    ({"--vae": None, "--text-encoder": None}, "--vae and --text-encoder"),
    ({"--model": "dit22"}, "Wan2.1 T2V DiT"),
    ({"--imvideoedit": "lora"}, "not an ImVideoEdit weights file"),
    ({"--imvideoedit": "vae"}, "not an ImVideoEdit weights file"),
    ({"--vae": "dit"}, "not a Wan VAE"),
    ({"--vae": "vae22"}, "use the Wan2.1 VAE"),
    ({"--instruction": "  "}, "instruction"),
    ({"--cfg": 2.0}, "--cfg"),
])
def test_clear_errors(files, tmp_path, capsys, change, message):
    lora = tmp_path / "lora.safetensors"
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 2)}, str(lora))
    named = {"dit22": files["dit22"], "lora": lora, "vae": files["vae"], "dit": files["dit"], "vae22": files["vae22"]}
    change = {k: named.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    assert main(argv(files, tmp_path, **change)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error:") and message in err, err


def test_release_only_options_are_refused_without_imvideoedit(files, tmp_path, capsys):
    args = argv(files, tmp_path, **{"--imvideoedit": None, "--text-len": None})
    assert main(args) == 2
    assert "only apply with --imvideoedit" in capsys.readouterr().err
