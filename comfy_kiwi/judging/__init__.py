"""Judging edits and synthesising references: VLM judges with the papers' rubrics, CLIP/PickScore
rewards and metrics, grounding, reference images (Kiwi-Edit's RefVIE recipe).

Modules, one concept each:

=====================  =================================================================
rubrics                the rubrics as data; cap rule; overall per rubric
parsing                scores and boxes out of free-form answers
vlm                    a local Qwen2.5-VL: requests -> answers; the shared retry loop
vlm_judge              judge_edit: one edit scored with one rubric
aggregate              benchmark figures over many judge results
clip_models            local CLIP / PickScore folders, preprocessing without torchvision
rewards                R_IF, R_SP, PickScore, temporal consistency, weighted sum
grounding              bounding boxes from the VLM -> Box + MASK
segmentation           a grounded box -> object mask (SAM from a local folder; difference; box)
fill                   hole filling (push-pull pyramid, diffusion)
reference_synthesis    local (cut-out on white) and background (foreground removed) references
reference_quality      VLM quality scores of an edit pair and of a reference, CLIP near-duplicate removal
judge_command          ``python -m comfy_kiwi judge``
=====================  =================================================================
"""

from .aggregate import aggregate
from .clip_models import ClipModel, ClipPreprocess, load_clip
from .fill import diffusion_fill, fill_hole, pyramid_fill
from .grounding import Box, GroundingResult, box_to_mask, ground, mask_to_box, parse_box_answer
from .parsing import AnswerParseError, parse_boxes, parse_scores
from .reference_quality import (DedupeResult, QualityResult, check_edit_pair, check_reference_quality,
                                dedupe_features, dedupe_references)
from .reference_synthesis import background_reference, hole_mask, local_reference, select_frame, select_mask
from .rewards import (DEFAULT_WEIGHTS, ClipRewards, InstructionFollowingReward, PickScoreReward, Reward,
                      RewardSettings, SourcePreservationReward, TemporalConsistencyReward, WeightedReward)
from .rubrics import (OPENVE_CATEGORIES, REFVIE_CATEGORIES, RUBRIC_NAMES, Dimension, Rubric, apply_cap,
                      finalize_scores, get_rubric, list_rubrics, overall_score)
from .segmentation import SEGMENTERS, SamSegmenter, difference_mask, load_sam, segment_box
from .vlm import VLM, AskResult, VLMRequest, VLMSettings, ask, load_vlm
from .vlm_judge import JudgeError, JudgeResult, JudgeSettings, judge_edit, score_answer

__all__ = [
    "aggregate", "ClipModel", "ClipPreprocess", "load_clip", "diffusion_fill", "fill_hole", "pyramid_fill",
    "Box", "GroundingResult", "box_to_mask", "ground", "mask_to_box", "parse_box_answer", "AnswerParseError",
    "parse_boxes", "parse_scores", "DedupeResult", "QualityResult", "check_reference_quality", "dedupe_features",
    "dedupe_references", "background_reference", "hole_mask", "local_reference", "select_frame", "select_mask",
    "DEFAULT_WEIGHTS", "ClipRewards", "InstructionFollowingReward", "PickScoreReward", "Reward", "RewardSettings",
    "SourcePreservationReward", "TemporalConsistencyReward", "WeightedReward", "OPENVE_CATEGORIES",
    "REFVIE_CATEGORIES", "RUBRIC_NAMES", "Dimension", "Rubric", "apply_cap", "finalize_scores", "get_rubric",
    "list_rubrics", "overall_score", "VLM", "AskResult", "VLMRequest", "VLMSettings", "ask", "load_vlm",
    "JudgeError", "JudgeResult", "JudgeSettings", "judge_edit", "score_answer", "check_edit_pair", "SEGMENTERS",
    "SamSegmenter", "difference_mask", "load_sam", "segment_box",
]
