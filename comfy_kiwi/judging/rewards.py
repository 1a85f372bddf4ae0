"""CLIP-based rewards and metrics of an edit (VIVA's Edit-GRPO rewards and friends).

Every reward is a callable with one signature::

    reward(source_frames, edited_frames, instruction_edit, text_source=None) -> float tensor

* one edit: frames ``[F,H,W,3]`` (0..1) -> a 0-dim tensor;
* a group (GRPO): ``edited_frames`` as ``[B,F,H,W,3]`` or a list of ``[F,H,W,3]`` -> a ``[B]`` tensor;
  ``source_frames`` and the texts are either one (shared by the group) or one per edit.

Everything runs under ``no_grad``: rewards are numbers, not losses.

Definitions (``C`` = cosine similarity, features are CLIP's projected embeddings):

* frames: each video is sampled to at most ``max_frames`` frames, ``linspace(0, n-1, k).round()``;
* frame aggregation ``mean_embedding`` (default): a video's feature is the mean of its L2-normalised
  frame features, so ``C(V, t) = cos(mean_i f_i/|f_i|, t)``; ``mean_cosine``: the mean over frames
  of the per-frame cosines (for two videos, frames paired by position after sampling both to the
  same count);
* instruction following ``R_IF = C(V_edit, t_edit) - C(V_edit, t_src)``, ``t_edit`` the
  instruction / target caption, ``t_src`` the source caption;
* source preservation ``R_SP = C(V_src, V_edit)`` on image features;
* PickScore ``= s * C(V_edit, t_edit)`` with the PickScore model, ``s = exp(logit_scale)`` of that
  model (about 100);
* temporal consistency ``= mean_i cos(f_i, f_{i+1})`` over consecutive frames of the edited video
  (``tc_max_frames``, default all frames); a one-frame video scores 1;
* weighted sum ``= sum_k w_k * r_k`` over the terms with a non-zero weight. The default weights
  (R_IF 1, R_SP 1, others 0) are a neutral starting point, not published values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..mllm.preprocess import as_frames, select_frame_indices
from .clip_models import ClipModel

__all__ = ["RewardSettings", "DEFAULT_WEIGHTS", "Reward", "InstructionFollowingReward",
           "SourcePreservationReward", "PickScoreReward", "TemporalConsistencyReward", "WeightedReward",
           "ClipRewards", "video_text_similarity", "video_video_similarity", "temporal_consistency"]

AGGREGATIONS = ("mean_embedding", "mean_cosine")
DEFAULT_WEIGHTS = {"instruction_following": 1.0, "source_preservation": 1.0, "pickscore": 0.0,
                   "temporal_consistency": 0.0}


@dataclass(frozen=True)
class RewardSettings:
    max_frames: int | None = 8
    tc_max_frames: int | None = None
    aggregation: str = "mean_embedding"

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise InputError(f"frame aggregation must be one of {', '.join(AGGREGATIONS)}; got {self.aggregation!r}.")
        for k in ("max_frames", "tc_max_frames"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise InputError(f"{k} must be a positive integer or None (all frames); got {v!r}.")


# ---------------------------------------------------------------------------------------------
# the math on features
# ---------------------------------------------------------------------------------------------

def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _paired(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(a.shape[0], b.shape[0])
    return a[select_frame_indices(a.shape[0], n)], b[select_frame_indices(b.shape[0], n)]


def video_text_similarity(frame_features: torch.Tensor, text_feature: torch.Tensor,
                          aggregation: str = "mean_embedding") -> torch.Tensor:
    """``C(V, t)`` for frame features ``[F, D]`` and one text feature ``[D]``."""
    f, t = _unit(frame_features.float()), _unit(text_feature.float().reshape(-1))
    if aggregation == "mean_embedding":
        return (_unit(f.mean(0)) * t).sum()
    return (f @ t).mean()


def video_video_similarity(a: torch.Tensor, b: torch.Tensor, aggregation: str = "mean_embedding") -> torch.Tensor:
    """``C(V_a, V_b)`` of two videos' frame features ``[Fa, D]``, ``[Fb, D]``."""
    a, b = _unit(a.float()), _unit(b.float())
    if aggregation == "mean_embedding":
        return (_unit(a.mean(0)) * _unit(b.mean(0))).sum()
    a, b = _paired(a, b)
    return (a * b).sum(-1).mean()


def temporal_consistency(frame_features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of consecutive frames' features ``[F, D]`` (1 for one frame)."""
    f = _unit(frame_features.float())
    if f.shape[0] < 2:
        return torch.tensor(1.0)
    return (f[1:] * f[:-1]).sum(-1).mean()


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------

def _videos(x, what: str) -> tuple[list[torch.Tensor], bool]:
    """(list of [F,H,W,3] videos, batched?)."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError(f"{what}: empty list of videos.")
        return [as_frames(v, f"{what}[{i}]") for i, v in enumerate(x)], True
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        return [as_frames(v, f"{what}[{i}]") for i, v in enumerate(x)], True
    return [as_frames(x, what)], False


def _texts(x, n: int, what: str, required: bool = True) -> list[str] | None:
    if x is None:
        if required:
            raise InputError(f"{what} is required for this reward.")
        return None
    if isinstance(x, str):
        x = [x] * n
    x = list(x)
    if len(x) == 1 and n > 1:
        x = x * n
    if len(x) != n or not all(isinstance(t, str) for t in x):
        raise InputError(f"{what}: give one string or {n} strings (one per edited video); got {len(x)}.")
    return x


@dataclass
class _Batch:
    sources: list[torch.Tensor] | None
    edits: list[torch.Tensor]
    batched: bool

    @classmethod
    def make(cls, source_frames, edited_frames, need_source: bool) -> _Batch:
        edits, batched = _videos(edited_frames, "edited_frames")
        sources = None
        if source_frames is not None:
            sources, _ = _videos(source_frames, "source_frames")
            if len(sources) == 1:
                sources = sources * len(edits)
            elif len(sources) != len(edits):
                raise InputError(f"source_frames: give one video or {len(edits)} (one per edited video); "
                                 f"got {len(sources)}.")
        elif need_source:
            raise InputError("source_frames are required for this reward.")
        return cls(sources, edits, batched)


@dataclass
class _Bank:
    """Features computed once per call and shared by every term."""
    images: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)

    def image(self, clip: ClipModel, frames: torch.Tensor, max_frames: int | None) -> torch.Tensor:
        idx = select_frame_indices(frames.shape[0], max_frames) if max_frames else list(range(frames.shape[0]))
        key = (id(clip), id(frames), tuple(idx))
        if key not in self.images:
            self.images[key] = clip.image_features(frames[idx])
        return self.images[key]

    def text(self, clip: ClipModel, text: str) -> torch.Tensor:
        key = (id(clip), text)
        if key not in self.texts:
            self.texts[key] = clip.text_features([text])[0]
        return self.texts[key]


# ---------------------------------------------------------------------------------------------
# rewards
# ---------------------------------------------------------------------------------------------

class Reward:
    """Base: ``reward(source_frames, edited_frames, instruction_edit, text_source=None)``."""
    name = "reward"
    needs_source = False

    def __init__(self, settings: RewardSettings | None = None):
        self.settings = settings or RewardSettings()

    @torch.no_grad()
    def __call__(self, source_frames, edited_frames, instruction_edit=None, text_source=None) -> torch.Tensor:
        batch = _Batch.make(source_frames, edited_frames, self.needs_source)
        values = self.evaluate(batch, instruction_edit, text_source, _Bank())
        return values if batch.batched else values[0]

    def evaluate(self, batch: _Batch, instruction_edit, text_source, bank: _Bank) -> torch.Tensor:
        raise NotImplementedError


class InstructionFollowingReward(Reward):
    """``R_IF = C(V_edit, t_edit) - C(V_edit, t_src)``."""
    name = "instruction_following"

    def __init__(self, clip: ClipModel, settings: RewardSettings | None = None):
        super().__init__(settings)
        self.clip = clip

    def evaluate(self, batch, instruction_edit, text_source, bank):
        n, s = len(batch.edits), self.settings
        t_edit = _texts(instruction_edit, n, "instruction_edit")
        t_src = _texts(text_source, n, "text_source (the source caption)")
        out = []
        for v, te, ts in zip(batch.edits, t_edit, t_src, strict=True):
            f = bank.image(self.clip, v, s.max_frames)
            out.append(video_text_similarity(f, bank.text(self.clip, te), s.aggregation)
                       - video_text_similarity(f, bank.text(self.clip, ts), s.aggregation))
        return torch.stack(out)


class SourcePreservationReward(Reward):
    """``R_SP = C(V_src, V_edit)`` (image-image)."""
    name = "source_preservation"
    needs_source = True

    def __init__(self, clip: ClipModel, settings: RewardSettings | None = None):
        super().__init__(settings)
        self.clip = clip

    def evaluate(self, batch, instruction_edit, text_source, bank):
        s = self.settings
        return torch.stack([video_video_similarity(bank.image(self.clip, src, s.max_frames),
                                                   bank.image(self.clip, v, s.max_frames), s.aggregation)
                            for src, v in zip(batch.sources, batch.edits, strict=True)])


class PickScoreReward(Reward):
    """``exp(logit_scale) * C(V_edit, t_edit)`` with a PickScore (CLIP-layout) model."""
    name = "pickscore"

    def __init__(self, pickscore: ClipModel, settings: RewardSettings | None = None):
        super().__init__(settings)
        self.clip = pickscore

    def evaluate(self, batch, instruction_edit, text_source, bank):
        s = self.settings
        t_edit = _texts(instruction_edit, len(batch.edits), "instruction_edit")
        scale = self.clip.logit_scale
        return torch.stack([scale * video_text_similarity(bank.image(self.clip, v, s.max_frames),
                                                          bank.text(self.clip, t), s.aggregation)
                            for v, t in zip(batch.edits, t_edit, strict=True)])


class TemporalConsistencyReward(Reward):
    """Mean cosine similarity of consecutive edited frames' CLIP features."""
    name = "temporal_consistency"

    def __init__(self, clip: ClipModel, settings: RewardSettings | None = None):
        super().__init__(settings)
        self.clip = clip

    def evaluate(self, batch, instruction_edit, text_source, bank):
        return torch.stack([temporal_consistency(bank.image(self.clip, v, self.settings.tc_max_frames))
                            for v in batch.edits])


class WeightedReward(Reward):
    """``sum_k w_k * r_k`` of other rewards, sharing one feature bank."""
    name = "weighted"

    def __init__(self, terms: list[tuple[float, Reward]], settings: RewardSettings | None = None):
        super().__init__(settings)
        self.terms = [(float(w), r) for w, r in terms if float(w) != 0.0]
        self.needs_source = any(r.needs_source for _, r in self.terms)

    def evaluate(self, batch, instruction_edit, text_source, bank):
        total = torch.zeros(len(batch.edits))
        for w, r in self.terms:
            total = total + w * r.evaluate(batch, instruction_edit, text_source, bank)
        return total


class ClipRewards:
    """All terms from one CLIP (and an optional PickScore) model, plus their weighted sum.

    ``compute(...)`` returns ``{name: tensor}`` for every available term and ``"weighted"``;
    ``reward(name)`` gives a single-term callable with the common signature (for GRPO).
    """

    def __init__(self, clip: ClipModel, pickscore: ClipModel | None = None, settings: RewardSettings | None = None,
                 weights: dict[str, float] | None = None):
        self.settings = settings or RewardSettings()
        self.weights = dict(DEFAULT_WEIGHTS)
        for k, v in (weights or {}).items():
            if k not in DEFAULT_WEIGHTS:
                raise InputError(f"unknown reward weight {k!r}; known: {', '.join(DEFAULT_WEIGHTS)}.")
            self.weights[k] = float(v)
        if self.weights["pickscore"] and pickscore is None:
            raise InputError("a non-zero PickScore weight needs a PickScore model.")
        self.terms: dict[str, Reward] = {
            "instruction_following": InstructionFollowingReward(clip, self.settings),
            "source_preservation": SourcePreservationReward(clip, self.settings),
            "temporal_consistency": TemporalConsistencyReward(clip, self.settings)}
        if pickscore is not None:
            self.terms["pickscore"] = PickScoreReward(pickscore, self.settings)
        self.weighted = WeightedReward([(self.weights[k], r) for k, r in self.terms.items()], self.settings)

    def reward(self, name: str) -> Reward:
        if name == "weighted":
            return self.weighted
        if name not in self.terms:
            raise InputError(f"no reward {name!r} here; available: {', '.join(self.terms)}, weighted.")
        return self.terms[name]

    @torch.no_grad()
    def compute(self, source_frames, edited_frames, instruction_edit, text_source=None) -> dict[str, torch.Tensor]:
        if self.weights["instruction_following"] and text_source is None:
            raise InputError("the weighted reward includes R_IF, which needs text_source (the source caption).")
        batch = _Batch.make(source_frames, edited_frames, need_source=True)
        bank = _Bank()
        out = {}
        for name, r in self.terms.items():
            if name == "instruction_following" and text_source is None:
                continue
            out[name] = r.evaluate(batch, instruction_edit, text_source, bank)
        total = torch.zeros(len(batch.edits))
        for name, w in self.weights.items():
            if w and name in out:
                total = total + w * out[name]
        out["weighted"] = total
        return out if batch.batched else {k: v[0] for k, v in out.items()}
