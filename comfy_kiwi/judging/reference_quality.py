"""Filtering synthesised references: a VLM quality score and CLIP near-duplicate removal.

* :func:`check_reference_quality` shows the judge the source frame (when given), the edited frame and the
  reference, with the instruction, and asks for one 1-10 score (rubric ``reference-quality``); ``passed`` is
  ``score >= threshold``. Unparseable answers are retried and finally reported as a failure
  (``ok=False``, ``passed=False``), never scored.
* :func:`check_edit_pair` is the filter on the edit pair itself, before anything is grounded (RefVIE filters
  its source pairs with EditScore; here the local VLM with the ``edit-pair-quality`` rubric: semantic
  consistency and perceptual quality 0-10, geometric mean).
* :func:`dedupe_features` / :func:`dedupe_references` keep references in order and drop one whose
  CLIP image embedding has cosine similarity ``>= threshold`` with an already kept one (or with any
  of the ``existing`` embeddings, e.g. references kept by an earlier run).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..mllm.preprocess import as_frames
from .rubrics import get_rubric
from .vlm import GenerateFn, ask
from .vlm_judge import build_judge_request, score_answer

__all__ = ["QualityResult", "check_reference_quality", "check_edit_pair", "DedupeResult", "dedupe_features",
           "dedupe_references"]

_KIND_TEXT = {
    "local": "This reference should show the subject the edit brings in, alone on a plain white background.",
    "background": "This reference should show the background scene of the edited frame with the foreground "
                  "subjects removed and the gap filled in.",
}


@dataclass
class QualityResult:
    ok: bool
    score: float | None
    passed: bool
    threshold: float
    answers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "score": self.score, "passed": self.passed, "threshold": self.threshold,
                "answers": self.answers, "errors": self.errors}


def _scored_check(generate, rubric_name: str, visuals: dict, instruction: str, threshold: float, attempts: int,
                  seed: int, temperature: float, retry_temperature: float, max_new_tokens: int,
                  extra: str = "") -> QualityResult:
    """Ask ``rubric_name`` about ``visuals`` and compare its overall score with ``threshold``."""
    rubric = get_rubric(rubric_name)
    low, high = rubric.overall_range
    if not low <= float(threshold) <= high:
        raise InputError(f"{rubric.title}: threshold must be in {low:g}..{high:g}; got {threshold}.")
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError(f"{rubric.title} needs the editing instruction.")

    def make(s: int, t: float):
        return build_judge_request(rubric, instruction, visuals, s, t, max_new_tokens, extra=extra)

    asked = ask(generate, make, lambda text: score_answer(text, rubric)[1], attempts, seed, temperature,
                retry_temperature)
    score = float(asked.value) if asked.ok else None
    return QualityResult(asked.ok, score, bool(asked.ok and score >= float(threshold)), float(threshold),
                         asked.answers, asked.errors)


def _one_image(image, what: str) -> torch.Tensor:
    frames = as_frames(image, what)
    if frames.shape[0] != 1:
        raise InputError(f"{what}: the check takes one image; got {frames.shape[0]} frames.")
    return frames


def check_reference_quality(generate: GenerateFn, reference, edited_frame, instruction: str, kind: str = "local",
                            threshold: float = 6.0, attempts: int = 3, seed: int = 0, temperature: float = 0.0,
                            retry_temperature: float = 0.7, max_new_tokens: int = 64,
                            source_frame=None) -> QualityResult:
    """Score a reference 1-10 against the instruction, the edited frame it was made from and (when given) the
    source frame the edit started from."""
    if kind not in _KIND_TEXT:
        raise InputError(f"reference kind must be one of {', '.join(_KIND_TEXT)}; got {kind!r}.")
    visuals = {"edited": (_one_image(edited_frame, "edited frame"), None),
               "reference": (_one_image(reference, "reference image"), None)}
    if source_frame is not None:
        visuals["source"] = (_one_image(source_frame, "source frame"), None)
    return _scored_check(generate, "reference-quality", visuals, instruction, threshold, attempts, seed, temperature,
                         retry_temperature, max_new_tokens, extra=_KIND_TEXT[kind])


def check_edit_pair(generate: GenerateFn, source_frame, edited_frame, instruction: str, threshold: float = 6.0,
                    attempts: int = 3, seed: int = 0, temperature: float = 0.0, retry_temperature: float = 0.7,
                    max_new_tokens: int = 64) -> QualityResult:
    """The EditScore-style filter on an edit pair (rubric ``edit-pair-quality``, overall 0-10)."""
    visuals = {"source": (_one_image(source_frame, "source frame"), None),
               "edited": (_one_image(edited_frame, "edited frame"), None)}
    return _scored_check(generate, "edit-pair-quality", visuals, instruction, threshold, attempts, seed, temperature,
                         retry_temperature, max_new_tokens)


@dataclass
class DedupeResult:
    keep: list[int]                                   # indices kept, in order
    duplicates: dict[int, tuple[str, int, float]]     # index -> ("batch"|"existing", index, cosine)


def dedupe_features(features: torch.Tensor, threshold: float = 0.95, existing: torch.Tensor | None = None
                    ) -> DedupeResult:
    """Greedy near-duplicate removal on embeddings ``[N, D]`` (cosine ``>= threshold`` = duplicate)."""
    if not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"dedupe threshold is a cosine similarity in [-1, 1]; got {threshold}.")
    if features.dim() != 2:
        raise InputError(f"features must be [N, D]; got {tuple(features.shape)}.")
    unit = features.float() / features.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    old = None
    if existing is not None and existing.numel():
        old = existing.float() / existing.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    keep: list[int] = []
    dups: dict[int, tuple[str, int, float]] = {}
    for i in range(unit.shape[0]):
        best: tuple[str, int, float] | None = None
        if old is not None:
            sims = old @ unit[i]
            j = int(sims.argmax())
            if float(sims[j]) >= threshold:
                best = ("existing", j, float(sims[j]))
        if best is None and keep:
            sims = unit[keep] @ unit[i]
            j = int(sims.argmax())
            if float(sims[j]) >= threshold:
                best = ("batch", keep[j], float(sims[j]))
        if best is None:
            keep.append(i)
        else:
            dups[i] = best
    return DedupeResult(keep, dups)


def dedupe_references(clip, references: list, threshold: float = 0.95, existing: torch.Tensor | None = None
                      ) -> DedupeResult:
    """:func:`dedupe_features` on the CLIP image embeddings of ``references`` (each ``[1,H,W,3]``)."""
    if not references:
        return DedupeResult([], {})
    feats = torch.cat([clip.image_features(as_frames(r, f"reference {i}")[:1]) for i, r in enumerate(references)])
    return dedupe_features(feats, threshold, existing)
