"""A release whose embedder folder holds only config.json (what the instruct-only converter writes
for a stage that trained no reference embedder) loads without that branch; only a reference input
then fails, with an error that names the missing branch."""

import shutil

import pytest
import torch

from comfy_kiwi.cli import main
from comfy_kiwi.errors import InputError
from comfy_kiwi.loading.inspect import describe
from comfy_kiwi.pipeline import EditPipeline, EditSettings
from comfy_kiwi.testing.tiny_release import tiny_video_frames, write_tiny_kiwi_release

SETTINGS = EditSettings(steps=2, max_pixels=64 * 64 * 2)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    full = write_tiny_kiwi_release(tmp_path_factory.mktemp("rel") / "full", "instruct-reference")
    weightless = tmp_path_factory.mktemp("rel") / "weightless"
    shutil.copytree(full, weightless)
    for f in (weightless / "ref_embedder").glob("*.safetensors"):
        f.unlink()
    assert [p.name for p in (weightless / "ref_embedder").iterdir()] == ["config.json"]
    return full, weightless


def test_release_loads_without_the_branch_and_edits_as_the_full_release(releases):
    full, weightless = releases
    pipe = EditPipeline.from_pretrained(weightless, dtype=torch.float32, device="cpu")
    assert pipe.dit.ref_embedder is None and pipe.dit.source_embedder is not None
    frames = tiny_video_frames()
    got = pipe.edit(frames, "make the square red", None, SETTINGS)
    want = EditPipeline.from_pretrained(full, dtype=torch.float32, device="cpu").edit(
        frames, "make the square red", None, SETTINGS)
    torch.testing.assert_close(got.latents, want.latents)


def test_only_a_reference_input_gets_a_clear_error(releases):
    pipe = EditPipeline.from_pretrained(releases[1], dtype=torch.float32, device="cpu")
    frames = tiny_video_frames()
    with pytest.raises(InputError, match="no reference branch"):
        pipe.edit(frames, "add the cat", [frames[0]], SETTINGS)


def test_info_reports_the_config_only_folder(releases, capsys):
    info = describe(releases[1])
    assert info["parts"]["ref_embedder"]["weights"] is None
    assert "note" not in info["parts"]["source_embedder"]          # the trained branch is described as before
    assert main(["info", str(releases[1])]) == 0
    assert "no such branch" in capsys.readouterr().out
