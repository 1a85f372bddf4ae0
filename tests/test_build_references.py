"""python -m trainer.data build-references on small generated sets: masked subject references on the clean canvas
(difference and SAM segmentation), background references that erase only the object, the size and edit-pair
filters, drops with reasons, resume, idempotence."""

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
    """Grounding: ``box`` (none for prompts saying "invisible"); edit-pair check: 3 and 4 for "sloppy", else 9
    and 8; reference quality: 3 for "blurry", else 8."""

    def __init__(self, box=(12, 8, 30, 20)):
        self.calls, self.box = 0, list(box)

    def image_input_size(self, image):
        return image.shape[2], image.shape[1]

    def __call__(self, request: VLMRequest) -> str:
        self.calls += 1
        text = request.texts()
        if "bbox_2d" in text:
            return "I see nothing." if "invisible" in text else f'```json\n[{{"bbox_2d": {self.box}}}]\n```'
        if "Semantic Consistency" in text:
            return ("Semantic Consistency: 3\nPerceptual Quality: 4" if "sloppy" in text
                    else "Semantic Consistency: 9\nPerceptual Quality: 8")
        return "Reference Quality: 3" if "blurry" in text else "Reference Quality: 8"


# the pipeline tests below use the whole box as the mask and tiny frames
BOX = {"segment": "box", "min_side": 16, "min_object_side": 8}


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
    summary = build_references(dataset / "train.csv", out, refs, fake, clip, progress=False,
                               settings=BuildSettings(**BOX))
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
    summary2 = build_references(dataset / "train.csv", out, refs, again, clip, progress=False,
                                settings=BuildSettings(**BOX))
    assert summary2.written == 0 and summary2.skipped == 6 and again.calls == 0
    assert _snapshot(dataset, out, drops, refs) == before

    # retrying the drops reproduces them (deterministic) without touching the written rows
    summary3 = build_references(dataset / "train.csv", out, refs, FakeVLM(), clip, progress=False,
                                settings=BuildSettings(retry_drops=True, **BOX))
    assert summary3.written == 0 and sum(summary3.dropped.values()) == 4
    assert _snapshot(dataset, out, drops, refs) == before


def test_resume_after_a_partial_run(dataset):
    out, refs = dataset / "part.csv", dataset / "refs"
    first = build_references(dataset / "train.csv", out, refs, FakeVLM(), None, progress=False,
                             settings=BuildSettings(limit=2, check_quality=False, **BOX))
    assert first.written == 2
    rest = build_references(dataset / "train.csv", out, refs, FakeVLM(), None, progress=False,
                            settings=BuildSettings(check_quality=False, **BOX))
    assert rest.skipped == 2 and rest.written == 2      # without CLIP no dedupe; quality check off
    with open(out, newline="") as f:
        prompts = [r["prompt"] for r in csv.DictReader(f)]
    assert prompts == ["add a red box on the table", "change the background to a beach", "add a blurry red box",
                       "insert a red box"]


def test_cli_with_the_tiny_vlm_drops_rows_with_reasons(dataset, capsys):
    from comfy_kiwi.testing.tiny_qwen import tiny_kiwi_files
    from comfy_kiwi.testing.tiny_sam import tiny_sam_folder
    from trainer.data.__main__ import main
    code = main(["build-references", "--csv", str(dataset / "train.csv"), "--out", str(dataset / "o.csv"),
                 "--images-dir", str(dataset / "r"), "--vlm", str(tiny_kiwi_files().base),
                 "--clip", str(tiny_clip_files().clip), "--attempts", "1", "--limit", "2", "--device", "cpu",
                 "--max-pixels", "3136", "--no-progress", "--no-pair-check", "--min-side", "16",
                 "--sam", str(tiny_sam_folder())])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 0 and summary["dropped"] == {"grounding": 2}
    drops = [json.loads(x) for x in (dataset / "o.drops.jsonl").read_text().splitlines()]
    assert [d["row"] for d in drops] == [1, 2] and all("grounding failed" in d["reason"] for d in drops)
    with open(dataset / "o.csv", newline="") as f:
        assert next(csv.reader(f)) == ["src_video", "tgt_video", "prompt", "ref_image"]


# --------------------------------------------------------------------------------------------------
# masked references from a folder of edit pairs (PNG: lossless, so pixels can be compared exactly)
# --------------------------------------------------------------------------------------------------

PH, PW = 64, 96
OBJECT = (0.9, 0.1, 0.1)
GROUNDED = (24, 10, 76, 54)            # the box the fake VLM grounds: larger than the object


def _pair(seed: int, size=(PH, PW)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, target, object mask): a textured background; the edit adds a red ellipse."""
    h, w = size
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(h, w, 3, generator=g).mul(0.4).add(0.3)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    mask = ((yy - 32) / 14.0) ** 2 + ((xx - 50) / 20.0) ** 2 <= 1
    target = source.clone()
    target[mask] = torch.tensor(OBJECT)
    return source, target, mask


def _png(image: torch.Tensor, path):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().to(torch.uint8).numpy()).save(path)


@pytest.fixture()
def pairs(tmp_path):
    """A folder of edit pairs: a subject edit, a background edit, a sloppy edit (fails the pair check) and a
    4:1 strip (fails the aspect-ratio filter)."""
    root = tmp_path / "pairs"
    rows = [("add a red ball on the table", (PH, PW)), ("change the background to a beach", (PH, PW)),
            ("add a sloppy red ball", (PH, PW)), ("add a red ball to the strip", (32, 128))]
    with open(root.parent / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src_video", "tgt_video", "prompt"])
        for i, (prompt, size) in enumerate(rows):
            source, target, _ = _pair(i, size)
            _png(source, root / f"src{i}.png")
            _png(target, root / f"tgt{i}.png")
            w.writerow([f"pairs/src{i}.png", f"pairs/tgt{i}.png", prompt])
    return tmp_path


def _cli(root, monkeypatch, capsys, *extra):
    """``python -m trainer.data build-references`` with the VLM replaced by the fake (its answers are fixed)."""
    import comfy_kiwi.judging as judging
    from trainer.data.__main__ import main
    monkeypatch.setattr(judging, "load_vlm", lambda *a, **k: FakeVLM(GROUNDED))
    code = main(["build-references", "--csv", str(root / "pairs.csv"), "--out", str(root / "out.csv"),
                 "--images-dir", str(root / "refs"), "--vlm", str(root / "no-vlm-needed"), "--min-side", "32",
                 "--no-progress", *extra])
    assert code == 0
    with open(root / "out.csv", newline="") as f:
        rows = {r["prompt"]: r for r in csv.DictReader(f)}
    drops = {json.loads(x)["prompt"]: json.loads(x) for x in (root / "out.drops.jsonl").read_text().splitlines()}
    return json.loads(capsys.readouterr().out), rows, drops


def _frame(root, row, column):
    return load_image(root / row[column])[0]


def test_cli_subject_references_are_the_masked_object_on_the_canvas(pairs, monkeypatch, capsys):
    """The subject reference is the segmented object (the ellipse, not its grounded box) on the clean canvas;
    the background reference erases only the object; the pair check and the aspect-ratio filter drop rows.
    Mutations tried: pixels outside the mask kept from the frame (``torch.where`` arms swapped in
    local_reference) and the background hole made from the box instead of the mask — each fails here."""
    summary, rows, drops = _cli(pairs, monkeypatch, capsys, "--segment", "difference", "--canvas", "0", "1", "0",
                                "--mode", "auto")
    assert summary["written"] == 2 and summary["dropped"] == {"pair": 1, "resolution": 1}
    assert drops["add a sloppy red ball"]["stage"] == "pair" and "below the threshold 6" in \
        drops["add a sloppy red ball"]["reason"]
    assert "aspect ratio 4.00 > 3" in drops["add a red ball to the strip"]["reason"]

    _, target, mask = _pair(0)
    target = load_image(pairs / "pairs" / "tgt0.png")[0]             # the 8-bit frame the tool read
    ref = _frame(pairs, rows["add a red ball on the table"], "ref_image")
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    assert ref.shape == (y1 - y0, x1 - x0, 3)                         # the object's tight box, not GROUNDED
    inside = mask[y0:y1, x0:x1]
    assert torch.equal(ref[inside], target[y0:y1, x0:x1][inside])     # the object's own pixels
    assert bool((ref[~inside] == torch.tensor([0.0, 1.0, 0.0])).all())   # the clean canvas everywhere else
    assert int((~inside).sum()) > 0.15 * inside.numel()               # (an ellipse leaves corners to check)

    background = _frame(pairs, rows["change the background to a beach"], "ref_image")
    _, _, mask1 = _pair(1)
    target1 = load_image(pairs / "pairs" / "tgt1.png")[0]
    assert torch.equal(background[~mask1], target1[~mask1])          # only the object is erased ...
    assert bool(((background[mask1] - torch.tensor(OBJECT)).abs().amax(-1) > 0.2).all())   # ... and it is gone


def test_cli_with_sam_writes_the_sam_masked_object(pairs, monkeypatch, capsys):
    """--sam FOLDER: the grounded box is segmented by SAM (a tiny random one, loaded from its local folder);
    the reference holds the frame's pixels exactly where SAM's mask (computed here straight through
    transformers) is on, and the canvas everywhere else."""
    from comfy_kiwi.judging import Box
    from comfy_kiwi.testing.tiny_sam import reference_box_mask, tiny_sam_folder
    summary, rows, _ = _cli(pairs, monkeypatch, capsys, "--sam", str(tiny_sam_folder()), "--mode", "subject",
                            "--min-object-side", "1", "--max-object-aspect", "100", "--limit", "1")
    assert summary["written"] == 1
    target = load_image(pairs / "pairs" / "tgt0.png")[0]
    mask = reference_box_mask(tiny_sam_folder(), target, Box(*GROUNDED)).bool()
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    ref = _frame(pairs, rows["add a red ball on the table"], "ref_image")
    assert ref.shape == (y1 - y0, x1 - x0, 3)
    inside = mask[y0:y1, x0:x1]
    assert torch.equal(ref[inside], target[y0:y1, x0:x1][inside])
    assert bool((ref[~inside] == 1.0).all()) and bool((~inside).any())


def test_sam_segmentation_needs_a_sam_folder(pairs):
    from comfy_kiwi.errors import InputError
    with pytest.raises(InputError, match="--sam FOLDER"):
        build_references(pairs / "pairs.csv", pairs / "o.csv", pairs / "r", FakeVLM(), progress=False)
