"""Reference synthesis: cut-outs on white, background fills, masks, grounding, quality check, dedupe."""

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.judging import (Box, VLMRequest, background_reference, check_reference_quality, dedupe_features,
                                ground, local_reference, mask_to_box, parse_box_answer, select_mask)
from comfy_kiwi.judging.fill import diffusion_fill, pyramid_fill
from comfy_kiwi.judging.parsing import AnswerParseError

H, W = 48, 64


def scene():
    """A smooth blue/green background (red = 0) with a red disc + bar object; returns (image, mask)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    img = torch.stack([torch.zeros_like(xx), 0.3 + 0.5 * xx, 0.8 - 0.5 * yy], dim=-1)
    disc = (yy * H - 20) ** 2 + (xx * W - 30) ** 2 <= 7.5 ** 2
    bar = torch.zeros(H, W, dtype=torch.bool)
    bar[25:31, 36:47] = True
    mask = disc | bar
    img[mask] = torch.tensor([0.9, 0.1, 0.1])
    return img[None], mask.float()[None]


def test_local_reference_is_the_tight_cutout_on_white():
    img, mask = scene()
    box = mask_to_box(mask[0])
    ref = local_reference(img, mask)
    assert ref.shape == (1, box.height, box.width, 3)
    crop_img = img[0, box.y0:box.y1, box.x0:box.x1]
    crop_mask = mask[0, box.y0:box.y1, box.x0:box.x1].bool()
    assert torch.equal(ref[0][crop_mask], crop_img[crop_mask])
    assert bool((ref[0][~crop_mask] == 1.0).all())
    # tight: every border row and column touches the object
    for edge in (crop_mask[0], crop_mask[-1], crop_mask[:, 0], crop_mask[:, -1]):
        assert bool(edge.any())
    padded = local_reference(img, mask, margin=3)
    assert padded.shape == (1, box.height + 6, box.width + 6, 3)
    assert bool((padded[0, :3] == 1).all()) and torch.equal(padded[0, 3:-3, 3:-3], ref[0])


def test_local_reference_from_a_box_and_from_mask_inside_a_box():
    img, mask = scene()
    ref = local_reference(img, box=Box(10, 5, 30, 25))
    assert torch.equal(ref[0], img[0, 5:25, 10:30])
    only_bar = local_reference(img, mask, box=Box(38, 24, 50, 33))   # the bar without the disc
    assert only_bar.shape == (1, 6, 9, 3) and bool((only_bar[0, :, :, 0] == 0.9).all())
    with pytest.raises(InputError, match="empty"):
        local_reference(img, torch.zeros(1, H, W))


@pytest.mark.parametrize("method", ["pyramid", "diffuse"])
def test_background_fill_removes_the_foreground_and_keeps_the_rest(method):
    img, mask = scene()
    out = background_reference(img, mask, method=method, iterations=300)
    hole = mask[0].bool()
    assert out.shape == img.shape
    assert torch.equal(out[0][~hole], img[0][~hole])             # untouched outside the hole
    assert float(out[0][hole][:, 0].max()) < 0.02                # no red foreground left inside
    # the fill stays within the colours around the hole
    lo, hi = img[0][~hole].amin(0), img[0][~hole].amax(0)
    assert bool((out[0][hole] >= lo - 1e-5).all() and (out[0][hole] <= hi + 1e-5).all())


def test_background_fill_image_dilate_and_whole_image_error():
    img, mask = scene()
    plate = torch.full((1, H // 2, W // 2, 3), 0.25)
    out = background_reference(img, mask, dilate=2, fill_image=plate)
    grown = torch.nn.functional.max_pool2d(mask[None], 5, 1, 2)[0, 0].bool()
    assert torch.allclose(out[0][grown], torch.tensor(0.25)) and torch.equal(out[0][~grown], img[0][~grown])
    with pytest.raises(InputError, match="whole image"):
        pyramid_fill(img[0], torch.ones(H, W, dtype=torch.bool))
    x = torch.rand(7, 5, 3)
    hole = torch.zeros(7, 5, dtype=torch.bool)
    hole[2:5, 1:4] = True
    assert torch.equal(diffusion_fill(x, hole, 10)[~hole], x[~hole])


def test_select_mask_batches_and_sizes():
    per_frame = torch.zeros(3, 8, 8)
    per_frame[1, 2:4, 2:4] = 1
    assert select_mask(per_frame, 1).sum() == 4 and select_mask(per_frame, 0).sum() == 0
    single = per_frame[1:2]
    assert torch.equal(select_mask(single, 2), single[0])          # B = 1: every frame
    assert select_mask(single, 0, (16, 16)).shape == (16, 16)
    assert select_mask(per_frame[1:2, None], 0).shape == (8, 8)   # [B,1,H,W]
    with pytest.raises(InputError, match="out of range"):
        select_mask(per_frame, 5)


def test_grounding_parse_to_box_and_mask_in_each_coordinate_space():
    text = '```json\n[{"bbox_2d": [14, 28, 70, 84], "label": "dog"}]\n```'
    # the model saw a 112x112 image; the frame is 64x48
    box = parse_box_answer(text, W, H, model_size=(112, 112), coordinate_space="input")
    assert box == Box(8, 12, 40, 36)
    mask = box.to_mask(H, W)
    assert mask.shape == (1, H, W) and mask.sum() == 32 * 24 and mask[0, 12, 8] == 1 and mask[0, 36, 40] == 0
    assert parse_box_answer("(100,200),(500,600)", W, H, coordinate_space="normalized_1000") == Box(6, 9, 32, 29)
    # reversed corners are ordered, out-of-image coordinates clamped, several boxes united
    assert parse_box_answer("[70, 50, -5, 10]", W, H, coordinate_space="original") == Box(0, 10, 64, 48)
    two = '[{"bbox_2d": [1, 2, 5, 6]}, {"bbox_2d": [10, 3, 20, 30]}]'
    assert parse_box_answer(two, W, H, coordinate_space="original") == Box(1, 2, 20, 30)
    assert parse_box_answer(two, W, H, coordinate_space="original", combine="largest") == Box(10, 3, 20, 30)
    with pytest.raises(AnswerParseError, match="empty or outside"):
        parse_box_answer("[100, 100, 120, 120]", W, H, coordinate_space="original")


class Fake:
    def __init__(self, answers, input_size=None):
        self.answers, self.requests = list(answers), []
        if input_size:
            self.image_input_size = lambda image: input_size

    def __call__(self, request: VLMRequest) -> str:
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1]


def test_ground_with_retries_and_failure():
    img, _ = scene()
    fake = Fake(["It is the dog.", '{"bbox_2d": [28, 0, 56, 56]}'], input_size=(112, 112))
    res = ground(fake, img, "the dog", attempts=3, seed=4)
    assert res.ok and res.box == Box(16, 0, 32, 24) and res.mask.shape == (1, H, W)
    assert [r.seed for r in fake.requests] == [4, 5]
    assert "the dog" in fake.requests[0].texts()
    bad = ground(Fake(["no idea"]), img, "the dog", coordinate_space="original", attempts=2)
    assert not bad.ok and bad.mask is None and len(bad.errors) == 2
    with pytest.raises(InputError, match="reports its input size"):
        ground(Fake(["x"]), img, "the dog")


def test_quality_check_threshold_and_failure():
    img, mask = scene()
    ref = local_reference(img, mask)
    fake = Fake(["Reference Quality: 8/10"])
    good = check_reference_quality(fake, ref, img, "add a red ball", threshold=6)
    assert good.ok and good.score == 8.0 and good.passed
    assert [c[0] for c in fake.requests[0].content] == ["text", "image", "text", "image", "text"]
    assert "add a red ball" in fake.requests[0].texts()
    low = check_reference_quality(Fake(["Score: 4"]), ref, img, "add a red ball", threshold=6)
    assert low.ok and not low.passed
    broken = check_reference_quality(Fake(["lovely", "Score: 14"]), ref, img, "add a red ball", attempts=2)
    assert not broken.ok and not broken.passed and broken.score is None and len(broken.errors) == 2
    # with the input image: the judge sees source, edited frame and reference, in that order
    seen = Fake(["Reference Quality: 7"])
    source = torch.zeros_like(img)
    check_reference_quality(seen, ref, img, "add a red ball", source_frame=source)
    content = seen.requests[0].content
    assert [c[1] for c in content if c[0] == "text"][:3] == ["Source image:", "Edited image:", "Reference image:"]
    images = [c[1] for c in content if c[0] == "image"]
    assert torch.equal(images[0], source) and torch.equal(images[1], img) and torch.equal(images[2], ref)


def test_edit_pair_check_is_the_geometric_mean_of_its_two_scores():
    """Mutation tried: the rubric's overall as the arithmetic mean → 9 and 4 give 6.5 (passes 6) instead of 6.0
    (fails 6.5) and this fails."""
    from comfy_kiwi.judging import check_edit_pair
    img, _ = scene()
    fake = Fake(["Semantic Consistency: 9\nPerceptual Quality: 4"])
    res = check_edit_pair(fake, torch.zeros_like(img), img, "add a red ball", threshold=6.5)
    assert res.ok and res.score == pytest.approx(6.0) and not res.passed
    assert [c[1] for c in fake.requests[0].content if c[0] == "text"][:2] == ["Source image:", "Edited image:"]
    with pytest.raises(InputError, match="threshold must be in 0..10"):
        check_edit_pair(fake, img, img, "add a red ball", threshold=11)


# --------------------------------------------------------------------------------------------------
# segmentation: box -> object mask
# --------------------------------------------------------------------------------------------------

def test_difference_mask_is_the_changed_pixels_inside_the_box():
    from comfy_kiwi.judging import difference_mask
    img, mask = scene()
    source = img[0].clone()
    source[mask[0].bool()] = torch.tensor([0.0, 0.5, 0.5])       # the object is what the edit added
    box = Box(0, 0, 40, H)                                        # cuts the bar at x = 40
    got = difference_mask(img[0], source, box)
    want = mask[0].clone()
    want[:, 40:] = 0
    assert torch.equal(got, want)
    with pytest.raises(InputError, match="one size"):
        difference_mask(img[0], source[:10], box)


def test_sam_segmenter_from_a_local_folder_matches_transformers():
    """Mutation tried: the box given to SAM as (y0, x0, y1, x1) → a different mask and this fails."""
    from comfy_kiwi.judging import load_sam
    from comfy_kiwi.testing.tiny_sam import reference_box_mask, tiny_sam_folder
    img, _ = scene()
    folder = tiny_sam_folder()
    sam = load_sam(folder, device="cpu")
    for box in (Box(18, 8, 50, 36), Box(2, 30, 20, 46)):
        got = sam(img[0], box)
        want = reference_box_mask(folder, img[0], box)
        assert got.shape == (H, W) and torch.equal(got, want)
        assert 0 < float(got.sum()) < box.area                   # an object mask, not empty, not the box
        assert float(got.sum()) == float(got[box.y0:box.y1, box.x0:box.x1].sum())


def test_load_sam_errors(tmp_path):
    import json
    from comfy_kiwi.errors import CheckpointError
    from comfy_kiwi.judging import load_sam
    with pytest.raises(CheckpointError, match="not a SAM model folder"):
        load_sam(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="model_type 'clip'"):
        load_sam(tmp_path)


def test_dedupe_features_greedy_in_order():
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    feats = torch.cat([base, base[:1] * 3 + torch.tensor([[0.0, 0.05, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])])
    res = dedupe_features(feats, threshold=0.99)
    assert res.keep == [0, 1, 3] and res.duplicates[2][:2] == ("batch", 0) and res.duplicates[2][2] > 0.99
    res2 = dedupe_features(feats[3:], 0.99, existing=torch.tensor([[0.0, 0.0, 2.0]]))
    assert res2.keep == [] and res2.duplicates[0][:2] == ("existing", 0)
