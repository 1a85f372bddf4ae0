"""Judging rubrics: the criteria the papers publish, written here in our own words.

A :class:`Rubric` is data: its dimensions (answer label, score range, what to look at), which inputs
the judge sees and in which order, how the per-dimension scores combine into one overall figure, and
whether the "later scores may not exceed the first" rule is enforced.

Rubrics (``get_rubric(name, category)``):

``vie-bench`` (VIVA's VIE-Bench; alias ``viva``)
    Instruction Following, Source Preservation, Edit Quality, and Reference Similarity when a
    reference image is given; each 0-10. Overall = mean of the dimensions scored (3 or 4), 0-10.
``refvie-subject`` / ``refvie-background`` (Kiwi-Edit's RefVIE-Bench; ``refvie`` + category)
    three 1-5 scores. Overall = mean of the three (after the cap), 1-5, the per-sample figure the
    release pools. Cap rule (enforced by default): the second and third scores are lowered to the
    first when they exceed it (``min(score_k, score_1)``); the original values are reported.
``openve`` + category (OpenVE-Bench: global_style, background_change, local_change, local_remove,
local_add; also ``openve-<category>``)
    Instruction Compliance, Consistency & Detail Fidelity, Visual Quality & Stability; 1-5.
    Overall = mean of the three, 1-5 (the release pools the three scores of a category). The prompt
    states the cap rule; the released evaluation does not enforce it, so neither do we by default
    (``enforce_cap=True`` turns it on).
``imvideoedit-100`` (ImVideoEdit; alias ``imvideoedit``)
    Instruction Adherence 0-30, Temporal Consistency 0-30, Visual Fidelity 0-25, Artifact Absence
    0-15. Overall = the sum, 0-100.
``rvedit-100`` (RVEDiT; alias ``rvedit``)
    three criteria scored 1-100 each (edit accuracy, content preservation, visual quality; the names are
    ours), on sampled frames shown with the longer side at most 512 px. Overall = mean of the three, 1-100.

Every rubric also carries level anchors (``levels``): what the scores of its scale mean (1-5 levels for
RefVIE and OpenVE, 0-10 bands for VIE-Bench, shares of each criterion's points for ImVideoEdit, 1-100 bands
for RVEDiT), written in our own words and shown to the judge with the criteria.
``reference-quality``
    one 1-10 score of a synthesised reference image (used by the reference quality check); the judge sees
    the source frame, the edited frame and the reference.
``edit-pair-quality``
    the filter on an edit pair before grounding (RefVIE filters its source pairs by EditScore): Semantic
    Consistency and Perceptual Quality, 0-10 each; overall = their geometric mean, 0-10 (VIEScore's rule).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["Dimension", "Rubric", "RUBRIC_NAMES", "OPENVE_CATEGORIES", "REFVIE_CATEGORIES", "get_rubric",
           "list_rubrics", "apply_cap", "overall_score", "finalize_scores"]

OPENVE_CATEGORIES = ("global_style", "background_change", "local_change", "local_remove", "local_add")
REFVIE_CATEGORIES = ("subject", "background")


@dataclass(frozen=True)
class Dimension:
    key: str                 # JSON key of the score, e.g. "instruction_following"
    label: str               # the line name the judge answers with, e.g. "Instruction Following"
    low: float
    high: float
    guide: str               # what to look at (our words)
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (self.label, self.key) + self.aliases

    def in_range(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high


@dataclass(frozen=True)
class Rubric:
    name: str
    title: str
    dimensions: tuple[Dimension, ...]
    overall: str = "mean"                 # "mean", "sum" or "geometric" (mean) of the dimension scores
    cap_to_first: bool = False            # enforce: dimensions 2.. may not exceed dimension 1
    states_cap: bool = False              # the prompt tells the judge about that rule
    category: str | None = None
    inputs: tuple[str, ...] = ("source", "edited")   # order shown to the judge ("reference" too)
    requires_reference: bool = False
    reference_only: tuple[str, ...] = ()  # dimension keys scored only when a reference is given
    role: str = ""
    task: str = ""
    levels: tuple[tuple[str, str], ...] = ()  # score anchors for every criterion: (band, what it means)
    max_side: int | None = None           # frames are shown to the judge with the longer side at most this (px)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dimensions)

    @property
    def overall_range(self) -> tuple[float, float]:
        if self.overall == "sum":
            return sum(d.low for d in self.dimensions), sum(d.high for d in self.dimensions)
        return min(d.low for d in self.dimensions), max(d.high for d in self.dimensions)

    def for_inputs(self, has_reference: bool) -> Rubric:
        """The rubric as applied to one sample: reference-only dimensions dropped without a reference;
        a missing reference for a reference rubric is an error."""
        if self.requires_reference and not has_reference:
            raise InputError(f"rubric {self.name!r} judges reference-guided edits: give the reference image.")
        if has_reference or not self.reference_only:
            return self
        dims = tuple(d for d in self.dimensions if d.key not in self.reference_only)
        inputs = tuple(i for i in self.inputs if i != "reference")
        return dataclasses.replace(self, dimensions=dims, inputs=inputs)

    def dimension(self, key: str) -> Dimension:
        for d in self.dimensions:
            if d.key == key:
                return d
        raise InputError(f"rubric {self.name!r} has no dimension {key!r}; it has {', '.join(self.keys)}.")

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "category": self.category,
                "dimensions": [{"key": d.key, "label": d.label, "range": [d.low, d.high]} for d in self.dimensions],
                "overall": self.overall, "overall_range": list(self.overall_range),
                "cap_to_first": self.cap_to_first, "levels": [list(b) for b in self.levels],
                "max_side": self.max_side}


# ---------------------------------------------------------------------------------------------
# the rubric texts
# ---------------------------------------------------------------------------------------------

_ROLE = ("You are a meticulous evaluator of AI video editing. You compare an edited video with the "
         "video it was made from and grade how well the requested edit was carried out. Be strict and "
         "consistent: reserve top marks for edits you could not improve on.")

# Level anchors: what a score means on each paper's scale, in our words. Every criterion of a rubric shares them.
_FIVE_LEVELS = (
    ("5", "excellent: nothing on this criterion to improve"),
    ("4", "good: small flaws, visible only on a close look"),
    ("3", "acceptable: clear flaws, but the criterion is mostly met"),
    ("2", "poor: major flaws; the criterion is only partly met"),
    ("1", "failed: the criterion is not met (wrong content, missing edit, or broken result)"),
)
_VIE_BANDS = (
    ("9-10", "excellent: fully met, no visible problem"),
    ("7-8", "good: met, with minor problems"),
    ("5-6", "fair: mostly met, with noticeable problems"),
    ("3-4", "poor: partly met, with major problems"),
    ("0-2", "failed: not met at all, or the result is unusable"),
)
_POINT_BANDS = (
    ("90-100% of a criterion's points", "flawless on that criterion"),
    ("70-89%", "minor shortcomings"),
    ("40-69%", "clear shortcomings, the criterion is partly met"),
    ("10-39%", "severe shortcomings"),
    ("0-9%", "the criterion is not met at all"),
)
_HUNDRED_BANDS = (
    ("90-100", "excellent: fully met, nothing to improve"),
    ("70-89", "good: met, with minor flaws"),
    ("50-69", "fair: mostly met, with noticeable flaws"),
    ("30-49", "poor: partly met, with major flaws"),
    ("1-29", "failed: not met, or the result is unusable"),
)

_VIE = Rubric(
    name="vie-bench", title="VIE-Bench (VIVA)", role=_ROLE,
    task="Grade the edited video against the editing instruction on each criterion below.",
    inputs=("source", "edited", "reference"), reference_only=("reference_similarity",), levels=_VIE_BANDS,
    dimensions=(
        Dimension("instruction_following", "Instruction Following", 0, 10,
                  "Is every part of the instruction carried out - the right change, on the right thing, in the "
                  "amount, place and style asked for? Missing, partial or wrong changes lose points."),
        Dimension("source_preservation", "Source Preservation", 0, 10,
                  "Is everything the instruction does not mention kept as in the source: identities, layout, "
                  "background, motion and camera path? Unrequested changes lose points."),
        Dimension("edit_quality", "Edit Quality", 0, 10,
                  "Does the result look natural and clean: believable appearance and lighting, sharp detail, "
                  "no flicker, warping, blur, seams or other artifacts, stable from frame to frame?"),
        Dimension("reference_similarity", "Reference Similarity", 0, 10,
                  "Does the edited content look like the reference image: same identity, shape, colours, "
                  "materials and fine details?"),
    ),
)

_REFVIE_RULE = ("If the first score is low, the second and third cannot be higher than it: an edit that brings "
                "in the wrong content earns no credit for doing it smoothly.")

_REFVIE_SUBJECT = Rubric(
    name="refvie-subject", title="RefVIE-Bench, subject edits", category="subject", role=_ROLE,
    task="The edit inserts or replaces a subject so that it looks like the reference image. Grade it on the "
         "three criteria below.",
    inputs=("reference", "source", "edited"), requires_reference=True, cap_to_first=True, states_cap=True,
    levels=_FIVE_LEVELS,
    dimensions=(
        Dimension("identity_consistency_compliance", "Identity Consistency & Compliance", 1, 5,
                  "Is the subject in the edited video recognisably the one in the reference (identity, shape, "
                  "colours, markings), and does the edit do what the instruction asks?"),
        Dimension("temporal_consistency_texture_fidelity", "Temporal Consistency & Texture Fidelity", 1, 5,
                  "Does the subject keep its look and fine texture across frames, without flicker, morphing, "
                  "smearing or loss of detail?"),
        Dimension("physical_integration_tracking", "Physical Integration & Tracking", 1, 5,
                  "Does the subject sit in the scene plausibly (scale, contact, lighting, shadows, occlusion) "
                  "and move with the scene and the camera?"),
    ),
)

_REFVIE_BACKGROUND = Rubric(
    name="refvie-background", title="RefVIE-Bench, background edits", category="background", role=_ROLE,
    task="The edit replaces the background with the scene shown in the reference image while keeping the "
         "foreground. Grade it on the three criteria below.",
    inputs=("reference", "source", "edited"), requires_reference=True, cap_to_first=True, states_cap=True,
    levels=_FIVE_LEVELS,
    dimensions=(
        Dimension("reference_fidelity_preservation", "Reference Fidelity & Preservation", 1, 5,
                  "Does the new background match the reference scene, and are the foreground subjects kept "
                  "unchanged in identity, pose and motion?"),
        Dimension("matting_quality_temporal_stability", "Matting Quality & Temporal Stability", 1, 5,
                  "Are the subject outlines clean (no halos, cut-off parts or leftovers of the old background) "
                  "and do they stay stable over time?"),
        Dimension("visual_harmony_perspective", "Visual Harmony & Perspective", 1, 5,
                  "Do foreground and new background agree in lighting, colour, scale and perspective, with "
                  "plausible camera motion?"),
    ),
)

_OPENVE_FOCUS = {
    "global_style": ("a global change of look or style (e.g. painting style, season, time of day, colour grade)",
                     "the whole frame takes on the requested look, evenly and in every frame",
                     "objects, layout and motion stay those of the source; only the look changes"),
    "background_change": ("replacing the background behind the main subjects",
                          "the background becomes what the instruction describes",
                          "the foreground subjects are untouched (identity, pose, motion) with clean outlines"),
    "local_change": ("changing one object or attribute (colour, material, kind of object, clothing, ...)",
                     "exactly the named object or attribute changes, as described",
                     "everything else is unchanged and the edited object keeps its place and motion"),
    "local_remove": ("removing an object",
                     "the object is gone in every frame, with no remnants, shadows or reflections left",
                     "the uncovered area is filled plausibly and the rest of the video is unchanged"),
    "local_add": ("adding a new object",
                  "the requested object appears, where and as the instruction describes",
                  "the rest of the video is unchanged and the new object moves coherently with the scene"),
}

_OPENVE_RULE = ("The second and third scores should not be higher than the first: an edit that does not "
                "follow the instruction earns no credit for consistency or polish.")


def _openve(category: str) -> Rubric:
    kind, follow, keep = _OPENVE_FOCUS[category]
    return Rubric(
        name="openve", title=f"OpenVE-Bench, {category}", category=category, role=_ROLE, states_cap=True,
        task=f"This edit is {kind}. Grade it on the three criteria below.",
        inputs=("source", "edited"), levels=_FIVE_LEVELS,
        dimensions=(
            Dimension("instruction_compliance", "Instruction Compliance", 1, 5,
                      f"Does the edit do what was asked? Look for: {follow}."),
            Dimension("consistency_detail_fidelity", "Consistency & Detail Fidelity", 1, 5,
                      f"Is what should stay the same preserved, with fine detail intact? Look for: {keep}."),
            Dimension("visual_quality_stability", "Visual Quality & Stability", 1, 5,
                      "Is the result sharp, natural and free of artifacts, and steady over time (no flicker, "
                      "jitter or drifting details)?"),
        ),
    )


_IMVIDEOEDIT = Rubric(
    name="imvideoedit-100", title="ImVideoEdit 100-point rubric", role=_ROLE, overall="sum",
    task="Grade the edited video on four criteria with the point budgets given; the points add up to 100.",
    inputs=("source", "edited"), levels=_POINT_BANDS,
    dimensions=(
        Dimension("instruction_adherence", "Instruction Adherence", 0, 30,
                  "How completely and precisely the instruction is carried out, and nothing else changed."),
        Dimension("temporal_consistency", "Temporal Consistency", 0, 30,
                  "Whether the edit holds steady across frames: same appearance, no flicker, popping or "
                  "drifting, motion that follows the source."),
        Dimension("visual_fidelity", "Visual Fidelity", 0, 25,
                  "Sharpness, realism and detail of the result, and faithfulness of the untouched content."),
        Dimension("artifact_absence", "Artifact Absence", 0, 15,
                  "Freedom from artifacts: seams, halos, distortions, smudges, broken geometry, noise."),
    ),
)

_RVEDIT = Rubric(
    name="rvedit-100", title="RVEDiT evaluation (1-100 on three criteria)", role=_ROLE, levels=_HUNDRED_BANDS,
    task="Grade the edited video on the three criteria below, each from 1 to 100.",
    inputs=("source", "edited"), max_side=512,
    dimensions=(
        Dimension("edit_accuracy", "Edit Accuracy", 1, 100,
                  "Is the requested change made - on the right object or region, to the right extent, as described?"),
        Dimension("content_preservation", "Content Preservation", 1, 100,
                  "Is everything the instruction does not touch kept as in the source: identities, background, "
                  "layout, motion?"),
        Dimension("visual_quality", "Visual Quality", 1, 100,
                  "Is the result natural, sharp and free of artifacts, and coherent from frame to frame?"),
    ),
)

_REFERENCE_QUALITY = Rubric(
    name="reference-quality", title="Reference image quality check",
    role="You check reference images made for training a reference-guided video editing model.",
    task="A reference image was cut out of an edited frame. Say how usable it is as the reference for this "
         "edit.",
    inputs=("source", "edited", "reference"), requires_reference=True,
    dimensions=(
        Dimension("score", "Reference Quality", 1, 10,
                  "10: it shows exactly the content the instruction brings in, complete, sharp and cleanly "
                  "separated (a subject alone on plain white; a background with no trace of the removed "
                  "foreground). 1: wrong content, cut off, mostly background clutter, or badly damaged.",
                  aliases=("quality", "rating", "overall")),
    ),
)

_EDIT_PAIR_QUALITY = Rubric(
    name="edit-pair-quality", title="Edit pair quality check (EditScore-style)", overall="geometric",
    role="You check image and video editing pairs before they are used to train an editing model.",
    task="An edited frame was made from a source frame by the instruction below. Say how good the pair is as a "
         "training example of that instruction.",
    inputs=("source", "edited"),
    dimensions=(
        Dimension("semantic_consistency", "Semantic Consistency", 0, 10,
                  "10: the edit does exactly what the instruction asks and nothing else changes. 0: the instruction "
                  "is not carried out, or the edit changes much more than asked (over-editing)."),
        Dimension("perceptual_quality", "Perceptual Quality", 0, 10,
                  "10: the edited frame looks natural and clean. 0: strong artifacts, distortions, blur or "
                  "unnatural lighting, seams around the edited region."),
    ),
)

_FIXED = {r.name: r for r in (_VIE, _REFVIE_SUBJECT, _REFVIE_BACKGROUND, _IMVIDEOEDIT, _RVEDIT, _REFERENCE_QUALITY,
                              _EDIT_PAIR_QUALITY)}
_ALIASES = {"viva": "vie-bench", "vie": "vie-bench", "imvideoedit": "imvideoedit-100", "rvedit": "rvedit-100"}
RUBRIC_NAMES = ("vie-bench", "refvie-subject", "refvie-background") + tuple(
    f"openve-{c}" for c in OPENVE_CATEGORIES) + ("imvideoedit-100", "rvedit-100", "reference-quality",
                                                 "edit-pair-quality")


def list_rubrics() -> list[str]:
    """Every selectable rubric name (OpenVE as ``openve-<category>``)."""
    return list(RUBRIC_NAMES)


def get_rubric(name: str | Rubric, category: str | None = None) -> Rubric:
    """A rubric by name; ``openve`` and ``refvie`` need a ``category`` (or the ``-<category>`` form)."""
    if isinstance(name, Rubric):
        return name
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"rubric must be a name; known: {', '.join(RUBRIC_NAMES)}.")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    cat = category.strip().lower().replace("-", "_") if isinstance(category, str) and category.strip() else None
    for family, cats in (("openve", OPENVE_CATEGORIES), ("refvie", REFVIE_CATEGORIES)):
        if key.startswith(family + "-") and key not in _FIXED:
            suffix = key[len(family) + 1:].replace("-", "_")
            if cat is not None and cat != suffix:
                raise InputError(f"rubric {name!r} names category {suffix!r} but category={category!r} was given.")
            key, cat = family, suffix
        if key == family:
            if cat not in cats:
                raise InputError(f"rubric {family!r} needs a category: one of {', '.join(cats)}"
                                 + (f" (got {category!r})." if cat else "."))
            return _openve(cat) if family == "openve" else _FIXED[f"refvie-{cat}"]
    if key in _FIXED:
        return _FIXED[key]
    raise InputError(f"unknown rubric {name!r}; known: {', '.join(RUBRIC_NAMES)} (aliases: viva, imvideoedit, "
                     "rvedit, openve + category, refvie + category).")


# ---------------------------------------------------------------------------------------------
# scores -> capped scores -> overall
# ---------------------------------------------------------------------------------------------

def apply_cap(rubric: Rubric, scores: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """The cap rule: every score after the first becomes ``min(score, first)``.

    Returns ``(capped scores, {key: original value} of the scores that were lowered)``.
    """
    first = scores[rubric.dimensions[0].key]
    out, lowered = dict(scores), {}
    for d in rubric.dimensions[1:]:
        if out[d.key] > first:
            lowered[d.key] = out[d.key]
            out[d.key] = first
    return out, lowered


def overall_score(rubric: Rubric, scores: dict[str, float]) -> float:
    """Mean (or, for the 100-point rubric, sum; for the edit-pair check, geometric mean) of the rubric's
    dimension scores."""
    values = [float(scores[d.key]) for d in rubric.dimensions]
    if rubric.overall == "sum":
        return float(sum(values))
    if rubric.overall == "geometric":          # VIEScore/EditScore style: one weak side pulls the pair down
        return float(math.prod(values) ** (1.0 / len(values)))
    return float(sum(values) / len(values))


def finalize_scores(rubric: Rubric, scores: dict[str, float], enforce_cap: bool | None = None
                    ) -> tuple[dict[str, float], float, dict[str, float]]:
    """(scores after the cap rule, overall, originals of capped scores). ``enforce_cap`` None = the
    rubric's default."""
    missing = [k for k in rubric.keys if k not in scores]
    if missing:
        raise InputError(f"rubric {rubric.name!r}: no score for {', '.join(missing)}.")
    for d in rubric.dimensions:
        if not d.in_range(float(scores[d.key])):
            raise InputError(f"rubric {rubric.name!r}: {d.label} = {scores[d.key]} is outside {d.low:g}-{d.high:g}.")
    scores = {k: float(scores[k]) for k in rubric.keys}
    cap = rubric.cap_to_first if enforce_cap is None else bool(enforce_cap)
    lowered: dict[str, float] = {}
    if cap and len(rubric.dimensions) > 1:
        scores, lowered = apply_cap(rubric, scores)
    return scores, overall_score(rubric, scores), lowered
