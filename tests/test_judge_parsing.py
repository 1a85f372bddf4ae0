"""Reading judge answers: JSON, lines, prose, code fences, fractions, decimals, malformed, out of range."""

import pytest

from comfy_kiwi.errors import InputError
from comfy_kiwi.judging.parsing import AnswerParseError, find_json_values, parse_boxes, parse_scores
from comfy_kiwi.judging.rubrics import get_rubric

OPENVE = get_rubric("openve", "local_change")
VIE = get_rubric("vie-bench")
IMV = get_rubric("imvideoedit-100")
QUALITY = get_rubric("reference-quality")


def test_well_formed_lines():
    text = "Instruction Compliance: 4\nConsistency & Detail Fidelity: 3\nVisual Quality & Stability: 5"
    assert parse_scores(text, OPENVE) == {"instruction_compliance": 4.0, "consistency_detail_fidelity": 3.0,
                                          "visual_quality_stability": 5.0}


def test_well_formed_json_by_key_and_by_label():
    by_key = '{"instruction_following": 8, "source_preservation": 7, "edit_quality": 9}'
    by_label = '{"Instruction Following": "8", "Source Preservation": 7.0, "Edit Quality": {"score": 9, "why": "x"}}'
    want = {"instruction_following": 8.0, "source_preservation": 7.0, "edit_quality": 9.0}
    assert parse_scores(by_key, VIE.for_inputs(False)) == want
    assert parse_scores(by_label, VIE.for_inputs(False)) == want


def test_code_fence_and_prose_around_json():
    text = ("Let me look at both videos carefully.\n```json\n{\n  \"scores\": {\"instruction_adherence\": 24,\n"
            "  \"temporal_consistency\": 27, \"visual_fidelity\": 20, \"artifact_absence\": 12,}\n}\n```\n"
            "The edit is decent overall.")
    assert parse_scores(text, IMV) == {"instruction_adherence": 24.0, "temporal_consistency": 27.0,
                                       "visual_fidelity": 20.0, "artifact_absence": 12.0}


def test_markdown_lines_with_prose_fractions_and_decimals():
    text = ("Sure! Here is my assessment of the edit.\n\n"
            "**Instruction Compliance** (1-5): 4/5 - the jacket is now red in every frame.\n"
            "- **Consistency & Detail Fidelity**: 3.5\n"
            "* Visual Quality and Stability = 2\n\nHope this helps.")
    assert parse_scores(text, OPENVE) == {"instruction_compliance": 4.0, "consistency_detail_fidelity": 3.5,
                                          "visual_quality_stability": 2.0}


def test_echoed_scale_is_not_a_score_and_last_answer_wins():
    text = ("Instruction Compliance: 1-5\nConsistency & Detail Fidelity: 1-5\nVisual Quality & Stability: 1-5\n\n"
            "My scores:\nInstruction Compliance: 2\nConsistency & Detail Fidelity: 2\nVisual Quality & Stability: 1")
    assert parse_scores(text, OPENVE) == {"instruction_compliance": 2.0, "consistency_detail_fidelity": 2.0,
                                          "visual_quality_stability": 1.0}


def test_truncate_applies_the_released_int_float_rule():
    text = "Instruction Compliance: 4.9\nConsistency & Detail Fidelity: 3.2\nVisual Quality & Stability: 5"
    assert parse_scores(text, OPENVE, truncate=True)["instruction_compliance"] == 4.0
    assert parse_scores(text, OPENVE)["instruction_compliance"] == 4.9


@pytest.mark.parametrize("text, reason", [
    ("Instruction Compliance: 6\nConsistency & Detail Fidelity: 3\nVisual Quality & Stability: 5", "outside"),
    ("Instruction Compliance: 0\nConsistency & Detail Fidelity: 3\nVisual Quality & Stability: 5", "outside"),
    ("Instruction Compliance: 8/10\nConsistency & Detail Fidelity: 3\nVisual Quality & Stability: 5", "denominator"),
    ('{"instruction_compliance": 9, "consistency_detail_fidelity": 3, "visual_quality_stability": 5}', "outside"),
    ("Instruction Compliance: 4\nConsistency & Detail Fidelity: 3", "Visual Quality & Stability"),
    ("The edit looks great, I would rate it highly!", "no score"),
    ("Instruction Compliance: good\nConsistency & Detail Fidelity: fair\nVisual Quality & Stability: poor", "no score"),
    ("", "empty"),
    ("Instruction Compliance: 1-5\nConsistency & Detail Fidelity: 1-5\nVisual Quality & Stability: 1 to 5",
     "no score"),
    ('{"instruction_compliance": true, "consistency_detail_fidelity": 3, "visual_quality_stability": 5}',
     "not a score"),
])
def test_malformed_and_out_of_range_answers_are_rejected(text, reason):
    with pytest.raises(AnswerParseError, match=reason):
        parse_scores(text, OPENVE)
    assert issubclass(AnswerParseError, InputError)


def test_single_score_forms():
    for text, want in [("7", 7.0), ("Score: 8/10", 8.0), ("**6**.", 6.0), ("Reference Quality: 9", 9.0),
                       ('{"score": 5}', 5.0), ("Rating: 3 out of 10", 3.0)]:
        assert parse_scores(text, QUALITY) == {"score": want}, text
    for bad in ("I think 7 or 8", "Score: 11", "Score: 0"):
        with pytest.raises(AnswerParseError):
            parse_scores(bad, QUALITY)


def test_find_json_values_skips_broken_chunks():
    values = find_json_values('noise {broken: [} then {"a": 1} and [1, 2]')
    assert values == [{"a": 1}, [1, 2]]


def test_boxes_in_all_accepted_forms():
    assert parse_boxes('```json\n[{"bbox_2d": [10, 20, 110, 220], "label": "cat"},'
                       ' {"bbox_2d": [5, 6, 7, 8], "label": "dog"}]\n```') == [(10, 20, 110, 220), (5, 6, 7, 8)]
    assert parse_boxes('{"bbox": [1.5, 2, 3, 4]}') == [(1.5, 2.0, 3.0, 4.0)]
    assert parse_boxes("the object is at (12,30),(40,88)") == [(12, 30, 40, 88)]
    assert parse_boxes("Box: [3, 4, 50, 60].") == [(3, 4, 50, 60)]
    with pytest.raises(AnswerParseError, match="no bounding box"):
        parse_boxes("I cannot find it.")
