"""CLIP rewards against features computed by hand through CLIPModel.get_image_features/get_text_features."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.judging import (ClipRewards, InstructionFollowingReward, PickScoreReward, RewardSettings,
                                SourcePreservationReward, TemporalConsistencyReward, load_clip)
from comfy_kiwi.testing.tiny_clip import tiny_clip_files


@pytest.fixture(scope="module")
def models():
    files = tiny_clip_files()
    return load_clip(files.clip, device="cpu"), load_clip(files.pickscore, device="cpu")


def _feat(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _img(clip, frames):
    with torch.no_grad():
        return _feat(clip.model.get_image_features(pixel_values=clip.preprocess(frames)))


def _txt(clip, text):
    enc = clip.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        return _feat(clip.model.get_text_features(**enc))[0]


def _video(seed, f=5, h=40, w=52):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(f, h, w, 3, generator=g)


def test_preprocessing_matches_the_reference_clip_processor(models):
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    clip = models[0]
    frames = _video(0, f=2, h=45, w=70)
    ours = clip.preprocess(frames)
    ref = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    imgs = [Image.fromarray((f.numpy() * 255).round().astype(np.uint8)) for f in frames]
    theirs = ref(images=imgs, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_instruction_following_reward_by_hand(models):
    clip = models[0]
    src, edit = _video(1), _video(2)
    r = InstructionFollowingReward(clip, RewardSettings(max_frames=None))(src, edit, "a red car", "a blue car")
    e = F.normalize(_img(clip, edit), dim=-1).mean(0)
    want = F.cosine_similarity(e, _txt(clip, "a red car"), dim=0) - F.cosine_similarity(e, _txt(clip, "a blue car"),
                                                                                          dim=0)
    assert r.dim() == 0 and r.dtype == torch.float32
    assert float(r) == pytest.approx(float(want), abs=1e-5)
    # per-frame variant
    r2 = InstructionFollowingReward(clip, RewardSettings(max_frames=None, aggregation="mean_cosine"))(
        src, edit, "a red car", "a blue car")
    fe = _img(clip, edit)
    want2 = (F.cosine_similarity(fe, _txt(clip, "a red car")[None], dim=-1)
             - F.cosine_similarity(fe, _txt(clip, "a blue car")[None], dim=-1)).mean()
    assert float(r2) == pytest.approx(float(want2), abs=1e-5)


def test_source_preservation_reward_by_hand_and_frame_sampling(models):
    clip = models[0]
    src, edit = _video(3, f=9), _video(4, f=9)
    r = SourcePreservationReward(clip, RewardSettings(max_frames=3))(src, edit)
    idx = [0, 4, 8]                                    # linspace(0, 8, 3)
    a = F.normalize(F.normalize(_img(clip, src[idx]), dim=-1).mean(0), dim=0)
    b = F.normalize(F.normalize(_img(clip, edit[idx]), dim=-1).mean(0), dim=0)
    assert float(r) == pytest.approx(float(a @ b), abs=1e-5)
    assert float(SourcePreservationReward(clip)(src, src)) == pytest.approx(1.0, abs=1e-5)


def test_pickscore_is_logit_scale_times_cosine(models):
    pick = models[1]
    edit = _video(5, f=1)
    r = PickScoreReward(pick)(None, edit, "a cat sitting on a sofa")
    cos = F.cosine_similarity(_img(pick, edit)[0], _txt(pick, "a cat sitting on a sofa"), dim=0)
    assert pick.logit_scale == pytest.approx(100.0, rel=1e-5)
    assert float(r) == pytest.approx(float(pick.model.logit_scale.exp() * cos), abs=1e-4)


def test_temporal_consistency(models):
    clip = models[0]
    same = _video(6, f=1).expand(6, -1, -1, -1).clone()
    tc = TemporalConsistencyReward(clip)
    assert float(tc(None, same)) == pytest.approx(1.0, abs=1e-5)
    moving = _video(7, f=4)
    f = F.normalize(_img(clip, moving), dim=-1)
    want = (f[1:] * f[:-1]).sum(-1).mean()
    assert float(tc(None, moving)) == pytest.approx(float(want), abs=1e-5)
    assert float(tc(None, moving[:1])) == 1.0


def test_batched_group_and_weighted_sum(models):
    clip, pick = models
    src = _video(8)
    group = [_video(9), _video(10), _video(11)]
    rewards = ClipRewards(clip, pick, RewardSettings(max_frames=4),
                          {"instruction_following": 2.0, "source_preservation": 0.5, "pickscore": 0.01,
                           "temporal_consistency": 1.0})
    out = rewards.compute(src, group, "make the sky red", "a video of a street")
    assert set(out) == {"instruction_following", "source_preservation", "temporal_consistency", "pickscore",
                        "weighted"}
    assert all(v.shape == (3,) for v in out.values())
    want = (2.0 * out["instruction_following"] + 0.5 * out["source_preservation"] + 0.01 * out["pickscore"]
            + out["temporal_consistency"])
    assert torch.allclose(out["weighted"], want, atol=1e-6)
    single = InstructionFollowingReward(clip, RewardSettings(max_frames=4))(src, group[1], "make the sky red",
                                                                             "a video of a street")
    assert float(single) == pytest.approx(float(out["instruction_following"][1]), abs=1e-6)
    stacked = rewards.reward("weighted")(src, torch.stack(group), "make the sky red", ["a video of a street"] * 3)
    assert torch.allclose(stacked, out["weighted"], atol=1e-6)
    assert not stacked.requires_grad


def test_reward_input_errors(models):
    clip = models[0]
    with pytest.raises(InputError, match="text_source"):
        InstructionFollowingReward(clip)(None, _video(1), "x", None)
    with pytest.raises(InputError, match="source_frames"):
        SourcePreservationReward(clip)(None, _video(1))
    with pytest.raises(InputError, match="one string or 2"):
        InstructionFollowingReward(clip)(None, [_video(1), _video(2)], ["a", "b", "c"], "d")
    with pytest.raises(InputError, match="PickScore model"):
        ClipRewards(clip, None, weights={"pickscore": 1.0})
    with pytest.raises(CheckpointError, match="not a folder"):
        load_clip("/nonexistent/clip")
    assert math.isfinite(float(InstructionFollowingReward(clip)(None, _video(1), "a", "b")))
