"""Fuzz layer over the ComfyUI nodes, run through the embedded toy model: wrong shapes, NaNs, 0-frame
and 1-pixel inputs, absurd numbers, non-UTF-8 and 100k-character instructions, and model names that
point outside the model folders. Every case raises a KiwiError with a readable message (what ComfyUI
shows the user), never a raw exception from inside torch; the nodes write no file anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import comfy_harness as H
from fuzz_support import LONG_TEXT, NON_UTF8, assert_clear_error, snapshot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain():
    """Node classes and the outputs of a working toy edit chain (each case breaks one input of it)."""
    torch.set_num_threads(1)
    nodes = H.load_pack(ROOT).NODE_CLASS_MAPPINGS
    dit, vae, mllm = nodes["KiwiToyModelLoader"]().load()
    source, instruction, reference, example, _ = nodes["KiwiToyExample"]().make(seed=7, kind="remove")
    frames = nodes["KiwiPrepareFrames"]().prepare(source, 921600, 0, "trim")[0]
    cond = nodes["KiwiMLLMEncode"]().encode(mllm, frames, instruction, False)[0]
    src = nodes["KiwiEncodeSource"]().encode(vae, frames, "model default", False)[0]
    return dict(nodes=nodes, dit=dit, vae=vae, mllm=mllm, frames=frames, instruction=instruction,
                reference=reference, example=example, cond=cond, src=src)


def _nan(x):
    x = x.clone()
    x.view(-1)[0] = float("nan")
    return x


def _prepare(c, **kw):
    args = dict(images=c["frames"], max_pixels=921600, num_frames=0, frame_mode="trim") | kw
    return lambda: c["nodes"]["KiwiPrepareFrames"]().prepare(**args)


def _encode(c, **kw):
    args = dict(mllm=c["mllm"], source=c["frames"], instruction=c["instruction"], encode_negative=False) | kw
    return lambda: c["nodes"]["KiwiMLLMEncode"]().encode(**args)


def _source(c, **kw):
    args = dict(vae=c["vae"], source=c["frames"], reference_position="model default", tiled=False) | kw
    return lambda: c["nodes"]["KiwiEncodeSource"]().encode(**args)


def _sample(c, **kw):
    args = dict(dit=c["dit"], conditioning=c["cond"], source=c["src"], seed=0, steps=2, shift=5.0, cfg=1.0,
                denoise=1.0, schedule="kiwi", block_swap=0) | kw
    return lambda: c["nodes"]["KiwiSampler"]().sample(**args)


def _decode(c, latent):
    return lambda: c["nodes"]["KiwiVAEDecode"]().decode(c["vae"], latent, False)


def _src_with(c, **fields):
    import dataclasses
    return dataclasses.replace(c["src"], **fields)


CASES = [
    ("prepare-one-image-no-batch-axis-4ch", lambda c: _prepare(c, images=torch.rand(32, 32, 4)), "shape"),
    ("prepare-rgba", lambda c: _prepare(c, images=torch.rand(5, 32, 32, 4)), "shape"),
    ("prepare-grey", lambda c: _prepare(c, images=torch.rand(5, 32, 32, 1)), "shape"),
    ("prepare-zero-frames", lambda c: _prepare(c, images=torch.rand(0, 32, 32, 3)), "0 frames"),
    ("prepare-one-pixel", lambda c: _prepare(c, images=torch.rand(5, 1, 1, 3)), "too small"),
    ("prepare-nan", lambda c: _prepare(c, images=_nan(c["frames"])), "NaN"),
    ("prepare-inf", lambda c: _prepare(c, images=c["frames"] * float("inf")), "NaN"),
    ("prepare-0-255-floats", lambda c: _prepare(c, images=c["frames"] * 255), "0..1"),
    ("prepare-int64", lambda c: _prepare(c, images=(c["frames"] * 255).long()), "dtype"),
    ("prepare-not-a-tensor", lambda c: _prepare(c, images=[[1, 2, 3]]), "tensor"),
    ("prepare-max-pixels-zero", lambda c: _prepare(c, max_pixels=0), "max_pixels"),
    ("prepare-max-pixels-negative", lambda c: _prepare(c, max_pixels=-5), "max_pixels"),
    ("prepare-num-frames-negative", lambda c: _prepare(c, num_frames=-3), "num_frames"),
    ("prepare-frame-mode-unknown", lambda c: _prepare(c, frame_mode="stretch"), "frame_mode"),
    ("encode-non-utf8", lambda c: _encode(c, instruction=NON_UTF8), "UTF-8"),
    ("encode-100k", lambda c: _encode(c, instruction=LONG_TEXT), "characters long"),
    ("encode-empty", lambda c: _encode(c, instruction=""), "empty"),
    ("encode-not-text", lambda c: _encode(c, instruction=b"make it red"), "text"),
    ("encode-source-nan", lambda c: _encode(c, source=_nan(c["frames"])), "NaN"),
    ("encode-source-shape", lambda c: _encode(c, source=torch.rand(5, 3, 32, 32)), "shape"),
    ("encode-source-zero-frames", lambda c: _encode(c, source=torch.rand(0, 32, 32, 3)), "0 frames"),
    ("encode-reference-nan", lambda c: _encode(c, reference=_nan(c["reference"])), "NaN"),
    ("encode-reference-two-images", lambda c: _encode(c, reference=torch.rand(2, 32, 32, 3)), "single image"),
    ("source-nan", lambda c: _source(c, source=_nan(c["frames"])), "NaN"),
    ("source-zero-frames", lambda c: _source(c, source=torch.rand(0, 32, 32, 3)), "0 frames"),
    ("source-one-pixel", lambda c: _source(c, source=torch.rand(5, 1, 1, 3)), "multiples"),
    ("source-odd-size", lambda c: _source(c, source=torch.rand(5, 33, 40, 3)), "multiple"),
    ("source-position-unknown", lambda c: _source(c, reference_position="middle"), "reference_position"),
    ("source-reference-nan", lambda c: _source(c, reference=_nan(c["reference"])), "NaN"),
    ("sample-steps-zero", lambda c: _sample(c, steps=0), "steps"),
    ("sample-steps-billion", lambda c: _sample(c, steps=10 ** 9), "steps"),
    ("sample-shift-nan", lambda c: _sample(c, shift=float("nan")), "shift"),
    ("sample-shift-negative", lambda c: _sample(c, shift=-1.0), "shift"),
    ("sample-cfg-nan", lambda c: _sample(c, cfg=float("nan")), "cfg"),
    ("sample-cfg-inf", lambda c: _sample(c, cfg=float("inf")), "cfg"),
    ("sample-denoise-zero", lambda c: _sample(c, denoise=0.0), "denoise"),
    ("sample-denoise-nan", lambda c: _sample(c, denoise=float("nan")), "denoise"),
    ("sample-seed-negative", lambda c: _sample(c, seed=-1), "seed"),
    ("sample-seed-2^70", lambda c: _sample(c, seed=2 ** 70), "seed"),
    ("sample-schedule-unknown", lambda c: _sample(c, schedule="cosine"), "schedule"),
    ("sample-block-swap-below-auto", lambda c: _sample(c, block_swap=-5), "block_swap"),
    ("sample-conditioning-wrong-type", lambda c: _sample(c, conditioning=torch.zeros(1, 4, 8)), "conditioning"),
    ("sample-source-wrong-type", lambda c: _sample(c, source=torch.zeros(1, 48, 5, 4, 4)), "source"),
    ("sample-source-latents-nan",
     lambda c: _sample(c, source=_src_with(c, source_latents=_nan(c["src"].source_latents))), "NaN"),
    ("decode-latent-4d", lambda c: _decode(c, c["src"].source_latents[0]), "latent"),
    ("decode-latent-nan", lambda c: _decode(c, _nan(c["src"].source_latents)), "NaN"),
    ("decode-latent-channels", lambda c: _decode(c, c["src"].source_latents[:, :4]), "channels"),
    ("judge-frame-count", lambda c: (lambda: c["nodes"]["KiwiToyJudge"]().judge(c["frames"][:3], c["example"])),
     "frames"),
    ("judge-nan", lambda c: (lambda: c["nodes"]["KiwiToyJudge"]().judge(_nan(c["frames"]), c["example"])), "NaN"),
    ("toy-example-kind-unknown", lambda c: (lambda: c["nodes"]["KiwiToyExample"]().make(seed=1, kind="explode")),
     "explode"),
    ("toy-example-seed-negative", lambda c: (lambda: c["nodes"]["KiwiToyExample"]().make(seed=-1, kind="remove")),
     "seed"),
]


@pytest.mark.parametrize("build,words", [pytest.param(b, w, id=i) for i, b, w in CASES])
def test_every_bad_node_input_is_a_clear_error(chain, build, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # a node that wrote a file would leave it here
    e = assert_clear_error(build(chain))
    assert words.lower() in str(e).lower(), str(e)[:500]
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("kind,name", [
    pytest.param("kiwi-release", "../outside_release", id="release-dotdot"),
    pytest.param("kiwi-release", "/etc", id="release-absolute"),
    pytest.param("dit", "../../outside/dit.safetensors", id="dit-dotdot"),
    pytest.param("lora", "/etc/passwd", id="lora-absolute"),
    pytest.param("vae", "sub/../../outside/vae.safetensors", id="vae-dotdot-inside"),
])
def test_model_names_cannot_leave_the_model_folders(tmp_path, monkeypatch, kind, name):
    """A loader's name (a widget value a crafted workflow or API call can set freely) never reaches a file
    outside ComfyUI's model folders, even when that file exists."""
    from comfy_kiwi.comfyui import adapter as comfy_adapter, model_folders
    models = tmp_path / "models"
    for sub in ("kiwi", "diffusion_models", "vae", "loras"):
        (models / sub).mkdir(parents=True)
    (tmp_path / "outside_release").mkdir()
    (tmp_path / "outside").mkdir()
    for f in ("dit.safetensors", "vae.safetensors"):
        (tmp_path / "outside" / f).write_bytes(b"x")
    monkeypatch.setattr(comfy_adapter, "_models_dir", str(models))
    e = assert_clear_error(lambda: model_folders.resolve(kind, name))
    assert "outside" in str(e) or "inside" in str(e), str(e)
