"""The embedded toy model: it loads through the normal loaders, really edits held-out toy videos better
than returning the source, and `python -m comfy_kiwi edit` uses it when no --model is given."""

import json

import numpy as np
import pytest
import torch

from comfy_kiwi.pipeline import EditSettings
from comfy_kiwi.toy.data import example_frames, example_reference
from comfy_kiwi.toy.examples import DEMO_INSTRUCTION, DEMO_VIDEO, sidecar_path
from comfy_kiwi.toy.judge import score_edit
from comfy_kiwi.toy.release import DEFAULT_MODEL_DIR, load_toy_pipeline
from comfy_kiwi.toy.world import make_example, split_seeds

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "transformer").is_dir(),
                                reason="the embedded toy model is not built (python bench/toy_train_default.py --install)")


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_toy_pipeline()


def test_default_model_is_small_and_a_release_folder():
    # a demo model this project trains itself; the DiT must be 384 wide (docs/TOY_BENCHMARK.md), stored in fp16
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    assert size < 16 * 2 ** 20
    for part in ("transformer", "vae", "mllm_encoder", "processor", "source_embedder", "ref_embedder"):
        assert (DEFAULT_MODEL_DIR / part).is_dir()


def test_default_model_edits_held_out_examples_better_than_identity(pipe):
    """Remove and background edits (the kinds the shipped budget learned best; docs/TOY_BENCHMARK.md has
    every kind): the model's edits score clearly above returning the source, whose overall is 0."""
    settings = EditSettings(steps=20, progress=False)
    edited, identity = [], []
    for seed in split_seeds("test", 4, start=500):
        ex = make_example(seed, kinds=("remove", "background"))
        result = pipe.edit(example_frames(ex), ex.instruction, example_reference(ex), settings)
        edited.append(score_edit(result.frames, ex))
        identity.append(score_edit(ex.source, ex))
    assert np.mean([s.overall for s in identity]) == 0.0
    assert np.mean([s.compliance for s in edited]) > 0.3, [s.as_dict() for s in edited]
    assert np.mean([s.overall for s in edited]) > 0.1, [s.as_dict() for s in edited]


def test_edit_command_without_model_uses_the_toy_model_and_judges(tmp_path, capsys):
    from comfy_kiwi.cli import main
    assert DEMO_VIDEO.is_file() and sidecar_path(DEMO_VIDEO).is_file()
    out = tmp_path / "edited.mp4"
    code = main(["edit", "--video", str(DEMO_VIDEO), "--instruction", DEMO_INSTRUCTION, "--out", str(out),
                 "--steps", "20"])
    assert code == 0 and out.is_file()
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["frames"] == 17 and report["size"] == [32, 32]
    assert set(report["toy_judge"]) == {"compliance", "preservation", "temporal", "overall", "cleanliness"}
    assert report["toy_judge"]["preservation"] > 0.8 and report["toy_judge"]["overall"] > 0.3


@pytest.mark.parametrize("name", ["toy_edit.json", "toy_reference_edit.json"])
def test_toy_workflows_run_and_judge(name, tmp_path):
    """The toy workflows through the pack's nodes (as in tests/test_workflows.py), with the embedded model."""
    import comfy_harness as H
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    H.setup_environment(tmp_path)                # preview images go to tmp_path, not the working folder
    pack = H.load_pack(root)
    classes = {**pack.NODE_CLASS_MAPPINGS, **H.NATIVE_DOUBLES}
    wf = json.loads((root / "workflows" / name).read_text())
    for node in wf["nodes"]:                 # fewer sampling steps keep the test fast
        if node["type"] == "KiwiSampler":
            node["widgets_values"][2] = 20
    prompt = H.ui_to_prompt(wf, H.definitions(classes))
    results = H.execute_prompt(prompt, classes)
    (judge,) = [results[nid] for nid, n in prompt.items() if n["class_type"] == "KiwiToyJudge"]
    report = json.loads(judge[0])
    assert set(report) >= {"instruction", "compliance", "preservation", "temporal", "overall", "cleanliness"}
    assert 0.0 <= report["overall"] <= 1.0


def test_info_describes_the_toy_folder(capsys):
    from comfy_kiwi.cli import main
    assert main(["info", str(DEFAULT_MODEL_DIR)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "kiwi-toy-release" and info["parts"]["vae"]["_class_name"] == "KiwiToyPatchCodec"


def test_command_line_judge_scores_cleanliness_on_the_raw_frames():
    """The edit command's toy judge must see the raw edited frames (mutation tried: scoring the snapped labels
    only, which reported cleanliness 1.0 for a visibly noisy edit)."""
    from comfy_kiwi.toy.examples import judge_file_edit
    from comfy_kiwi.toy.judge import cleanliness
    from comfy_kiwi.video_io import read_video
    frames, _fps = read_video(DEMO_VIDEO)
    noisy = (frames + 0.05 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    scores = judge_file_edit(DEMO_VIDEO, DEMO_INSTRUCTION, noisy)
    assert scores["cleanliness"] == pytest.approx(cleanliness(noisy)) and scores["cleanliness"] < 0.9
