"""MLLM encoder: prompt layout per mode, query injection, feature slice, preprocessing numbers,
and parity with the stock transformers forward (tiny random Qwen2.5-VL, CPU, fp32)."""

import pytest
import torch

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.mllm.config import INSTRUCTX, KIWI_EDIT, REFERENCE_SUFFIX, MLLMEncoderConfig, get_preset
from comfy_kiwi.mllm.encoder import MLLMEncoder, reference_token_span, release_rope_index
from comfy_kiwi.mllm.loader import load_mllm_encoder
from comfy_kiwi.mllm.preprocess import (VisionSettings, normalize, patchify, select_frame_indices,
                                        video_resize_plan)
from comfy_kiwi.mllm.prompt import choose_mode
from comfy_kiwi.testing.tiny_qwen import TINY_DIT_DIM, build_tiny_qwen, tiny_kiwi_files


@pytest.fixture(scope="module")
def enc():
    return load_mllm_encoder(tiny_kiwi_files().release)


def frames(n, h=64, w=96, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def capture_language_model(encoder):
    """Record the inputs_embeds and the output of the language model's forward."""
    seen = {}
    lm = encoder.model.model.language_model

    def pre(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()
        seen["position_ids"] = kwargs["position_ids"]

    def post(module, args, kwargs, out):
        seen["hidden"] = out.last_hidden_state.detach().clone()

    handles = [lm.register_forward_pre_hook(pre, with_kwargs=True),
               lm.register_forward_hook(post, with_kwargs=True)]
    return seen, handles


# --------------------------------------------------------------------------------------------------
# preprocessing numbers (released facts)
# --------------------------------------------------------------------------------------------------

def test_frame_selection_81_frames():
    assert select_frame_indices(81, 16) == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59, 64, 69, 75, 80]
    assert select_frame_indices(9, 16) == list(range(9))
    assert len(select_frame_indices(81, 13)) == 13


def test_resize_numbers_1280x704():
    # (h, w): step 2 (factor 56) and step 3 (factor 28)
    assert video_resize_plan(704, 1280, 262144) == ((336, 672), (336, 672))
    assert video_resize_plan(704, 1280, None) == ((728, 1288), (560, 1008))


def test_video_tokens_1280x704(enc):
    video = torch.full((1, 704, 1280, 3), 128, dtype=torch.uint8).expand(81, -1, -1, -1)   # no 81-frame copy
    mode, vision = enc.prepare_vision(video)
    assert mode == "video"
    assert vision.frame_indices == select_frame_indices(81, 16)
    assert vision.video_grid_thw.tolist() == [[8, 24, 48]]        # 336x672 -> 288 tokens per pair
    assert vision.video_token_counts(2) == [2304]
    assert vision.second_per_grid_ts == [1.0]


def test_patchify_matches_stock_image_processor():
    from transformers import Qwen2VLImageProcessorPil
    img = torch.randint(0, 256, (56, 84, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    stock = Qwen2VLImageProcessorPil()(images=[img.numpy()], do_resize=False, return_tensors="pt")
    settings = VisionSettings()
    ours, grid = patchify(normalize(img.permute(2, 0, 1)[None].float(), settings), settings)
    assert grid == stock["image_grid_thw"][0].tolist()
    torch.testing.assert_close(ours, stock["pixel_values"], atol=2e-6, rtol=0)


def test_video_patch_layout_matches_image_layout():
    # A video whose frame pairs are identical must give the image patches (the image processor
    # duplicates its frame along time): same merge-block order and channel/time/pixel order.
    settings = VisionSettings()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 3, 56, 84, generator=g), torch.rand(1, 3, 56, 84, generator=g)
    video, vgrid = patchify(torch.cat([a, a, b, b]), settings)
    img_a, _ = patchify(a, settings)
    img_b, _ = patchify(b, settings)
    assert vgrid == [2, 4, 6]
    torch.testing.assert_close(video, torch.cat([img_a, img_b]))
    odd, ogrid = patchify(torch.cat([a, a, b]), settings)       # odd count: last frame repeated
    assert ogrid == [2, 4, 6]
    torch.testing.assert_close(odd, video)


# --------------------------------------------------------------------------------------------------
# modes and prompt layout
# --------------------------------------------------------------------------------------------------

def test_mode_rule():
    assert choose_mode(1, False) == "image"
    assert choose_mode(5, False) == "video"
    assert choose_mode(1, True) == "reference"      # 1-frame source with a reference: video path
    assert choose_mode(9, True) == "reference"


@pytest.mark.parametrize("n_frames,with_ref,mode,n_queries", [
    (1, False, "image", 256), (5, False, "video", 512), (5, True, "reference", 768), (1, True, "reference", 768)])
def test_token_layout(enc, n_frames, with_ref, mode, n_queries):
    proc = enc.processor
    ref = frames(1, 40, 60, seed=9) if with_ref else None
    got_mode, vision = enc.prepare_vision(frames(n_frames), ref)
    assert got_mode == mode
    ids = enc.prompt_ids(mode, "make it red", vision)[0]
    assert int((ids == proc.placeholder_id).sum()) == n_queries
    im_end, newline = proc.token_id("<|im_end|>"), proc.tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert ids[-2:].tolist() == [im_end] + newline
    assert (ids[-2 - n_queries:-2] == proc.placeholder_id).all()
    n_video, n_image = int((ids == proc.video_pad_id).sum()), int((ids == proc.image_pad_id).sum())
    text = proc.tokenizer.decode(ids.tolist())
    if mode == "image":
        assert n_video == 0 and n_image == vision.image_token_counts(2)[0]
        assert "<|vision_start|><|image_pad|>" in text and REFERENCE_SUFFIX not in text
    else:
        assert n_video == vision.video_token_counts(2)[0]
        assert vision.video_grid_thw[0, 0] == (n_frames + 1) // 2
    if mode == "reference":
        # video first, then instruction + suffix, then the reference image, then the queries
        assert text.index("<|video_pad|>") < text.index("make it red" + REFERENCE_SUFFIX) < text.index("<|image_pad|>")
        assert n_image == vision.image_token_counts(2)[0]
    assert text.startswith("<|im_start|>system\n" + KIWI_EDIT.system_prompt + "<|im_end|>\n<|im_start|>user\n")


# --------------------------------------------------------------------------------------------------
# query injection, slice, reference features
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_frames,with_ref", [(1, False), (4, False), (3, True)])
def test_queries_replace_placeholders_and_slice(enc, n_frames, with_ref):
    proc = enc.processor
    ref = frames(1, 40, 60, seed=9) if with_ref else None
    src = frames(n_frames)
    mode, vision = enc.prepare_vision(src, ref)
    ids = enc.prompt_ids(mode, "turn the car blue", vision)
    queries = enc.queries_for(mode)
    seen, handles = capture_language_model(enc)
    try:
        context = enc.encode("turn the car blue", src, ref)
    finally:
        for h in handles:
            h.remove()
    embeds, hidden = seen["embeds"][0], seen["hidden"]
    placeholder = ids[0] == proc.placeholder_id
    torch.testing.assert_close(embeds[placeholder], queries.detach(), rtol=0, atol=0)
    text_rows = ~(placeholder | (ids[0] == proc.image_pad_id) | (ids[0] == proc.video_pad_id))
    table = enc.model.model.language_model.embed_tokens.weight
    torch.testing.assert_close(embeds[text_rows], table[ids[0][text_rows]], rtol=0, atol=0)
    n = queries.shape[0]
    expected = enc.connector(hidden[:, -n:])
    if mode == "reference":
        start, end = reference_token_span(ids[0], proc.vision_start_id, proc.vision_end_id)
        ref_tokens = ids[0, start:end]
        assert (ref_tokens == proc.image_pad_id).all()
        assert len(ref_tokens) == vision.image_token_counts(2)[0]
        assert (ids[0, :start] == proc.video_pad_id).any()          # the video came before
        expected = torch.cat([enc.ref_connector(hidden[:, start:end]), expected], dim=1)
        assert context.shape == (1, len(ref_tokens) + n, TINY_DIT_DIM)
    else:
        assert context.shape == (1, n, TINY_DIT_DIM)
    torch.testing.assert_close(context, expected, rtol=0, atol=0)


def test_slice_is_last_n_positions_with_two_trailing_tokens(enc):
    # Changing the LAST query changes only the last 3 output rows (that query, <|im_end|>, "\n"):
    # the slice is the last N positions, not the N query positions.
    src = frames(4)
    base = enc.encode("make it red", src)
    saved = enc.video_queries.detach().clone()
    try:
        with torch.no_grad():
            enc.video_queries[-1] += 1.0
        changed = enc.encode("make it red", src)
        with torch.no_grad():
            enc.video_queries.copy_(saved)
            enc.video_queries[0] += 1.0              # the first query is not in the output itself,
        first = enc.encode("make it red", src)       # but every later position attends to it
    finally:
        with torch.no_grad():
            enc.video_queries.copy_(saved)
    diff = (changed - base).abs().amax(dim=-1)[0]
    assert torch.all(diff[:-3] == 0) and torch.all(diff[-3:] > 0)
    assert torch.all((first - base).abs().amax(dim=-1)[0] > 0)


def test_reference_suffix_and_instructx_preset():
    assert INSTRUCTX.max_frames == 13 and not INSTRUCTX.has_reference
    assert (INSTRUCTX.num_image_queries, INSTRUCTX.num_video_queries) == (256, 512)
    assert get_preset("InstructX") is INSTRUCTX
    enc = load_mllm_encoder(tiny_kiwi_files().release)
    ix = instructx_encoder()
    assert ix.ref_connector is None and ix.ref_queries is None
    assert not any(k.startswith(("ref_queries", "ref_connector")) for k in ix.extras_state_dict())
    mode, vision = ix.prepare_vision(frames(40))
    assert vision.frame_indices == select_frame_indices(40, 13) and len(vision.frame_indices) == 13
    assert vision.video_grid_thw[0, 0] == 7                      # 13 frames, last one repeated
    assert ix.encode("make it red", frames(40)).shape == (1, 512, TINY_DIT_DIM)
    no_ref = MLLMEncoder(ix.model, ix.processor, ix.config.replace(reference_without_branch="none"))
    with pytest.raises(InputError, match="no reference branch"):
        no_ref.encode("make it red", frames(3), frames(1))


def test_release_config_json_records_the_instructx_preset():
    """A release's mllm_encoder/config.json keeps where a reference goes without a reference branch: an InstructX file
    reads back as INSTRUCTX under Kiwi-Edit's defaults; a Kiwi-Edit file is written as the release writes it (no new
    key) and a file without the key keeps the preset's value. Mutation tried: not writing reference_without_branch →
    the InstructX round trip reads "none" and refuses references."""
    written = INSTRUCTX.to_release_json()
    assert written["reference_without_branch"] == "video" and written["num_ref_queries"] == 0
    back = MLLMEncoderConfig.from_release_json(written)                  # over KIWI_EDIT
    assert back.replace(use_ref_connector=False) == INSTRUCTX and back.accepts_reference and not back.has_reference
    kiwi = KIWI_EDIT.to_release_json()
    assert "reference_without_branch" not in kiwi and MLLMEncoderConfig.from_release_json(kiwi) == KIWI_EDIT
    instruct_only = KIWI_EDIT.replace(num_ref_queries=0, use_ref_connector=False)
    assert "reference_without_branch" not in instruct_only.to_release_json()
    old = {k: v for k, v in written.items() if k != "reference_without_branch"}          # an export before the key
    assert not MLLMEncoderConfig.from_release_json(old).accepts_reference
    assert MLLMEncoderConfig.from_release_json(old, INSTRUCTX).reference_without_branch == "video"
    assert MLLMEncoderConfig.from_release_json({**old, "reference_without_branch": "none"}, INSTRUCTX) \
        .reference_without_branch == "none"                                              # the file wins
    with pytest.raises(CheckpointError, match="reference_without_branch is 'video'.*num_ref_queries is 768"):
        MLLMEncoderConfig.from_release_json({**kiwi, "reference_without_branch": "video"})
    with pytest.raises(CheckpointError, match="must be \"none\" or \"video\""):
        MLLMEncoderConfig.from_release_json({**written, "reference_without_branch": "prompt"})


def instructx_encoder():
    """The tiny release's Qwen, queries and connector under the InstructX settings (no reference branch)."""
    enc = load_mllm_encoder(tiny_kiwi_files().release)
    ix = MLLMEncoder(enc.model, enc.processor, enc.config.replace(**{
        k: getattr(INSTRUCTX, k) for k in ("max_frames", "num_ref_queries", "use_ref_connector",
                                           "reference_without_branch", "name")}))
    ix.load_extras({k: v for k, v in enc.extras_state_dict().items() if not k.startswith("ref_")})
    return ix


def test_instructx_reference_joins_the_prompt_and_the_video_queries_read_it():
    """InstructX reference editing: the reference image is in the MLLM prompt (after the source video), the
    video queries read both, and the context is the connector output of those queries only (no reference
    branch). Checked against the stock transformers forward. Mutations tried: dropping the reference image
    from the prompt → the context equals the no-reference one and the stock comparison fails on token layout;
    prepending tokens for the reference (Kiwi's branch) → shape check fails."""
    ix = instructx_encoder()
    src, ref = frames(5, 100, 150, seed=3), frames(1, 50, 80, seed=4)
    mode, vision = ix.prepare_vision(src, ref)
    assert mode == "reference" and vision.image_grid_thw is not None
    ids = ix.prompt_ids(mode, "replace the cat with this dog", vision)
    assert int((ids == ix.processor.placeholder_id).sum()) == INSTRUCTX.num_video_queries
    with torch.no_grad():
        ours = ix.encode("replace the cat with this dog", src, ref)
        theirs = stock_context(ix, "video", ids, vision, ix.video_queries)
        plain = ix.encode("replace the cat with this dog", src)
    assert ours.shape == (1, INSTRUCTX.num_video_queries, TINY_DIT_DIM)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert not torch.allclose(ours, plain, atol=1e-4)             # the reference reaches the context


# --------------------------------------------------------------------------------------------------
# independent computation: the stock transformers forward with the queries injected by a hook
# --------------------------------------------------------------------------------------------------

def stock_context(encoder, mode, ids, vision, queries):
    """Stock Qwen2_5_VLModel.forward (vision scatter, stock get_rope_index) with a pre-hook that
    puts the queries into the placeholder rows; then the released slice and connectors by hand."""
    proc = encoder.processor
    inner = encoder.model.model
    mask = ids == proc.placeholder_id

    def inject(module, args, kwargs):
        embeds = kwargs["inputs_embeds"].clone()
        embeds[mask] = queries.to(embeds.dtype)
        kwargs["inputs_embeds"] = embeds
        return args, kwargs

    mm_types = torch.zeros_like(ids, dtype=torch.int)
    mm_types[ids == proc.image_pad_id] = 1
    mm_types[ids == proc.video_pad_id] = 2
    handle = inner.language_model.register_forward_pre_hook(inject, with_kwargs=True)
    inner.rope_deltas = None
    try:
        out = inner(input_ids=ids, pixel_values=vision.pixel_values, image_grid_thw=vision.image_grid_thw,
                    pixel_values_videos=vision.pixel_values_videos, video_grid_thw=vision.video_grid_thw,
                    second_per_grid_ts=torch.tensor(vision.second_per_grid_ts) if vision.second_per_grid_ts else None,
                    mm_token_type_ids=mm_types, use_cache=False)
    finally:
        handle.remove()
    hidden = out.last_hidden_state
    n = queries.shape[0]
    context = encoder.connector(hidden[:, -n:])
    if mode == "reference":
        starts = (ids[0] == proc.vision_start_id).nonzero().flatten()
        vs = int(starts[-1])
        ve = vs + int((ids[0, vs:] == proc.vision_end_id).nonzero().flatten()[0])
        context = torch.cat([encoder.ref_connector(hidden[:, vs + 1:ve]), context], dim=1)
    return context


@pytest.mark.parametrize("n_frames,size,with_ref", [(1, (70, 110), False), (16, (224, 448), False),
                                                    (5, (100, 150), True)])
def test_matches_stock_forward(enc, n_frames, size, with_ref):
    src = frames(n_frames, *size, seed=3)
    ref = frames(1, 50, 80, seed=4) if with_ref else None
    mode, vision = enc.prepare_vision(src, ref)
    ids = enc.prompt_ids(mode, "replace the cat with a dog", vision)
    with torch.no_grad():
        ours = enc.encode("replace the cat with a dog", src, ref)
        theirs = stock_context(enc, mode, ids, vision, enc.queries_for(mode))
    err = (ours - theirs).abs().max().item()
    print(f"max |ours - stock| ({mode}, {n_frames} frames): {err:.3g}")
    assert err <= 1e-5
    assert ours.abs().max() > 1e-3      # not trivially zero


def test_rope_index_release_rule_vs_stock(enc):
    proc, inner = enc.processor, enc.model.model
    cfg = inner.config

    def both(src):
        mode, vision = enc.prepare_vision(src)
        ids = enc.prompt_ids(mode, "make it red", vision)
        ours = release_rope_index(ids[0], vision.image_grid_thw, vision.video_grid_thw, vision.second_per_grid_ts,
                                  image_token_id=proc.image_pad_id, video_token_id=proc.video_pad_id,
                                  spatial_merge_size=2, tokens_per_second=cfg.vision_config.tokens_per_second)
        types = (ids == proc.video_pad_id).int() * 2
        stock, _ = inner.get_rope_index(ids, types, None, vision.video_grid_thw,
                                        torch.tensor(vision.second_per_grid_ts))
        return ids[0], vision, ours, stock[:, 0]

    # Spatial side longest (16 frames of 448x224 -> merged grid 8x16, temporal up to 14): equal.
    ids, vision, ours, stock = both(frames(16, 224, 448))
    torch.testing.assert_close(ours, stock, rtol=0, atol=0)
    video = (ids == proc.video_pad_id).nonzero().flatten()
    t_axis = ours[0, video]
    assert sorted(set(t_axis.tolist())) == [int(video[0]) + 2 * k for k in range(8)]   # +2 per pair (fps 2)
    # Temporal side longest (16 frames upscaled to 336x336 -> merged 12x12): transformers 4.57
    # (released) continues the text after max(t, h, w) + 1, transformers 5 after max(h, w).
    ids, vision, ours, stock = both(frames(16, 64, 64))
    video = (ids == proc.video_pad_id).nonzero().flatten()
    start, after = int(video[0]), int(video[-1]) + 1
    assert vision.video_grid_thw.tolist() == [[8, 24, 24]]
    assert int(ours[0, after]) == start + 14 + 1
    assert int(stock[0, after]) == start + 12
    torch.testing.assert_close(ours[:, :after], stock[:, :after], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# instructions, negative encoding, grads, determinism
# --------------------------------------------------------------------------------------------------

def test_instruction_checks_and_negative(enc):
    src = frames(3)
    with pytest.raises(InputError, match="instruction is empty"):
        enc.encode("   ", src)
    with pytest.raises(InputError, match="special token"):
        enc.encode("make <|object_ref_start|> red", src)
    neg = enc.encode_negative(src)
    torch.testing.assert_close(neg, enc.encode("", src, allow_empty=True), rtol=0, atol=0)
    pos, neg2 = enc.encode_pair("make it red", src)
    torch.testing.assert_close(pos, enc.encode("make it red", src), rtol=0, atol=0)
    torch.testing.assert_close(neg2, neg, rtol=0, atol=0)
    assert not torch.equal(pos, neg)
    both = enc.encode_batch(["make it red", "turn the car blue"], src)
    assert both.shape == (2, 512, TINY_DIT_DIM)
    torch.testing.assert_close(both[:1], pos, rtol=0, atol=0)
    with pytest.raises(InputError, match="empty"):
        enc.encode_pair("", src)


def test_frame_validation(enc):
    with pytest.raises(InputError, match=r"\[F,H,W,3\]"):
        enc.encode("make it red", torch.rand(3, 3, 64, 64))
    with pytest.raises(InputError, match="one image"):
        enc.encode("make it red", frames(3), frames(2))
    with pytest.raises(InputError, match="NaN"):
        enc.encode("make it red", torch.full((2, 32, 32, 3), float("nan")))


def test_no_grad_in_eval_and_grads_when_training(enc):
    src = frames(1)
    out = enc.encode("make it red", src)
    assert not out.requires_grad
    enc.train()
    try:
        enc.image_queries.requires_grad_(True)
        enc.connector.requires_grad_(True)
        out = enc.encode("make it red", src)
        out.square().mean().backward()
        assert enc.image_queries.grad is not None and enc.image_queries.grad.abs().sum() > 0
        assert all(p.grad is None for p in enc.model.parameters())
    finally:
        enc.eval()
        enc.zero_grad(set_to_none=True)


def test_deterministic_and_offload(enc):
    src, ref = frames(6, seed=5), frames(1, 30, 40, seed=6)
    a = enc.encode("make it red", src, ref)
    b = enc.encode("make it red", src, ref)
    assert torch.equal(a, b)
    assert enc.offload() is enc and enc.device.type == "cpu"


def test_tiny_builder_is_the_stock_class():
    from transformers import Qwen2_5_VLForConditionalGeneration
    tiny = build_tiny_qwen()
    assert type(tiny.model) is Qwen2_5_VLForConditionalGeneration
    cfg = tiny.model.config.text_config
    assert sum(cfg.rope_parameters["mrope_section"]) == cfg.hidden_size // cfg.num_attention_heads // 2
