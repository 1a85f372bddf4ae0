"""Fuzz layer over the command lines (``python -m comfy_kiwi <verb>``): every broken input, absurd number
or unusable output gives one readable ``error:`` line and exit status 2 — never a traceback — and no file
in the work folder is created, changed or lost (an earlier result at ``--out`` survives)."""

from __future__ import annotations

import shutil

import pytest

from comfy_kiwi.cli import main
from comfy_kiwi.testing.tiny_release import write_tiny_kiwi_release
from fuzz_support import LONG_TEXT, NON_UTF8, assert_command_fails_clearly, truncated_copy, write_broken_files


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_cli")
    files = write_broken_files(root / "in")
    release = write_tiny_kiwi_release(root / "in" / "release")
    broken = root / "in" / "broken_release"
    shutil.copytree(release, broken)
    truncated_copy(release / "transformer" / "diffusion_pytorch_model.safetensors",
                   broken / "transformer" / "diffusion_pytorch_model.safetensors")
    (root / "in" / "folder.mp4").mkdir()
    return root, {**files, "release": release, "broken_release": broken, "mp4_dir": root / "in" / "folder.mp4"}


def _edit(f, **changes):
    """The edit command line with some options replaced (None drops one); valid except for ``changes``."""
    opts = {"--video": f["video"], "--instruction": "remove the red circle", "--out": f["existing"], "--steps": 2}
    opts.update(changes)
    argv = ["edit"]
    for k, v in opts.items():
        if v is not None:
            argv += [k, str(v)]
    return argv


# (case id, how to build argv from the files, the words the error must contain)
EDIT_CASES = [
    ("video-missing", lambda f: _edit(f, **{"--video": f["video"].with_name("nope.mp4")}), "nope.mp4"),
    ("video-truncated", lambda f: _edit(f, **{"--video": f["truncated"]}), "truncated.mp4"),
    ("video-garbage", lambda f: _edit(f, **{"--video": f["garbage"]}), "garbage.mp4"),
    ("video-empty-file", lambda f: _edit(f, **{"--video": f["empty"]}), "empty.mp4"),
    ("video-is-folder", lambda f: _edit(f, **{"--video": f["empty_dir"]}), "empty_dir"),
    ("video-zero-frames", lambda f: _edit(f, **{"--video": f["zero_frames"]}), "no video stream"),
    ("video-one-pixel-toy-default", lambda f: _edit(f, **{"--video": f["one_pixel_video"]}), "toy model"),
    ("image-one-pixel-toy-default", lambda f: _edit(f, **{"--video": f["one_pixel_png"]}), "toy model"),
    ("video-one-pixel-release", lambda f: _edit(f, **{"--video": f["one_pixel_video"], "--model": f["release"]}),
     "too small"),
    ("video-zero-frames-release", lambda f: _edit(f, **{"--video": f["zero_frames"], "--model": f["release"]}),
     "no video stream"),
    ("image-corrupt", lambda f: _edit(f, **{"--video": f["corrupt_png"]}), "corrupt.png"),
    ("instruction-non-utf8", lambda f: _edit(f, **{"--instruction": NON_UTF8}), "UTF-8"),
    ("instruction-100k", lambda f: _edit(f, **{"--instruction": LONG_TEXT}), "characters long"),
    ("instruction-empty", lambda f: _edit(f, **{"--instruction": ""}), "empty"),
    ("instruction-blank", lambda f: _edit(f, **{"--instruction": "  \n\t "}), "empty"),
    ("out-suffix", lambda f: _edit(f, **{"--out": f["existing"].with_suffix(".txt")}), ".mp4"),
    ("out-is-folder", lambda f: _edit(f, **{"--out": f["empty_dir"]}), "--out"),
    ("out-is-folder-named-mp4", lambda f: _edit(f, **{"--out": f["mp4_dir"]}), "folder"),
    ("out-under-a-file", lambda f: _edit(f, **{"--out": f["text_file"] / "edited.mp4"}), "cannot write"),
    ("out-unwritable", lambda f: _edit(f, **{"--out": "/proc/comfy-kiwi-fuzz/edited.mp4"}), "cannot write"),
    ("out-is-the-video", lambda f: _edit(f, **{"--out": f["video"]}), "--video input"),
    ("out-is-the-video-via-dotdot", lambda f: _edit(f, **{"--out": f["empty_dir"] / ".." / "toy.mp4"}),
     "--video input"),
    ("latents-unwritable", lambda f: _edit(f, **{"--save-latents": "/proc/comfy-kiwi-fuzz/l.safetensors"}),
     "cannot write"),
    ("latents-suffix", lambda f: _edit(f, **{"--save-latents": f["text_file"]}), ".safetensors"),
    ("latents-over-the-model", lambda f: _edit(f, **{"--save-latents": f["garbage_safetensors"],
                                                      "--model": f["garbage_safetensors"]}), "input"),
    ("steps-zero", lambda f: _edit(f, **{"--steps": 0}), "--steps"),
    ("steps-negative", lambda f: _edit(f, **{"--steps": -3}), "--steps"),
    ("steps-billion", lambda f: _edit(f, **{"--steps": 10 ** 9}), "--steps"),
    ("steps-not-a-number", lambda f: _edit(f, **{"--steps": "ten"}), "--steps"),
    ("shift-nan", lambda f: _edit(f, **{"--shift": "nan"}), "finite"),
    ("shift-inf", lambda f: _edit(f, **{"--shift": "inf"}), "finite"),
    ("shift-zero", lambda f: _edit(f, **{"--shift": 0}), "--shift"),
    ("cfg-nan", lambda f: _edit(f, **{"--cfg": "nan"}), "finite"),
    ("cfg-negative", lambda f: _edit(f, **{"--cfg": -1}), "--cfg"),
    ("denoise-zero", lambda f: _edit(f, **{"--denoise": 0}), "(0, 1]"),
    ("denoise-above-one", lambda f: _edit(f, **{"--denoise": 1.5}), "(0, 1]"),
    ("denoise-nan", lambda f: _edit(f, **{"--denoise": "nan"}), "finite"),
    ("seed-negative", lambda f: _edit(f, **{"--seed": -1}), "--seed"),
    ("seed-2^70", lambda f: _edit(f, **{"--seed": 2 ** 70}), "--seed"),
    ("frames-negative", lambda f: _edit(f, **{"--frames": -3}), "--frames"),
    ("max-pixels-zero", lambda f: _edit(f, **{"--max-pixels": 0}), "--max-pixels"),
    ("max-pixels-negative", lambda f: _edit(f, **{"--max-pixels": -5}), "--max-pixels"),
    ("fps-zero", lambda f: _edit(f, **{"--fps": 0}), "--fps"),
    ("fps-nan", lambda f: _edit(f, **{"--fps": "nan"}), "--fps"),
    ("fps-inf", lambda f: _edit(f, **{"--fps": "inf"}), "--fps"),
    ("window-zero", lambda f: _edit(f, **{"--window": 0}), "--window"),
    ("window-not-4k+1", lambda f: _edit(f, **{"--window": 6}), "4k+1"),
    ("block-swap-negative", lambda f: _edit(f, **{"--block-swap": -1}), "--block-swap"),
    ("device-unknown", lambda f: _edit(f, **{"--device": "gpu"}), "device name"),
    ("device-absent", lambda f: _edit(f, **{"--device": "cuda:99"}), "cuda:99"),
    ("dtype-unknown", lambda f: _edit(f, **{"--dtype": "fp64"}), "--dtype"),
    ("schedule-unknown", lambda f: _edit(f, **{"--schedule": "linear"}), "--schedule"),
    ("attention-unknown", lambda f: _edit(f, **{"--attention": "warp", "--model": f["release"]}), "warp"),
    ("reference-missing", lambda f: _edit(f, **{"--reference": f["video"].with_name("nope.png")}), "nope.png"),
    ("reference-corrupt", lambda f: _edit(f, **{"--reference": f["corrupt_png"]}), "corrupt.png"),
    ("reference-is-folder", lambda f: _edit(f, **{"--reference": f["empty_dir"]}), "empty_dir"),
    ("model-missing", lambda f: _edit(f, **{"--model": f["video"].with_name("no_model")}), "no_model"),
    ("model-empty-folder", lambda f: _edit(f, **{"--model": f["empty_dir"]}), "empty_dir"),
    ("model-garbage-safetensors", lambda f: _edit(f, **{"--model": f["garbage_safetensors"]}), "garbage"),
    ("model-huge-header", lambda f: _edit(f, **{"--model": f["huge_header_safetensors"]}), "huge_header"),
    ("model-truncated-release", lambda f: _edit(f, **{"--model": f["broken_release"]}), "diffusion_pytorch_model"),
    ("model-pickle-never-unpickled", lambda f: _edit(f, **{"--model": f["pickle_pt"]}), "weights.pt"),
    ("imvideoedit-without-parts", lambda f: _edit(f, **{"--imvideoedit": f["garbage_safetensors"],
                                                        "--model": f["garbage_safetensors"]}), "--vae"),
    ("text-len-without-imvideoedit", lambda f: _edit(f, **{"--text-len": 0}), "--imvideoedit"),
]

OTHER_CASES = [
    ("info-missing", lambda f: ["info", str(f["video"].with_name("nope.safetensors"))], "nope"),
    ("info-garbage", lambda f: ["info", str(f["garbage_safetensors"])], "garbage"),
    ("info-huge-header", lambda f: ["info", str(f["huge_header_safetensors"])], "huge_header"),
    ("info-truncated-release", lambda f: ["info", str(f["broken_release"])], "diffusion_pytorch_model"),
    ("info-pickle", lambda f: ["info", str(f["pickle_pt"])], "weights.pt"),
    ("info-empty-folder", lambda f: ["info", str(f["empty_dir"])], "empty_dir"),
    ("info-a-video", lambda f: ["info", str(f["video"])], "toy.mp4"),
    ("plan-size-zero", lambda f: ["plan", "--model", "wan2.2-ti2v-5b", "--size", "0x0", "--vram", "12"],
     "width and height"),
    ("plan-size-text", lambda f: ["plan", "--model", "wan2.2-ti2v-5b", "--size", "big", "--vram", "12"], "size"),
    ("plan-vram-nan", lambda f: ["plan", "--model", "wan2.2-ti2v-5b", "--size", "832x480", "--vram", "nan"], "vram"),
    ("plan-vram-negative", lambda f: ["plan", "--model", "wan2.2-ti2v-5b", "--size", "832x480", "--vram", "-1"],
     "vram"),
    ("plan-model-unknown", lambda f: ["plan", "--model", "wan9", "--size", "832x480", "--vram", "12"], "wan9"),
    ("toy-data-count-negative", lambda f: ["toy-data", "--out", str(f["empty_dir"] / "d"), "--count", "-1"], "count"),
    ("toy-data-out-under-a-file", lambda f: ["toy-data", "--out", str(f["text_file"] / "d"), "--count", "1"],
     "notes.txt"),
    ("judge-vlm-missing", lambda f: ["judge", "--vlm", str(f["empty_dir"]), "--source", str(f["video"]), "--edited",
                                     str(f["video"]), "--instruction", "x"], "empty_dir"),
    ("judge-device-absent", lambda f: ["judge", "--vlm", str(f["empty_dir"]), "--source", str(f["video"]),
                                       "--edited", str(f["video"]), "--instruction", "x", "--device", "cuda:7"],
     "cuda:7"),
    ("judge-source-garbage", lambda f: ["judge", "--vlm", str(f["empty_dir"]), "--source", str(f["garbage"]),
                                        "--edited", str(f["video"]), "--instruction", "x"], "garbage.mp4"),
]


@pytest.mark.parametrize("build,words", [pytest.param(b, w, id=i) for i, b, w in EDIT_CASES + OTHER_CASES])
def test_every_mistake_is_one_clear_line_and_loses_nothing(work, build, words, capsys):
    root, files = work
    assert_command_fails_clearly(main, build(files), root, words, capsys)


def test_the_base_command_line_of_the_cases_is_valid(work, capsys, tmp_path):
    """Each case differs from a working edit only in what it breaks (so the cases test that)."""
    _, files = work
    argv = _edit(files, **{"--out": tmp_path / "ok.mp4"})
    assert main(argv) == 0
    assert (tmp_path / "ok.mp4").stat().st_size > 0 and '"frames": 17' in capsys.readouterr().out
