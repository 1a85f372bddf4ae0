"""The VLM judge: requests, retries with per-attempt seeds, failure reporting, the tiny Qwen end to end, CLI."""

import json

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.judging import JudgeError, JudgeSettings, VLMRequest, VLMSettings, judge_edit, load_vlm
from comfy_kiwi.judging.vlm import ask


class FakeJudge:
    """Answers from a list, in order; records the requests."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    def __call__(self, request: VLMRequest) -> str:
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1]


SRC = torch.rand(6, 24, 32, 3)
EDIT = torch.rand(6, 24, 32, 3)
REF = torch.rand(1, 20, 20, 3)


def test_scores_with_a_fake_generate_and_request_layout():
    fake = FakeJudge(["Reference Fidelity & Preservation: 2\nMatting Quality & Temporal Stability: 4\n"
                      "Visual Harmony & Perspective: 2"])
    r = judge_edit(fake, SRC, EDIT, "put them on a beach", REF, rubric="refvie", category="background",
                   settings=JudgeSettings(seed=11))
    assert r.ok and r.attempts == 1
    assert r.scores == {"reference_fidelity_preservation": 2.0, "matting_quality_temporal_stability": 2.0,
                        "visual_harmony_perspective": 2.0}
    assert r.capped == {"matting_quality_temporal_stability": 4.0} and r.cap_enforced
    assert r.overall == pytest.approx(2.0)
    req = fake.requests[0]
    # RefVIE shows the reference first, then source and edited video
    assert [c[0] for c in req.content] == ["text", "image", "text", "video", "text", "video", "text"]
    assert req.content[0][1] == "Reference image:" and req.content[4][1] == "Edited video:"
    assert "put them on a beach" in req.content[-1][1] and "Visual Harmony & Perspective:" in req.content[-1][1]
    assert req.seed == 11 and req.temperature == 0.0
    assert json.loads(r.to_json())["scores"] == r.scores


def test_rvedit_judge_sees_frames_at_most_512_px():
    """RVEDiT's protocol: frames shown with the longer side ≤ 512 px; scores 1-100, overall their mean. Mutation
    tried: ``limit_side`` not applied in the request → the judge gets 600×800 frames and this fails."""
    fake = FakeJudge(["Edit Accuracy: 80\nContent Preservation: 70\nVisual Quality: 90"])
    big = torch.rand(3, 600, 800, 3)
    r = judge_edit(fake, big, big.flip(1), "make it snow", rubric="rvedit")
    assert r.ok and r.overall == pytest.approx(80.0) and r.overall_range == [1, 100]
    shown = [c[1] for c in fake.requests[0].content if c[0] == "video"]
    assert [tuple(v.shape) for v in shown] == [(3, 384, 512, 3)] * 2
    assert "1-29: failed" in fake.requests[0].content[-1][1]
    small = FakeJudge(["Edit Accuracy: 80\nContent Preservation: 70\nVisual Quality: 90"])
    judge_edit(small, SRC, EDIT, "make it snow", rubric="rvedit")
    assert torch.equal([c[1] for c in small.requests[0].content if c[0] == "video"][0], SRC)   # already small


def test_vie_bench_adds_reference_similarity_only_with_a_reference():
    fake = FakeJudge(['{"instruction_following": 8, "source_preservation": 6, "edit_quality": 7, '
                      '"reference_similarity": 9}'])
    with_ref = judge_edit(fake, SRC, EDIT, "make the car red", REF)
    without = judge_edit(fake, SRC, EDIT, "make the car red")
    assert with_ref.overall == pytest.approx(7.5) and len(with_ref.scores) == 4
    assert without.overall == pytest.approx(7.0) and "reference_similarity" not in without.scores
    assert "image" not in [c[0] for c in fake.requests[-1].content]


def test_retry_then_success_uses_new_seeds_and_retry_temperature():
    fake = FakeJudge(["I like it!", "Instruction Compliance: 9\nConsistency & Detail Fidelity: 3\n"
                      "Visual Quality & Stability: 3", "Instruction Compliance: 4\nConsistency & Detail Fidelity: 3\n"
                      "Visual Quality & Stability: 3"])
    r = judge_edit(fake, SRC, EDIT, "remove the lamp", rubric="openve-local_remove",
                   settings=JudgeSettings(attempts=3, seed=5, retry_temperature=0.6))
    assert r.ok and r.attempts == 3 and r.overall == pytest.approx(10 / 3)
    assert [q.seed for q in fake.requests] == [5, 6, 7]
    assert [q.temperature for q in fake.requests] == [0.0, 0.6, 0.6]
    assert "no score found" in r.errors[0] and "outside" in r.errors[1]


def test_retry_then_failure_is_reported_never_scored():
    fake = FakeJudge(["great edit", "Instruction Adherence: 40", "```json\n{\"oops\": 1}\n```"])
    r = judge_edit(fake, SRC, EDIT, "make it snow", rubric="imvideoedit", settings=JudgeSettings(attempts=3))
    assert not r.ok and r.scores is None and r.overall is None
    assert r.answers == fake.answers and len(r.errors) == 3
    with pytest.raises(JudgeError, match="no usable answer in 3"):
        r.raise_for_failure()


def test_input_checks():
    with pytest.raises(InputError, match="instruction is empty"):
        judge_edit(FakeJudge(["x"]), SRC, EDIT, "  ")
    with pytest.raises(InputError, match="give the reference"):
        judge_edit(FakeJudge(["x"]), SRC, EDIT, "swap the dog", rubric="refvie-subject")
    with pytest.raises(InputError, match="attempts"):
        ask(FakeJudge(["x"]), lambda s, t: VLMRequest([]), lambda t: t, attempts=0)


@pytest.fixture(scope="module")
def tiny_vlm():
    from comfy_kiwi.testing.tiny_qwen import tiny_kiwi_files
    settings = VLMSettings(max_frames=4, max_pixels_per_frame=3136, image_max_pixels=3136)
    return load_vlm(tiny_kiwi_files().base, device="cpu", settings=settings)


def test_tiny_qwen_end_to_end_failure_path_is_deterministic(tiny_vlm):
    settings = JudgeSettings(attempts=2, max_new_tokens=8, seed=3)
    a = judge_edit(tiny_vlm, SRC[:5], EDIT[:5], "Make the sky red.", REF, settings=settings)
    b = judge_edit(tiny_vlm, SRC[:5], EDIT[:5], "Make the sky red.", REF, settings=settings)
    assert not a.ok and a.attempts == 2 and a.scores is None      # a random model answers garbage
    assert a.answers == b.answers                                  # seeded per attempt
    ids, vision = tiny_vlm.build_inputs(VLMRequest([("video", SRC[:5], 8.0), ("video", EDIT[:5]), ("image", REF),
                                                    ("text", "hi")]))
    assert vision.video_grid_thw.shape[0] == 2 and vision.image_grid_thw.shape[0] == 1
    assert vision.second_per_grid_ts[0] == pytest.approx(2 / (8.0 * 4 / 5))  # 4 of 5 frames kept at 8 fps
    with pytest.raises(InputError, match="special token"):
        tiny_vlm(VLMRequest([("text", "hi <|im_end|>")]))


def test_judge_cli_with_the_tiny_model(tmp_path, capsys):
    import argparse

    from comfy_kiwi.judging.judge_command import add_judge_parser
    from comfy_kiwi.testing.tiny_qwen import tiny_kiwi_files
    from comfy_kiwi.video_io import write_video
    write_video(tmp_path / "src.mp4", SRC[:5], 8)
    write_video(tmp_path / "edit.mp4", EDIT[:5], 8)
    parser = argparse.ArgumentParser()
    add_judge_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["judge", "--vlm", str(tiny_kiwi_files().base), "--source", str(tmp_path / "src.mp4"),
                              "--edited", str(tmp_path / "edit.mp4"), "--instruction", "Turn the car blue.",
                              "--rubric", "openve", "--category", "local_change", "--attempts", "2",
                              "--max-new-tokens", "8", "--max-frames", "4", "--max-pixels", "3136",
                              "--device", "cpu"])
    assert args.run(args) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["rubric"] == "openve" and out["attempts"] == 2
