"""InstructX through its one entry point (``methods.instructx``): the Kiwi Long Video Edit node and
`python -m comfy_kiwi edit --window` sample every window with identical latents, and the trainer's evaluation of the
first window (the ``kiwi`` method, which InstructX presets train) gives that window's latents too."""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.cli import main
from comfy_kiwi.methods import instructx, kiwi_edit
from comfy_kiwi.video_io import read_video, write_video

from test_imvideoedit_nodes import run
from test_method_parity import INSTRUCTION, SEED, SHIFT, STEPS, models
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
