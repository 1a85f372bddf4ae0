"""Rubrics as data: names, the cap rule, overall figures, aggregation."""

import pytest

from comfy_kiwi.errors import InputError
from comfy_kiwi.judging import aggregate
from comfy_kiwi.judging.rubrics import (OPENVE_CATEGORIES, RUBRIC_NAMES, apply_cap, finalize_scores, get_rubric,
                                        overall_score)
from comfy_kiwi.judging.vlm_judge import rubric_prompt


def test_every_name_resolves_and_aliases_work():
    for name in RUBRIC_NAMES:
        assert get_rubric(name).dimensions
    assert get_rubric("viva").name == "vie-bench"
    assert get_rubric("openve", "local_remove").category == "local_remove"
    assert get_rubric("openve-background_change").category == "background_change"
    assert get_rubric("refvie", "background").name == "refvie-background"
    with pytest.raises(InputError, match="needs a category"):
        get_rubric("openve")
    with pytest.raises(InputError, match="unknown rubric"):
        get_rubric("gpt-score")
    assert {get_rubric("openve", c).category for c in OPENVE_CATEGORIES} == set(OPENVE_CATEGORIES)


def test_published_criteria_names_and_ranges():
    sub = get_rubric("refvie-subject")
    assert [d.label for d in sub.dimensions] == ["Identity Consistency & Compliance",
                                                 "Temporal Consistency & Texture Fidelity",
                                                 "Physical Integration & Tracking"]
    bg = get_rubric("refvie-background")
    assert [d.label for d in bg.dimensions] == ["Reference Fidelity & Preservation",
                                                "Matting Quality & Temporal Stability", "Visual Harmony & Perspective"]
    ov = get_rubric("openve", "global_style")
    assert [d.label for d in ov.dimensions] == ["Instruction Compliance", "Consistency & Detail Fidelity",
                                                "Visual Quality & Stability"]
    assert all((d.low, d.high) == (1, 5) for d in ov.dimensions + sub.dimensions)
    imv = get_rubric("imvideoedit-100")
    assert [(d.label, d.high) for d in imv.dimensions] == [("Instruction Adherence", 30), ("Temporal Consistency", 30),
                                                           ("Visual Fidelity", 25), ("Artifact Absence", 15)]
    assert imv.overall_range == (0, 100)


def test_refvie_cap_lowers_later_scores_to_the_first():
    r = get_rubric("refvie-subject")
    keys = r.keys
    scores = {keys[0]: 2.0, keys[1]: 4.0, keys[2]: 1.0}
    capped, lowered = apply_cap(r, scores)
    assert capped == {keys[0]: 2.0, keys[1]: 2.0, keys[2]: 1.0}
    assert lowered == {keys[1]: 4.0}
    final, overall, lowered = finalize_scores(r, scores)           # RefVIE: cap on by default
    assert final[keys[1]] == 2.0 and overall == pytest.approx(5.0 / 3.0)
    final, overall, lowered = finalize_scores(r, scores, enforce_cap=False)
    assert final[keys[1]] == 4.0 and lowered == {} and overall == pytest.approx(7.0 / 3.0)


def test_openve_states_the_rule_but_does_not_enforce_it_by_default():
    r = get_rubric("openve", "local_add")
    scores = dict(zip(r.keys, (2.0, 5.0, 4.0)))
    assert finalize_scores(r, scores)[1] == pytest.approx(11 / 3)
    assert finalize_scores(r, scores, enforce_cap=True)[1] == pytest.approx(2.0)
    assert "may not be higher than Instruction Compliance" in rubric_prompt(r, "add a hat")


def test_overall_per_rubric():
    vie = get_rubric("vie-bench")
    four = dict(zip(vie.keys, (8, 6, 7, 9)))
    assert overall_score(vie, four) == pytest.approx(7.5)
    three = vie.for_inputs(False)
    assert three.keys == ("instruction_following", "source_preservation", "edit_quality")
    assert overall_score(three, four) == pytest.approx(7.0)
    imv = get_rubric("imvideoedit-100")
    assert overall_score(imv, dict(zip(imv.keys, (24, 27, 20, 12)))) == 83.0
    ov = get_rubric("openve", "local_change")
    assert overall_score(ov, dict(zip(ov.keys, (4, 3, 5)))) == pytest.approx(4.0)
    with pytest.raises(InputError, match="outside"):
        finalize_scores(imv, dict(zip(imv.keys, (24, 27, 26, 12))))


def test_reference_rubrics_need_a_reference():
    with pytest.raises(InputError, match="give the reference"):
        get_rubric("refvie-background").for_inputs(False)


def test_aggregate_like_the_released_evaluations():
    def res(rubric, cat, scores, ok=True):
        r = get_rubric(rubric, cat)
        if not ok:
            return {"rubric": r.name, "category": cat, "ok": False, "scores": None, "overall": None}
        s, o, _ = finalize_scores(r, dict(zip(r.keys, scores)))
        return {"rubric": r.name, "category": cat, "ok": True, "scores": s, "overall": o}

    out = aggregate([res("openve", "local_add", (4, 3, 5)), res("openve", "local_add", (2, 2, 2)),
                     res("openve", "global_style", (5, 5, 5)), res("openve", "global_style", None, ok=False),
                     res("refvie", "subject", (3, 3, 3)), res("refvie", "background", (5, 4, 3))])
    add = out["groups"]["openve/local_add"]
    assert add["n"] == 2 and add["pooled_mean"] == pytest.approx(18 / 6)
    assert out["groups"]["openve/global_style"]["failed"] == 1
    assert out["openve_overall"] == pytest.approx((3.0 + 5.0) / 2)
    assert out["refvie_overall"] == pytest.approx(21 / 6)


def _band_values(band: str) -> set[int]:
    """The integer scores a band label such as "9-10", "5" or "90-100% of a criterion's points" covers."""
    import re
    lo, hi = re.match(r"(\d+)(?:-(\d+))?", band).groups()
    return set(range(int(lo), int(hi or lo) + 1))


@pytest.mark.parametrize("name, scale", [("refvie-subject", range(1, 6)), ("refvie-background", range(1, 6)),
                                         ("openve-local_add", range(1, 6)), ("vie-bench", range(0, 11)),
                                         ("imvideoedit-100", range(0, 101)), ("rvedit-100", range(1, 101))])
def test_level_anchors_cover_each_papers_scale_once(name, scale):
    """Each benchmark's anchors tile its scale exactly (every score in one band, none outside; ImVideoEdit's in
    percent of a criterion's points) and reach the judge in the prompt. Mutation tried: VIE-Bench's "7-8" band
    written "7-9" → 9 sits in two bands and this fails."""
    r = get_rubric(name)
    covered = [_band_values(band) for band, _ in r.levels]
    assert sorted(v for c in covered for v in c) == list(scale)
    lows = {d.low for d in r.dimensions}
    if name != "imvideoedit-100":
        assert lows == {scale[0]} and {d.high for d in r.dimensions} == {scale[-1]}
    prompt = rubric_prompt(r, "add a hat")
    assert "Score levels (for every criterion):" in prompt
    assert all(f"- {band}: {meaning}" in prompt for band, meaning in r.levels)


def test_rvedit_protocol_three_criteria_on_1_to_100():
    r = get_rubric("rvedit")
    assert r.name == "rvedit-100" and len(r.dimensions) == 3 and r.max_side == 512
    assert all((d.low, d.high) == (1, 100) for d in r.dimensions) and r.overall_range == (1, 100)
    assert finalize_scores(r, dict(zip(r.keys, (90, 60, 75))))[1] == pytest.approx(75.0)
    with pytest.raises(InputError, match="outside 1-100"):
        finalize_scores(r, dict(zip(r.keys, (0, 60, 75))))
