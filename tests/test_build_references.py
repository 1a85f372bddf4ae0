"""python -m trainer.data build-references on a small generated set: drops with reasons, resume, idempotence."""

import csv
import json
import re

import pytest
import torch

from comfy_kiwi.frames import load_image
from comfy_kiwi.judging import VLMRequest, load_clip
from comfy_kiwi.testing.tiny_clip import tiny_clip_files
from comfy_kiwi.video_io import write_video
from trainer.data.build_references import BuildSettings, build_references

H, W = 32, 48


def _video(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(1, H, W, 3, generator=g).mul(0.2).add(0.4).repeat(5, 1, 1, 1)
    frames[:, 8:20, 12 + seed % 5:30, :] = torch.tensor([0.9, 0.2, 0.1])    # an object
    return frames


class FakeVLM:
    """Grounding: the object's box (none for prompts saying "invisible"); quality: 3 for "blurry", else 8."""

    def __init__(self):
        self.calls = 0

    def image_input_size(self, image):
        return image.shape[2], image.shape[1]

    def __call__(self, request: VLMRequest) -> str:
        self.calls += 1
        text = request.texts()
        if "bbox_2d" in text:
            return "I see nothing." if "invisible" in text else '```json\n[{"bbox_2d": [12, 8, 30, 20]}]\n```'
        return "Reference Quality: 3" if "blurry" in text else "Reference Quality: 8"


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        write_video(root / "videos" / f"src{i}.mp4", _video(i), 8)
        write_video(root / "videos" / f"tgt{i}.mp4", _video(i + 10), 8)
    rows = [
        ("videos/src0.mp4", "videos/tgt0.mp4", "add a red box on the table"),             # written (subject)
        ("videos/src1.mp4", "videos/tgt1.mp4", "change the background to a beach"),       # written (background)
        ("videos/src2.mp4", "videos/tgt2.mp4", "add a blurry red box"),                   # quality drop
        ("videos/src3.mp4", "videos/missing.mp4", "add a cat"),                           # input drop
        ("videos/src3.mp4", "videos/tgt3.mp4", "add an invisible ghost"),                  # grounding drop
        ("videos/src0.mp4", "videos/tgt0.mp4", "insert a red box"),                        # near-duplicate of row 1
    ]
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src_video", "tgt_video", "prompt"])
        w.writerows(rows)
    return root


def _snapshot(root, out, drops, refs):
    return (out.read_bytes(), drops.read_bytes(), sorted((p.name, p.read_bytes()) for p in refs.glob("*.png")))


def test_build_references_end_to_end(dataset):
    clip = load_clip(tiny_clip_files().clip, device="cpu")
    out, refs = dataset / "train_ref.csv", dataset / "refs"
    drops = dataset / "train_ref.drops.jsonl"
    fake = FakeVLM()
    summary = build_references(dataset / "train.csv", out, refs, fake, clip, progress=False)
    assert summary.to_dict() == {"total": 6, "already_done": 0, "written": 2,
                                 "dropped": {"quality": 1, "input": 1, "grounding": 1, "dedupe": 1},
                                 "dropped_total": 4}
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == ["add a red box on the table", "change the background to a beach"]
    assert all(re.fullmatch(r"refs/ref_00000[01]_[0-9a-f]{10}\.png", r["ref_image"]) for r in rows)
    subject = load_image(dataset / rows[0]["ref_image"])
    assert subject.shape == (1, 12, 18, 3)                      # the grounded box, tightly
    background = load_image(dataset / rows[1]["ref_image"])
    assert background.shape == (1, H, W, 3)
    assert float(background[0, 8:20, 12:30, 0].max()) < 0.75    # the red object is filled away
    entries = [json.loads(line) for line in drops.read_text().splitlines()]
    by_row = {e["row"]: e for e in entries}
    assert by_row[3]["stage"] == "quality" and "below the threshold 6" in by_row[3]["reason"]
    assert by_row[4]["stage"] == "input" and "tgt_video not found" in by_row[4]["reason"]
    assert by_row[5]["stage"] == "grounding" and "no bounding box" in by_row[5]["reason"]
    assert by_row[6]["stage"] == "dedupe" and rows[0]["ref_image"] in by_row[6]["reason"]

    # idempotent: a second run does nothing and changes nothing
    before = _snapshot(dataset, out, drops, refs)
    again = FakeVLM()
    summary2 = build_references(dataset / "train.csv", out, refs, again, clip, progress=False)
    assert summary2.written == 0 and summary2.skipped == 6 and again.calls == 0
    assert _snapshot(dataset, out, drops, refs) == before

    # retrying the drops reproduces them (deterministic) without touching the written rows
    summary3 = build_references(dataset / "train.csv", out, refs, FakeVLM(), clip, progress=False,
                                settings=BuildSettings(retry_drops=True))
    assert summary3.written == 0 and sum(summary3.dropped.values()) == 4
    assert _snapshot(dataset, out, drops, refs) == before


def test_resume_after_a_partial_run(dataset):
    out, refs = dataset / "part.csv", dataset / "refs"
    first = build_references(dataset / "train.csv", out, refs, FakeVLM(), None, progress=False,
                             settings=BuildSettings(limit=2, check_quality=False))
    assert first.written == 2
    rest = build_references(dataset / "train.csv", out, refs, FakeVLM(), None, progress=False,
                            settings=BuildSettings(check_quality=False))
    assert rest.skipped == 2 and rest.written == 2      # without CLIP no dedupe; quality check off
    with open(out, newline="") as f:
        prompts = [r["prompt"] for r in csv.DictReader(f)]
    assert prompts == ["add a red box on the table", "change the background to a beach", "add a blurry red box",
                       "insert a red box"]


def test_cli_with_the_tiny_vlm_drops_rows_with_reasons(dataset, capsys):
    from comfy_kiwi.testing.tiny_qwen import tiny_kiwi_files
    from trainer.data.__main__ import main
    code = main(["build-references", "--csv", str(dataset / "train.csv"), "--out", str(dataset / "o.csv"),
                 "--images-dir", str(dataset / "r"), "--vlm", str(tiny_kiwi_files().base),
                 "--clip", str(tiny_clip_files().clip), "--attempts", "1", "--limit", "2", "--device", "cpu",
                 "--max-pixels", "3136", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 0 and summary["dropped"] == {"grounding": 2}
    drops = [json.loads(x) for x in (dataset / "o.drops.jsonl").read_text().splitlines()]
    assert [d["row"] for d in drops] == [1, 2] and all("grounding failed" in d["reason"] for d in drops)
    with open(dataset / "o.csv", newline="") as f:
        assert next(csv.reader(f)) == ["src_video", "tgt_video", "prompt", "ref_image"]
