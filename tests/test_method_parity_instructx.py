"""InstructX through its one entry point (``methods.instructx``): the Kiwi Long Video Edit node and
`python -m comfy_kiwi edit --window` sample every window with identical latents, and the trainer's evaluation of the
first window (the ``kiwi`` method, which InstructX presets train) gives that window's latents too. An InstructX run
exported as a release edits with a reference alike through the nodes and `edit` (the preset read from its files)."""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.cli import main
from comfy_kiwi.methods import instructx, kiwi_edit
from comfy_kiwi.video_io import read_video, write_video

from test_imvideoedit_nodes import run
from test_method_parity import INSTRUCTION, SEED, SHIFT, STEPS, models, video  # noqa: F401  (fixture)
from test_viva_rvedit_nodes import RELEASE, env  # noqa: F401  (the module fixture: tiny models + weights)

WINDOW = 5


@pytest.fixture
def window_latents(monkeypatch):
    """The latents of every ``kiwi_edit.sample`` call (each InstructX window), in order."""
    seen = []
    original = kiwi_edit.sample

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.detach().float().cpu().clone())
        return out
    monkeypatch.setattr(kiwi_edit, "sample", spy)
    return seen


def test_instructx_node_cli_and_trainer_sample_the_same(env, tmp_path, window_latents):  # noqa: F811
    from trainer.methods.kiwi import KiwiMethod
    from trainer.methods.kiwi_module import KiwiModule
    c, dit = env["classes"], env["dit"]
    path = tmp_path / "long.mp4"
    write_video(path, torch.cat([env["frames"], env["frames"].flip(0)[1:]]), fps=8)     # 9 frames: two windows
    frames, _ = read_video(path)
    (edited,) = run(c, "KiwiLongVideoEdit", dit, env["vae"], env["mllm"], frames, INSTRUCTION, WINDOW, 921600, SEED,
                    STEPS, SHIFT, 1.0, "kiwi")
    nodes = list(window_latents)
    assert len(nodes) == 2 and edited.shape[0] == 9
    window_latents.clear()
    assert main(["edit", "--model", str(models() / "kiwi" / RELEASE), "--video", str(path), "--instruction",
                 INSTRUCTION, "--out", str(tmp_path / "out.mp4"), "--steps", str(STEPS), "--seed", str(SEED),
                 "--shift", str(SHIFT), "--device", "cpu", "--dtype", "fp32", "--attention", "sdpa",
                 "--frames", "0", "--window", str(WINDOW)]) == 0
    assert len(window_latents) == 2
    assert all(torch.equal(a, b) for a, b in zip(nodes, window_latents))
    # the trainer's evaluation of the first window: context and source encoded as its cache holds them
    (prepared, *_) = run(c, "KiwiPrepareFrames", frames, 921600, 81, "trim")
    (cond,) = run(c, "KiwiMLLMEncode", env["mllm"], prepared[:WINDOW], INSTRUCTION, False)
    (src,) = run(c, "KiwiEncodeSource", env["vae"], prepared[:WINDOW], "model default", False)
    module = KiwiModule(dit.model, None, None, env["vae"], source_input=True)
    batch = {"context": cond.context, "source": src.source_latents, "target": torch.zeros_like(src.source_latents)}
    assert torch.equal(nodes[0], KiwiMethod.sample(None, module, batch, STEPS, SHIFT, SEED).float())


def test_instructx_load_reads_the_release_under_the_instructx_preset(tmp_path):
    """The same release folder: Kiwi-Edit's encoder refuses a reference without a reference branch, InstructX's puts
    it into the MLLM prompt (its video queries read it)."""
    from comfy_kiwi.testing.tiny_release import write_tiny_kiwi_release
    root = write_tiny_kiwi_release(tmp_path / "release", "instruct-only")
    kiwi = kiwi_edit.load(root, dtype=torch.float32, device="cpu").mllm.config
    ix = instructx.load(root, dtype=torch.float32, device="cpu").mllm.config
    assert (kiwi.reference_without_branch, ix.reference_without_branch) == ("none", "video")
    assert not ix.has_reference and ix.max_frames == kiwi.max_frames        # the release's own values win


@pytest.fixture(scope="module")
def instructx_run(env, tmp_path_factory):  # noqa: F811
    """A tiny instructx-full run (one step), exported as a release into the nodes' models folder, and a reference."""
    from PIL import Image

    from trainer.__main__ import main as trainer_main
    from trainer.config import load_config
    from trainer.loop import train
    from trainer_fixtures import tiny_preset, write_kiwi_data, write_kiwi_models
    root = tmp_path_factory.mktemp("instructx_run")
    base = write_kiwi_models(root / "models")
    toml = tiny_preset("instructx-full", root, base, write_kiwi_data(root / "data", 2),
                       schedule={"max_steps": 1, "grad_accum": 0})
    cfg = load_config(toml)
    train(cfg, log=lambda *a: None)
    release = models() / "kiwi" / "instructx-tiny-export"
    assert trainer_main(["export", "--config", str(toml), "--to", "release", "--out", str(release),
                         "--weights", str(cfg.output_dir / "kiwi.safetensors")]) == 0
    image = root / "reference.png"
    pixels = torch.rand(48, 40, 3, generator=torch.Generator().manual_seed(2))
    Image.fromarray((pixels * 255).byte().numpy()).save(image)
    return {"toml": toml, "cfg": cfg, "qwen": base["mllm"], "release": release, "image": image}


def test_an_instructx_export_edits_with_a_reference_alike_in_cli_and_nodes(env, video, instructx_run,  # noqa: F811
                                                                            tmp_path):
    """A tiny instructx-full run exported as a release records the InstructX encoder setting in
    ``mllm_encoder/config.json``; the release loader node and ``edit`` (both Kiwi-Edit's loaders, no preset given)
    read it, take a reference (it joins the MLLM prompt; its latents join the DiT) and sample identical latents.
    Mutations tried: not writing ``reference_without_branch`` in ``to_release_json`` → the export lacks it and the
    encoder refuses references; the MLLM Encode node checking ``has_reference`` again → it refuses the reference."""
    import json

    from safetensors.torch import load_file

    from comfy_kiwi.frames import load_image
    release, image = instructx_run["release"], instructx_run["image"]
    written = json.loads((release / "mllm_encoder" / "config.json").read_text())
    assert written["reference_without_branch"] == "video" and written["num_ref_queries"] == 0

    c = env["classes"]
    path, frames = video
    reference = load_image(image)
    dit, vae, mllm = run(c, "KiwiReleaseLoader", release.name, "fp32", "cpu", "sdpa")
    assert mllm.config.accepts_reference and not mllm.config.has_reference
    (cond,) = run(c, "KiwiMLLMEncode", mllm, frames, INSTRUCTION, False, reference)
    (plain,) = run(c, "KiwiMLLMEncode", mllm, frames, INSTRUCTION, False)
    assert not torch.equal(cond.context, plain.context)                  # the reference reached the context
    (src,) = run(c, "KiwiEncodeSource", vae, frames, "model default", False, reference)
    assert src.reference_latents is not None
    (nodes,) = run(c, "KiwiSampler", dit, cond, src, SEED, STEPS, SHIFT, 1.0, 1.0, "kiwi", 0)
    out = tmp_path / "latents.safetensors"
    assert main(["edit", "--model", str(release), "--video", str(path), "--reference", str(image), "--instruction",
                 INSTRUCTION, "--out", str(tmp_path / "out.mp4"), "--steps", str(STEPS), "--seed", str(SEED),
                 "--shift", str(SHIFT), "--device", "cpu", "--dtype", "fp32", "--attention", "sdpa",
                 "--save-latents", str(out)]) == 0
    assert torch.equal(nodes, load_file(str(out))["latents"])


def test_an_instructx_training_checkpoint_records_where_a_reference_goes(video, instructx_run, tmp_path):  # noqa: F811
    """The run's kiwi.safetensors (and ``export --to kiwi``) record the setting in their metadata, so the MLLM loader's
    stock Qwen + training checkpoint path takes a reference as the exported release does. Mutation tried: not
    reading the metadata in the loader → Kiwi-Edit's defaults build an untrained reference branch (shape
    mismatch); not writing it in ``export --to kiwi`` → the metadata check fails."""
    from safetensors import safe_open

    from comfy_kiwi.frames import load_image
    from comfy_kiwi.mllm.loader import load_mllm_encoder
    from trainer.__main__ import main as trainer_main
    cfg, reference = instructx_run["cfg"], load_image(instructx_run["image"])
    exported = tmp_path / "kiwi-export.safetensors"
    assert trainer_main(["export", "--config", str(instructx_run["toml"]), "--to", "kiwi", "--out", str(exported),
                         "--weights", str(cfg.output_dir / "kiwi.safetensors")]) == 0
    frames = video[1]
    release = load_mllm_encoder(instructx_run["release"], dtype=torch.float32)
    with torch.no_grad():
        want = release.encode(INSTRUCTION, frames, reference)
    for checkpoint in (cfg.output_dir / "kiwi.safetensors", exported):
        with safe_open(str(checkpoint), "pt") as f:
            assert f.metadata()["reference_without_branch"] == "video"
        encoder = load_mllm_encoder(checkpoint, base=instructx_run["qwen"], dtype=torch.float32)
        with torch.no_grad():
            assert torch.allclose(encoder.encode(INSTRUCTION, frames, reference), want, atol=1e-5, rtol=1e-4)


def test_an_instructx_export_edits_a_long_video_with_a_reference_alike(env, instructx_run, window_latents,  # noqa: F811
                                                                       tmp_path):
    """The exported InstructX release through the Kiwi Long Video Edit node and ``edit --window``, with a reference:
    every window's latents are identical, and the reference changes them. Mutation tried: ``edit --window`` dropping
    the reference → the window latents differ from the node's."""
    from comfy_kiwi.frames import load_image
    c, release, image = env["classes"], instructx_run["release"], instructx_run["image"]
    path = tmp_path / "long.mp4"
    write_video(path, torch.cat([env["frames"], env["frames"].flip(0)[1:]]), fps=8)     # 9 frames: two windows
    frames, _ = read_video(path)
    dit, vae, mllm = run(c, "KiwiReleaseLoader", release.name, "fp32", "cpu", "sdpa")
    args = (dit, vae, mllm, frames, INSTRUCTION, WINDOW, 921600, SEED, STEPS, SHIFT, 1.0, "kiwi")
    run(c, "KiwiLongVideoEdit", *args)
    plain = list(window_latents)
    window_latents.clear()
    run(c, "KiwiLongVideoEdit", *args, load_image(image))
    nodes = list(window_latents)
    window_latents.clear()
    assert main(["edit", "--model", str(release), "--video", str(path), "--reference", str(image), "--instruction",
                 INSTRUCTION, "--out", str(tmp_path / "out.mp4"), "--steps", str(STEPS), "--seed", str(SEED),
                 "--shift", str(SHIFT), "--device", "cpu", "--dtype", "fp32", "--attention", "sdpa",
                 "--frames", "0", "--window", str(WINDOW)]) == 0
    assert len(nodes) == len(window_latents) == 2
    assert all(torch.equal(a, b) for a, b in zip(nodes, window_latents))
    assert not any(torch.equal(a, b) for a, b in zip(nodes, plain))
