"""Scoring an edit with a VLM judge and a published rubric.

``judge_edit(generate, source, edited, instruction, reference, rubric=...)`` shows the judge the
rubric's inputs (labelled "Source video:", "Edited video:", "Reference image:" in the rubric's order),
the instruction, the criteria with their scales and the answer format, then reads the answer with
:func:`comfy_kiwi.judging.parsing.parse_scores`. Unparseable or out-of-range answers are retried
(``attempts``, seed ``seed + i`` per attempt); when every attempt fails the result has ``ok=False``,
no scores and every answer with its reason: a failure is never turned into a score.

Scores pass through :func:`comfy_kiwi.judging.rubrics.finalize_scores` (cap rule, overall; see
:mod:`comfy_kiwi.judging.rubrics` for each rubric's definition). The prompt lists the rubric's level anchors
after the criteria; a rubric with ``max_side`` (RVEDiT: 512) has its frames scaled down to that longer side
before the judge sees them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import InputError, KiwiError
from .parsing import parse_scores
from .rubrics import Rubric, finalize_scores, get_rubric
from .vlm import GenerateFn, VLMRequest, ask

__all__ = ["JudgeSettings", "JudgeResult", "JudgeError", "judge_edit", "score_answer", "build_judge_request",
           "rubric_prompt", "limit_side"]


class JudgeError(KiwiError, RuntimeError):
    """Every attempt of the judge gave an answer that could not be scored."""


@dataclass(frozen=True)
class JudgeSettings:
    attempts: int = 3
    seed: int = 0
    temperature: float = 0.0            # first attempt (0 = greedy)
    retry_temperature: float = 0.7      # later attempts
    max_new_tokens: int = 512
    enforce_cap: bool | None = None     # None = the rubric's default (RefVIE on, others off)
    truncate_decimals: bool = False     # int(float(v)) as the released OpenVE evaluation

    def __post_init__(self):
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 1:
            raise InputError(f"attempts must be a positive integer, got {self.attempts!r}.")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")


@dataclass
class JudgeResult:
    rubric: str
    category: str | None
    ok: bool
    scores: dict[str, float] | None
    overall: float | None
    answers: list[str]
    errors: list[str] = field(default_factory=list)
    capped: dict[str, float] = field(default_factory=dict)   # originals of scores lowered by the cap rule
    cap_enforced: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, list[float]] = field(default_factory=dict)
    overall_range: list[float] = field(default_factory=list)
    overall_rule: str = "mean"

    @property
    def attempts(self) -> int:
        return len(self.answers)

    def to_dict(self) -> dict:
        return {"rubric": self.rubric, "category": self.category, "ok": self.ok, "scores": self.scores,
                "overall": self.overall, "overall_rule": self.overall_rule, "overall_range": self.overall_range,
                "ranges": self.ranges, "labels": self.labels, "capped": self.capped,
                "cap_enforced": self.cap_enforced, "attempts": self.attempts, "errors": self.errors,
                "answers": self.answers}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def raise_for_failure(self) -> JudgeResult:
        if not self.ok:
            raise JudgeError(f"the {self.rubric} judge gave no usable answer in {self.attempts} attempt(s): "
                             + " | ".join(self.errors))
        return self


def score_answer(text: str, rubric: Rubric, enforce_cap: bool | None = None, truncate: bool = False
                 ) -> tuple[dict[str, float], float, dict[str, float]]:
    """(final scores, overall, capped originals) of one answer; raises AnswerParseError."""
    scores = parse_scores(text, rubric, truncate)
    return finalize_scores(rubric, scores, enforce_cap)


def rubric_prompt(rubric: Rubric, instruction: str, extra: str = "") -> str:
    """The task text after the visual inputs: instruction, criteria, rule, answer format."""
    lines = [rubric.task, "", f"Editing instruction: {instruction.strip()}"]
    if extra:
        lines += ["", extra.strip()]
    lines += ["", "Criteria:"]
    for i, d in enumerate(rubric.dimensions, 1):
        lines.append(f"{i}. {d.label} ({d.low:g}-{d.high:g}): {d.guide}")
    if rubric.levels:
        lines += ["", "Score levels (for every criterion):"]
        lines += [f"- {band}: {meaning}" for band, meaning in rubric.levels]
    if rubric.states_cap and len(rubric.dimensions) > 1:
        rest = " and ".join(d.label for d in rubric.dimensions[1:])
        lines += ["", f"Rule: {rest} may not be higher than {rubric.dimensions[0].label}. A judge who gives the "
                      "wrong content credit for being smooth or well blended is not doing the job."]
    lines += ["", "Look at all frames before deciding. Answer with exactly one line per criterion in this form "
                  "(a number on each line), and nothing else:"]
    lines += [f"{d.label}: <score from {d.low:g} to {d.high:g}>" for d in rubric.dimensions]
    return "\n".join(lines)


_LABELS = {"source": "Source", "edited": "Edited", "reference": "Reference"}


def limit_side(frames, max_side: int | None):
    """``frames`` [F, H, W, 3] scaled down (bilinear, antialiased) so the longer side is at most ``max_side``."""
    import torch.nn.functional as F
    if max_side is None or frames.dim() != 4 or max(frames.shape[1:3]) <= max_side:
        return frames
    h, w = frames.shape[1:3]
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False,
                        antialias=True)
    return out.permute(0, 2, 3, 1).clamp(0, 1).to(frames.dtype)


def _visual_items(rubric: Rubric, visuals: dict) -> list:
    items = []
    for name in rubric.inputs:
        value = visuals.get(name)
        if value is None:
            continue
        frames, fps = value
        frames = limit_side(frames, rubric.max_side)
        n = int(frames.shape[0]) if frames.dim() == 4 else 1
        kind = "image" if n == 1 else "video"
        label = f"{_LABELS[name]} {'image' if name == 'reference' else kind}:"
        items.append(("text", label))
        items.append((kind, frames) if kind == "image" or fps is None else (kind, frames, fps))
    return items


def build_judge_request(rubric: Rubric, instruction: str, visuals: dict, seed: int, temperature: float,
                        max_new_tokens: int, extra: str = "") -> VLMRequest:
    """``visuals``: {"source"/"edited"/"reference": (frames, fps or None)}."""
    content = _visual_items(rubric, visuals)
    content.append(("text", rubric_prompt(rubric, instruction, extra)))
    return VLMRequest(content=content, system=rubric.role, seed=seed, temperature=temperature,
                      max_new_tokens=max_new_tokens)


def _check_instruction(instruction) -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError("instruction is empty: the judge needs the editing instruction the edit was made from.")
    return instruction


def judge_edit(generate: GenerateFn, source, edited, instruction: str, reference=None,
               rubric: str | Rubric = "vie-bench", category: str | None = None,
               settings: JudgeSettings | None = None, source_fps: float | None = None,
               edited_fps: float | None = None) -> JudgeResult:
    """Score one edit. ``source``/``edited``: frames ``[F,H,W,3]`` (0..1; one frame = an image edit);
    ``reference``: ``[1,H,W,3]`` or None; ``generate``: a :class:`~comfy_kiwi.judging.vlm.VLM` or any
    ``VLMRequest -> str`` callable."""
    from ..mllm.preprocess import as_frames
    settings = settings or JudgeSettings()
    instruction = _check_instruction(instruction)
    base = get_rubric(rubric, category)
    applied = base.for_inputs(reference is not None)
    visuals = {"source": (as_frames(source, "source frames"), source_fps),
               "edited": (as_frames(edited, "edited frames"), edited_fps)}
    if reference is not None:
        ref = as_frames(reference, "reference image")
        if ref.shape[0] != 1:
            raise InputError(f"reference image: expected one image, got {ref.shape[0]} frames.")
        if "reference" in applied.inputs:
            visuals["reference"] = (ref, None)
    cap = applied.cap_to_first if settings.enforce_cap is None else bool(settings.enforce_cap)

    def make(seed: int, temperature: float) -> VLMRequest:
        return build_judge_request(applied, instruction, visuals, seed, temperature, settings.max_new_tokens)

    asked = ask(generate, make, lambda text: score_answer(text, applied, cap, settings.truncate_decimals),
                settings.attempts, settings.seed, settings.temperature, settings.retry_temperature)
    result = JudgeResult(
        rubric=applied.name, category=applied.category, ok=asked.ok, scores=None, overall=None,
        answers=asked.answers, errors=asked.errors, cap_enforced=cap,
        labels={d.key: d.label for d in applied.dimensions},
        ranges={d.key: [d.low, d.high] for d in applied.dimensions},
        overall_range=list(applied.overall_range), overall_rule=applied.overall)
    if asked.ok:
        result.scores, result.overall, result.capped = asked.value
    return result
