"""One entry point per method: the nodes, `python -m comfy_kiwi edit` (``--save-latents``) and the trainer's evaluation
sampling give identical latents for the same inputs (the same tiny release, weights files, video and settings)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_kiwi.cli import main
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.video_io import read_video, write_video

from test_imvideoedit_nodes import run
from test_viva_rvedit_nodes import RELEASE, env  # noqa: F401  (the module fixture: tiny models + weights)

INSTRUCTION = "Make the square red."
STEPS, SEED, SHIFT = 2, 3, 5.0


@pytest.fixture(scope="module")
def video(env, tmp_path_factory):  # noqa: F811
    """The source as a file (for the CLI) and as the frames the CLI reads back, prepared as the CLI prepares them."""
    path = tmp_path_factory.mktemp("parity") / "source.mp4"
    write_video(path, env["frames"], fps=8)
    frames, _ = read_video(path, max_frames=81)
    (prepared, *_) = run(env["classes"], "KiwiPrepareFrames", frames, 921600, 81, "trim")
    return path, prepared


def models() -> Path:
    return Path(comfy_adapter._models_dir)


def cli_latents(tmp_path, video_path, *extra) -> torch.Tensor:
    out = tmp_path / "latents.safetensors"
    assert main(["edit", "--model", str(models() / "kiwi" / RELEASE), "--video", str(video_path),
                 "--instruction", INSTRUCTION, "--out", str(tmp_path / "out.mp4"), "--steps", str(STEPS),
                 "--seed", str(SEED), "--shift", str(SHIFT), "--device", "cpu", "--dtype", "fp32",
                 "--attention", "sdpa", "--save-latents", str(out), *map(str, extra)]) == 0
    return load_file(str(out))["latents"]


def test_viva_nodes_cli_and_trainer_sample_the_same(env, video, tmp_path):  # noqa: F811
    from comfy_kiwi.methods import viva
    from trainer.methods.viva import viva_sample
    c, dit = env["classes"], env["dit"]
    path, frames = video
    weights_file = models() / "loras" / "viva_tiny.safetensors"
    (weights,) = run(c, "KiwiVIVALoader", weights_file.name, dit)
    (cond,) = run(c, "KiwiVIVAEncode", env["mllm"], weights, frames, INSTRUCTION, True)
    (src,) = run(c, "KiwiEncodeSource", env["vae"], frames, "model default", False)
    (nodes,) = run(c, "KiwiVIVASampler", dit, weights, cond, src, SEED, STEPS, SHIFT, viva.VIVA_CFG)
    cli = cli_latents(tmp_path, path, "--viva", weights_file)                  # --cfg left out: VIVA's 2.0
    assert torch.equal(nodes, cli)
    trained = copy.deepcopy(dit.model)                # the trainer's DiT carries the VIVA parts for good
    refiner = viva.load_viva(weights_file, trained)
    batch = {"vlm_hidden": cond.context, "vlm_hidden_null": cond.negative, "vlm_mask": cond.step_context.mask,
             "vlm_mask_null": cond.step_context.negative_mask, "source": src.source_latents}
    with torch.no_grad():
        trainer = viva_sample(trained, refiner, batch, STEPS, SHIFT, SEED)
    assert torch.equal(nodes, trainer.float())


def test_viva_with_a_reference_nodes_cli_and_trainer_sample_the_same(env, video, tmp_path):  # noqa: F811
    """Weights trained with references: the reference reaches the instructor and, as latents, the DiT, in all three."""
    from PIL import Image

    from comfy_kiwi.frames import load_image
    from comfy_kiwi.methods import viva
    from trainer.methods.viva import viva_sample
    c, dit = env["classes"], env["dit"]
    path, frames = video
    image = tmp_path / "reference.png"
    pixels = torch.rand(48, 40, 3, generator=torch.Generator().manual_seed(2))
    Image.fromarray((pixels * 255).byte().numpy()).save(image)
    reference = load_image(image)
    weights_file = models() / "loras" / "viva_ref_tiny.safetensors"
    (weights,) = run(c, "KiwiVIVALoader", weights_file.name, dit)
    (cond,) = run(c, "KiwiVIVAEncode", env["mllm"], weights, frames, INSTRUCTION, True, reference)
    (src,) = run(c, "KiwiEncodeSource", env["vae"], frames, "model default", False, reference)
    (nodes,) = run(c, "KiwiVIVASampler", dit, weights, cond, src, SEED, STEPS, SHIFT, viva.VIVA_CFG)
    assert torch.equal(nodes, cli_latents(tmp_path, path, "--viva", weights_file, "--reference", image))
    trained = copy.deepcopy(dit.model)
    refiner = viva.load_viva(weights_file, trained)
    batch = {"vlm_hidden": cond.context, "vlm_hidden_null": cond.negative, "vlm_mask": cond.step_context.mask,
             "vlm_mask_null": cond.step_context.negative_mask, "source": src.source_latents,
             "reference_latents": src.reference_latents}
    with torch.no_grad():
        assert torch.equal(nodes, viva_sample(trained, refiner, batch, STEPS, SHIFT, SEED).float())


def test_viva_on_loose_parts_nodes_and_cli_sample_the_same(env, video, tmp_path):  # noqa: F811
    """--model a DiT file with --vae and --mllm (a stock Qwen2.5-VL folder) = Kiwi DiT / VAE / MLLM Loader nodes."""
    from comfy_kiwi.methods import viva
    c = env["classes"]
    path, frames = video
    (dit,) = run(c, "KiwiDiTLoader", "kiwi_tiny_dit.safetensors", "fp32", "cpu", "sdpa")
    (vae,) = run(c, "KiwiVAELoader", "wan2.2_vae.safetensors", "fp32", "cpu")
    (mllm,) = run(c, "KiwiMLLMLoader", "qwen2.5-vl-tiny", "none", "fp32", "cpu")
    weights_file = models() / "loras" / "viva_tiny.safetensors"
    (weights,) = run(c, "KiwiVIVALoader", weights_file.name, dit)
    (cond,) = run(c, "KiwiVIVAEncode", mllm, weights, frames, INSTRUCTION, True)
    (src,) = run(c, "KiwiEncodeSource", vae, frames, "model default", False)
    (nodes,) = run(c, "KiwiVIVASampler", dit, weights, cond, src, SEED, STEPS, SHIFT, viva.VIVA_CFG)
    dit_file = models() / "diffusion_models" / "kiwi_tiny_dit.safetensors"
    cli = cli_latents(tmp_path, path, "--viva", weights_file, "--model", dit_file,      # this --model wins (the last)
                      "--vae", models() / "vae" / "wan2.2_vae.safetensors",
                      "--mllm", models() / "text_encoders" / "qwen2.5-vl-tiny")
    assert torch.equal(nodes, cli)


def test_rvedit_nodes_cli_and_trainer_sample_the_same(env, video, tmp_path):  # noqa: F811
    from comfy_kiwi.methods.rvedit_streams import load_rvedit, trained_mllm
    from trainer.methods.rvedit import RVEDiTMethod, RVEDiTModule, RVEDiTOptions
    c, dit = env["classes"], env["dit"]
    path, frames = video
    weights_file = models() / "loras" / "rvedit_tiny.safetensors"
    streams, mllm = run(c, "KiwiRVEDiTLoader", weights_file.name, dit, -1, env["mllm"])
    (cond,) = run(c, "KiwiMLLMEncode", mllm, frames, INSTRUCTION, False)
    (umt5,) = run(c, "KiwiUMT5Loader", "umt5-tiny", "fp32", "cpu")
    (x_l,) = run(c, "KiwiUMT5Encode", umt5, INSTRUCTION, 16)
    (src,) = run(c, "KiwiEncodeSource", env["vae"], frames, "model default", False)
    (nodes,) = run(c, "KiwiRVEDiTSampler", dit, streams, cond, src, SEED, STEPS, SHIFT, 1.0, x_l)
    cli = cli_latents(tmp_path, path, "--rvedit", weights_file, "--text-encoder", models() / "text_encoders" /
                      "umt5-tiny", "--text-len", 16)
    assert torch.equal(nodes, cli)
    # the trainer's evaluation: its module (routing installed for good) with the run's MLLM, on the cached batch
    trained = copy.deepcopy(dit.model)
    module = RVEDiTModule(trained, load_rvedit(weights_file, trained), None, trained_mllm(env["mllm"], weights_file),
                          RVEDiTOptions())
    batch = {"prompt": [INSTRUCTION], "mllm_frames": (frames * 255).round().to(torch.uint8)[None],
             "source": src.source_latents, "context": x_l.context}
    assert torch.equal(batch["mllm_frames"][0].float() / 255, frames)          # the cache's uint8 frames lose nothing
    trainer = RVEDiTMethod.sample(None, module, batch, STEPS, SHIFT, SEED)     # reads nothing of the method's config
    assert torch.equal(nodes, trainer.float())


def test_kiwi_edit_nodes_cli_and_trainer_sample_the_same(env, video, tmp_path):  # noqa: F811
    from trainer.methods.kiwi import KiwiMethod
    from trainer.methods.kiwi_module import KiwiModule
    c, dit = env["classes"], env["dit"]
    path, frames = video
    (cond,) = run(c, "KiwiMLLMEncode", env["mllm"], frames, INSTRUCTION, False)
    (src,) = run(c, "KiwiEncodeSource", env["vae"], frames, "model default", False)
    (nodes,) = run(c, "KiwiSampler", dit, cond, src, SEED, STEPS, SHIFT, 1.0, 1.0, "kiwi", 0)
    assert torch.equal(nodes, cli_latents(tmp_path, path))
    # the trainer's evaluation on a cached batch (frozen MLLM: the context is cached; no reference image)
    module = KiwiModule(dit.model, None, None, env["vae"], source_input=True)
    batch = {"context": cond.context, "source": src.source_latents, "target": torch.zeros_like(src.source_latents)}
    trainer = KiwiMethod.sample(None, module, batch, STEPS, SHIFT, SEED)       # reads nothing of the method's config
    assert torch.equal(nodes, trainer.float())


@pytest.mark.parametrize("extra,message", [
    (["--viva", "W", "--imvideoedit", "W"], "--imvideoedit and --viva: give one method's weights"),
    (["--viva", "W", "--rvedit", "W"], "--viva and --rvedit: give one method's weights"),
    (["--rvedit", "W"], "--rvedit also needs --text-encoder"),
    (["--rvedit", "W", "--text-encoder", "T", "--reference", "R"], "--rvedit edits from the instruction alone"),
    (["--rvedit", "W", "--text-encoder", "T", "--vae", "V"], "drop --vae"),
    (["--rvedit", "W", "--text-encoder", "T", "--model", "DIT"], "--rvedit needs --model = the Kiwi-Edit release"),
    (["--viva", "W", "--text-encoder", "T"], "drop --text-encoder"),
    (["--viva", "W", "--model", "DIT"], "also needs --vae and --mllm"),
    (["--viva", "W", "--model", "DIT", "--vae", "V"], "also needs --mllm"),
    (["--viva", "W", "--vae", "V"], "with its own VAE; drop --vae"),
    (["--viva", "W", "--text-len", "16"], "--text-len applies with --imvideoedit or --rvedit"),
    (["--viva", "W", "--window", "5"], "--window is a Kiwi-Edit/InstructX option"),
    (["--viva", "W", "--reference", "R", "--reference", "R"], "at most one --reference"),
    (["--mllm", "M"], "--mllm only applies with --viva"),
    (["--split", "2", "--viva", "W"], "--split only applies with --rvedit"),
    (["--viva", "W", "--model", None], "--viva needs --model"),
])
def test_wrong_method_combinations_are_named(env, video, tmp_path, capsys, extra, message):  # noqa: F811
    """Named before anything loads (the files given need not even be weights)."""
    dummy = tmp_path / "dummy.safetensors"
    dummy.write_bytes(b"x")
    names = {"W": dummy, "T": tmp_path, "R": dummy, "V": dummy, "M": tmp_path, "DIT": dummy}
    args = {"--model": str(models() / "kiwi" / RELEASE), "--video": str(video[0]), "--instruction": INSTRUCTION,
            "--out": str(tmp_path / "out.mp4")}
    rest = []
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag == "--model":
            args[flag] = value and str(names[value])
        else:
            rest += [flag, str(names.get(value, value))]
    argv = ["edit", *(x for k, v in args.items() if v is not None for x in (k, v)), *rest]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error:") and message in err, err
