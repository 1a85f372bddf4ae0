"""ImVideoEdit's part of test_method_parity (its own tiny Wan2.1 models folder): nodes, `python -m comfy_kiwi edit
--imvideoedit` (``--save-latents``) and the trainer's evaluation sampling give identical latents."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file

from comfy_kiwi.cli import main
from comfy_kiwi.methods import imvideoedit as ive
from comfy_kiwi.testing.tiny_release import tiny_video_frames
from comfy_kiwi.video_io import read_video, write_video

from test_imvideoedit_nodes import CAPTION, env, parts, run  # noqa: F401  (the module fixture: tiny Wan2.1 models)

STEPS, SEED, SHIFT, TEXT_LEN = 2, 3, 5.0, 16


def test_imvideoedit_nodes_cli_and_trainer_sample_the_same(env, tmp_path):  # noqa: F811
    from trainer.methods.imvideoedit import ImVideoEditMethod, ImVideoEditModule
    c, models = env["classes"], env["models"]
    video = tmp_path / "source.mp4"
    write_video(video, tiny_video_frames(5, 64, 64), fps=8)
    frames, _ = read_video(video, max_frames=81)
    dit, vae, umt5 = parts(c)
    (handle,) = run(c, "KiwiImVideoEditLoader", "ive_tiny.safetensors", dit)
    (images, *_) = run(c, "KiwiPrepareFrames", frames, 921600, 81, "trim")
    (source,) = run(c, "KiwiEncodeSource", vae, images, "model default", False)
    (cond,) = run(c, "KiwiUMT5Encode", umt5, CAPTION, TEXT_LEN)
    (nodes,) = run(c, "KiwiImVideoEditSampler", handle, cond, source, SEED, STEPS, SHIFT, "kiwi")

    out = tmp_path / "latents.safetensors"
    assert main(["edit", "--imvideoedit", str(models / "loras" / "ive_tiny.safetensors"),
                 "--model", str(models / "diffusion_models" / "wan21_tiny.safetensors"),
                 "--vae", str(models / "vae" / "wan_2.1_tiny.safetensors"),
                 "--text-encoder", str(models / "text_encoders" / "umt5-tiny"), "--text-len", str(TEXT_LEN),
                 "--video", str(video), "--instruction", CAPTION, "--out", str(tmp_path / "out.mp4"),
                 "--steps", str(STEPS), "--seed", str(SEED), "--shift", str(SHIFT), "--device", "cpu",
                 "--dtype", "fp32", "--attention", "sdpa", "--save-latents", str(out)]) == 0
    assert torch.equal(nodes, load_file(str(out))["latents"])

    trained = copy.deepcopy(dit.model)            # the trainer's DiT carries the modules for good
    module = ImVideoEditModule(trained, ive.attach(trained, models / "loras" / "ive_tiny.safetensors"))
    batch = {"source": source.source_latents, "context": cond.context}
    trainer = ImVideoEditMethod.sample(None, module, batch, STEPS, SHIFT, SEED)   # reads nothing of its config
    assert torch.equal(nodes, trainer.float())
