"""The judge / reward / reference nodes: declarations and thin calls into the library."""

import json

import pytest
import torch

from comfy_kiwi.judging import JudgeError, VLMRequest
from nodes import judge as judge_nodes
from nodes import reference as reference_nodes
from nodes import rewards as reward_nodes

MODULES = (judge_nodes, reward_nodes, reference_nodes)


def test_node_declarations():
    ids = []
    for mod in MODULES:
        assert set(mod.NODE_CLASS_MAPPINGS) == set(mod.NODE_DISPLAY_NAME_MAPPINGS)
        for node_id, cls in mod.NODE_CLASS_MAPPINGS.items():
            ids.append(node_id)
            assert node_id.startswith("Kiwi")
            assert cls.CATEGORY in ("Kiwi Edit/Judge", "Kiwi Edit/Reference")
            assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION
            assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
            assert callable(getattr(cls, cls.FUNCTION))
            spec = cls.INPUT_TYPES()
            for section in spec.values():
                for name, decl in section.items():
                    assert decl[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert len(ids) == len(set(ids)) == 10


class Fake:
    def __init__(self, answers):
        self.answers, self.requests = list(answers), []

    def image_input_size(self, image):
        return image.shape[2], image.shape[1]

    def __call__(self, request: VLMRequest) -> str:
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1]


FRAMES = torch.rand(5, 24, 32, 3)


def test_judge_node_success_report_and_error():
    node = judge_nodes.KiwiJudge()
    fake = Fake(["Instruction Adherence: 25\nTemporal Consistency: 20\nVisual Fidelity: 20\nArtifact Absence: 10"])
    scores, overall, answers = node.judge(fake, FRAMES, FRAMES, "make it night", "imvideoedit-100", 3, 0,
                                          "rubric default", "error", 8.0, 64)
    assert overall == 75.0 and json.loads(scores)["scores"]["visual_fidelity"] == 20.0
    assert fake.requests[0].content[1][2] == 8.0                     # fps reaches the request
    bad = Fake(["no idea"])
    scores, overall, answers = node.judge(bad, FRAMES, FRAMES, "make it night", "vie-bench", 2, 0, "rubric default",
                                          "report", 0.0, 64)
    assert overall == -1.0 and json.loads(scores)["ok"] is False and "no idea" in answers
    with pytest.raises(JudgeError):
        node.judge(bad, FRAMES, FRAMES, "make it night", "vie-bench", 1, 0, "rubric default", "error", 0.0, 64)


def test_reference_nodes():
    img = torch.full((3, 24, 32, 3), 0.5)
    img[:, 4:10, 6:16] = torch.tensor([1.0, 0.0, 0.0])
    mask = torch.zeros(1, 24, 32)
    mask[0, 4:10, 6:16] = 1
    make = reference_nodes.KiwiReferenceFromMask()
    ref, used = make.make(img, mask, "local", 1, 0.5, 0, 0, "pyramid", 10)
    assert ref.shape == (1, 6, 10, 3) and bool((ref[..., 0] == 1).all()) and used.shape == (1, 24, 32)
    bg, used = make.make(img, mask, "background", -1, 0.5, 0, 1, "diffuse", 50)
    assert bg.shape == (1, 24, 32, 3) and float((bg[0, ..., 0] - 0.5).abs().max()) < 1e-5
    assert used.sum() == 8 * 12

    ground = reference_nodes.KiwiGround()
    m, box, answers = ground.ground(Fake(['{"bbox_2d": [6, 4, 16, 10]}']), img, "the red block", "object", 0,
                                    "input", "union", 2, 0)
    assert json.loads(box) == {"bbox": [6, 4, 16, 10]} and torch.equal(m, mask)
    with pytest.raises(JudgeError, match="grounding failed"):
        ground.ground(Fake(["?"]), img, "the red block", "object", 0, "input", "union", 1, 0)

    q = reference_nodes.KiwiReferenceQuality()
    assert q.check(Fake(["7"]), ref, img, "add a red block", "local", 0, 6.0, 2, 0, "error")[:2] == (7.0, True)
    assert q.check(Fake(["??"]), ref, img, "add a red block", "local", 0, 6.0, 1, 0, "report")[:2] == (-1.0, False)
    seen = Fake(["7"])
    q.check(seen, ref, img, "add a red block", "local", 0, 6.0, 1, 0, "error", source=img * 0)
    assert [c[1] for c in seen.requests[0].content if c[0] == "text"][0] == "Source image:"


def test_sam_nodes_segment_the_grounded_box():
    from comfy_kiwi.errors import CheckpointError, InputError
    from comfy_kiwi.judging import Box, load_sam
    from comfy_kiwi.testing.tiny_sam import tiny_sam_folder
    img = torch.rand(2, 40, 56, 3)
    sam = reference_nodes.KiwiSAMLoader().load(str(tiny_sam_folder()), "cpu")[0]
    (mask,) = reference_nodes.KiwiSegmentBox().segment(sam, img, '{"bbox": [8, 4, 40, 30]}', 1)
    want = load_sam(tiny_sam_folder(), device="cpu")(img[1], Box(8, 4, 40, 30))
    assert mask.shape == (1, 40, 56) and torch.equal(mask[0], want)
    with pytest.raises(InputError, match="box must be JSON"):
        reference_nodes.KiwiSegmentBox().segment(sam, img, "[8, 4, 40, 30]", 0)
    with pytest.raises(CheckpointError, match="SAM"):
        reference_nodes.KiwiSAMLoader().load("/nonexistent/sam", "cpu")


@pytest.fixture(scope="module")
def clip():
    from comfy_kiwi.testing.tiny_clip import tiny_clip_files
    return reward_nodes.KiwiCLIPLoader().load(str(tiny_clip_files().clip), "auto", "cpu")[0]


def test_reward_and_dedupe_nodes(clip):
    r_if, r_sp, pick, weighted, tc = reward_nodes.KiwiRewards().score(
        clip, FRAMES, FRAMES.flip(1), "a red car", "a blue car", 1.0, 2.0, 0.0, 0.5, 4, "mean_embedding")
    assert weighted == pytest.approx(r_if + 2 * r_sp + 0.5 * tc, abs=1e-5) and pick == 0.0
    refs = torch.stack([FRAMES[0], FRAMES[0], FRAMES[1]])
    kept, report = reference_nodes.KiwiReferenceDedupe().dedupe(clip, refs, 0.999)
    assert kept.shape[0] == 2 and json.loads(report)["kept"] == [0, 2]


def test_vlm_loader_node():
    from comfy_kiwi.testing.tiny_qwen import tiny_kiwi_files
    vlm = judge_nodes.KiwiVLMLoader().load(str(tiny_kiwi_files().base), "fp32", "cpu", 4, 3136, 3136)[0]
    assert vlm.settings.max_frames == 4 and vlm.dtype == torch.float32
