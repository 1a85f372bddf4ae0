"""`python -m comfy_kiwi info` and `edit` end to end on tiny files, including user errors."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from comfy_kiwi.cli import main
from comfy_kiwi.testing.tiny_release import tiny_video_frames, write_tiny_kiwi_release
from comfy_kiwi.video_io import read_video, write_video


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_kiwi_release(tmp_path_factory.mktemp("kiwi") / "release")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "source.mp4"
    write_video(path, tiny_video_frames(7, 72, 88), fps=8)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "comfy_kiwi", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_info_describes_release_dit_and_vae(release, capsys):
    assert main(["info", str(release)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "kiwi-release" and info["missing_parts"] == []
    assert info["parts"]["transformer"]["kind"] == "dit"
    assert info["parts"]["vae"]["kind"] == "vae" and info["parts"]["vae"]["version"] == "2.2"
    assert main(["info", str(release / "vae")]) == 0
    assert json.loads(capsys.readouterr().out)["z_dim"] == 48


def test_info_on_something_else_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a model")
    assert main(["info", str(bad)]) == 2
    assert "not a" in capsys.readouterr().err


def test_edit_end_to_end(release, video, tmp_path):
    out, lat = tmp_path / "edited.mp4", tmp_path / "latents.safetensors"
    r = run_cli("edit", "--model", release, "--video", video, "--instruction", "make the sky red",
                "--out", out, "--steps", "2", "--seed", "3", "--save-latents", lat)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 5 and summary["size"] == [64, 64]   # 7 frames trimmed to 4k+1
    frames, fps = read_video(out)
    assert frames.shape == (5, 64, 64, 3) and fps == pytest.approx(8)
    saved = load_file(str(lat))
    assert saved["latents"].shape == (1, 48, 2, 4, 4)
    assert saved["context"].shape[0] == 1 and saved["context"].shape[2] == 48

    # same seed → same latents; a reference switches to the reference path
    ref = tmp_path / "ref.png"
    from comfy_kiwi.frames import to_pil
    to_pil(tiny_video_frames(1, 30, 40, seed=5)[0]).save(ref)
    lat2 = tmp_path / "latents2.safetensors"
    assert main(["edit", "--model", str(release), "--video", str(video), "--instruction", "make the sky red",
                 "--out", str(tmp_path / "e2.mp4"), "--steps", "2", "--seed", "3", "--save-latents", str(lat2)]) == 0
    assert torch.equal(load_file(str(lat2))["latents"], saved["latents"])
    lat3 = tmp_path / "latents3.safetensors"
    assert main(["edit", "--model", str(release), "--video", str(video), "--instruction", "add the hat",
                 "--reference", str(ref), "--out", str(tmp_path / "e3.png"), "--frames", "1",
                 "--steps", "1", "--save-latents", str(lat3)]) == 0
    assert load_file(str(lat3))["context"].shape[1] > saved["context"].shape[1]
    assert (tmp_path / "e3.png").exists()


@pytest.mark.parametrize("change,message", [
    ({"--instruction": "  "}, "instruction"),
    ({"--reference": "missing.png"}, "missing.png"),
    ({"--out": "edited.gif"}, ".mp4"),
    ({"--video": "empty.mp4"}, "empty"),
])
def test_edit_user_errors(release, video, tmp_path, capsys, change, message):
    (tmp_path / "empty.mp4").write_bytes(b"")
    args = {"--model": str(release), "--video": str(video), "--instruction": "make it red",
            "--out": str(tmp_path / "edited.mp4"), "--steps": "1"}
    args.update({k: (str(tmp_path / v) if k in ("--reference", "--video") else v) for k, v in change.items()})
    argv = ["edit"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_edit_model_folder_missing_a_part(release, video, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(release, broken)
    shutil.rmtree(broken / "processor")
    assert main(["edit", "--model", str(broken), "--video", str(video), "--instruction", "x y",
                 "--out", str(tmp_path / "o.mp4")]) == 2
    assert "processor" in capsys.readouterr().err


def test_edit_too_small_video(release, tmp_path, capsys):
    small = tmp_path / "small.mp4"
    write_video(small, tiny_video_frames(5, 24, 24), fps=8)
    assert main(["edit", "--model", str(release), "--video", str(small), "--instruction", "make it red",
                 "--out", str(tmp_path / "o.mp4"), "--steps", "1"]) == 2
    assert "32" in capsys.readouterr().err


def test_edit_plan_block_swap_and_long_video(release, tmp_path, capsys):
    long_video = tmp_path / "long.mp4"
    write_video(long_video, tiny_video_frames(13, 72, 88), fps=8)
    out = tmp_path / "long_out.mp4"
    assert main(["edit", "--model", str(release), "--video", str(long_video), "--instruction", "make it red",
                 "--out", str(out), "--steps", "1", "--frames", "0", "--window", "5", "--block-swap", "1"]) == 0
    frames, _ = read_video(out)
    assert frames.shape[0] == 13          # windows of 5 frames overlapping by one: 0-4, 4-8, 8-12
    capsys.readouterr()
    assert main(["edit", "--model", str(release), "--video", str(long_video), "--instruction", "make it red",
                 "--out", str(out), "--window", "5", "--save-latents", str(tmp_path / "l.safetensors")]) == 2
    assert "--window" in capsys.readouterr().err
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--size", "832x480", "--frames", "81", "--vram", "12"]) == 0
    assert "DiT" in capsys.readouterr().out


def test_block_swap_sampling_is_exact(release):
    from comfy_kiwi import EditPipeline, EditSettings
    pipe = EditPipeline.from_pretrained(release, dtype=torch.float32, device="cpu")
    frames = tiny_video_frames(5, 72, 88)
    s = EditSettings(steps=2, progress=False)
    plain = pipe.edit(frames, "make it red", settings=s.replace(kv_cache=False))
    swapped = pipe.edit(frames, "make it red", settings=s.replace(block_swap=2))
    assert torch.equal(plain.latents, swapped.latents)
