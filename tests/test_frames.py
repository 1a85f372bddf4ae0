"""Frame preparation (Kiwi loader rules), reference canvas (PIL ImageOps.pad parity), image loading."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from comfy_kiwi.errors import InputError
from comfy_kiwi.frames import (
    center_crop_offsets,
    contain_size,
    cover_resize_size,
    fit_frame_count,
    frames_to_pil_list,
    frames_to_vae,
    kiwi_target_size,
    load_image,
    nearest_valid_frame_counts,
    pad_reference,
    pil_to_tensor,
    prepare_frames,
    resize_cover_crop,
    shrink_and_pad_reference,
    tensor_to_pil,
    to_pil,
    vae_to_frames,
)


def random_frames(f, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(f, h, w, 3, generator=g)


def random_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (h, w, channels), dtype=np.uint8))


def to_uint8(t):
    return (t[0].numpy() * 255).round().astype(np.uint8)


# -- target size --------------------------------------------------------------------------------

@pytest.mark.parametrize("w,h,expected", [
    (1280, 720, (1280, 704)),    # under the cap: only the floor to 32
    (1920, 1080, (1280, 704)),   # scale 1.5 exactly -> 1280x720 -> floor
    (3840, 2160, (1280, 704)),
    (720, 1280, (704, 1280)),    # portrait
    (1000, 1000, (928, 928)),    # loader truncates 959.999.. to 959 before flooring (not 960)
    (1440, 1080, (1088, 800)),   # 1108.5 x 831.4 -> 1108 x 831 -> floor
    (640, 480, (640, 480)),      # small: unchanged
    (100, 70, (96, 64)),         # small: floor to 32 only
])
def test_kiwi_target_size(w, h, expected):
    assert kiwi_target_size(w, h, 921600) == expected


def test_kiwi_target_size_options_and_errors():
    assert kiwi_target_size(1920, 1080, None) == (1920, 1056)
    assert kiwi_target_size(1280, 720, 921600, multiple=16) == (1280, 720)
    with pytest.raises(InputError, match="at least 32"):
        kiwi_target_size(31, 200, 921600)
    with pytest.raises(InputError, match="max_pixels"):
        kiwi_target_size(64, 64, 0)
    with pytest.raises(InputError, match="positive"):
        kiwi_target_size(0, 64, 921600)


# -- cover resize + centre crop -----------------------------------------------------------------

def test_cover_sizes_and_crop_rounding():
    assert cover_resize_size(1920, 1080, 1280, 704) == (1280, 720)
    assert cover_resize_size(100, 60, 64, 64) == (107, 64)      # 106.67 -> 107
    assert cover_resize_size(50, 25, 36, 20) == (40, 20)
    # torchvision's int(round(x / 2.0)): half to even
    assert center_crop_offsets(1280, 720, 1280, 704) == (0, 8)
    assert center_crop_offsets(65, 64, 64, 64) == (0, 0)        # excess 1 -> round(0.5) = 0
    assert center_crop_offsets(67, 64, 64, 64) == (2, 0)        # excess 3 -> round(1.5) = 2
    assert center_crop_offsets(69, 64, 64, 64) == (2, 0)        # excess 5 -> round(2.5) = 2


def test_crop_only_keeps_float_values():
    frames = random_frames(2, 72, 128)
    out = resize_cover_crop(frames, 128, 64)
    assert out.shape == (2, 64, 128, 3)
    assert torch.equal(out, frames[:, 4:68])


def loader_reference(img, W, H):
    """The loader's steps written out with PIL: cover scale, round, bilinear, torchvision crop."""
    scale = max(W / img.width, H / img.height)
    rw, rh = round(img.width * scale), round(img.height * scale)
    img = img.resize((rw, rh), Image.Resampling.BILINEAR)
    left, top = int(round((rw - W) / 2.0)), int(round((rh - H) / 2.0))
    return np.asarray(img.crop((left, top, left + W, top + H)))


@pytest.mark.parametrize("src,dst", [((100, 60), (64, 64)), ((50, 80), (64, 96)), ((97, 61), (32, 32))])
def test_resize_cover_crop_matches_loader(src, dst):
    img = random_image(*src, seed=3)
    frames = pil_to_tensor(img)
    out = resize_cover_crop(frames, *dst)
    assert out.shape == (1, dst[1], dst[0], 3)
    assert np.array_equal(to_uint8(out), loader_reference(img, *dst))


def test_resize_cover_crop_is_centred():
    # A white square in the exact centre of a black 160x96 frame stays centred in 64x64.
    frames = torch.zeros(1, 96, 160, 3)
    frames[:, 38:58, 70:90] = 1.0
    out = resize_cover_crop(frames, 64, 64)[0, ..., 0]
    ys, xs = torch.nonzero(out > 0.5, as_tuple=True)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(31.5, abs=0.5)
    assert (xs.min() + xs.max()) / 2 == pytest.approx(31.5, abs=0.5)


# -- frame count --------------------------------------------------------------------------------

def test_nearest_valid_counts():
    assert nearest_valid_frame_counts(80) == (77, 81)
    assert nearest_valid_frame_counts(81) == (81, 81)
    assert nearest_valid_frame_counts(2) == (1, 5)


def test_fit_frame_count_trim_warns():
    frames = random_frames(10, 8, 8)
    with pytest.warns(UserWarning, match="keeping the first 9 and dropping the last 1"):
        out = fit_frame_count(frames, "trim")
    assert torch.equal(out, frames[:9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_frame_count(frames[:9]).shape[0] == 9
        assert fit_frame_count(frames[:1]).shape[0] == 1


def test_fit_frame_count_error_mode():
    with pytest.raises(InputError, match="nearest valid counts are 77 and 81"):
        fit_frame_count(torch.zeros(80, 4, 4, 3), "error")
    with pytest.raises(InputError, match="no frames"):
        fit_frame_count(torch.zeros(0, 4, 4, 3))
    with pytest.raises(InputError, match="frame_mode"):
        fit_frame_count(torch.zeros(5, 4, 4, 3), "pad")


def test_prepare_frames():
    frames = random_frames(12, 80, 100)
    with pytest.warns(UserWarning, match="dropping the last 3"):
        out = prepare_frames(frames)
    assert out.shape == (9, 64, 96, 3)
    out = prepare_frames(frames, num_frames=5)  # first 5: already 4k+1, no warning
    assert out.shape == (5, 64, 96, 3)
    out = prepare_frames(frames[:1], max_pixels=64 * 64)  # 8000 px > 4096: scale 1.397 -> 71x57 -> 64x32
    assert out.shape == (1, 32, 64, 3)
    with pytest.raises(InputError, match="num_frames"):
        prepare_frames(frames, num_frames=0)


# -- reference canvas ---------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [
    ((300, 200), (128, 128)),   # wide: pad top/bottom
    ((200, 300), (128, 96)),    # tall: pad left/right
    ((160, 90), (64, 36)),      # same aspect: no padding
    ((101, 37), (64, 64)),      # odd excess: offset rounding
    ((33, 65), (97, 64)),       # upscale and odd excess
    ((50, 40), (64, 64)),
])
def test_pad_reference_equals_pil(src, dst):
    img = random_image(*src, seed=sum(src))
    expected = np.asarray(ImageOps.pad(img, dst, color="white", centering=(0.5, 0.5)))
    from_pil = pad_reference(img, *dst)
    from_tensor = pad_reference(pil_to_tensor(img), *dst)
    assert from_pil.shape == (1, dst[1], dst[0], 3)
    assert np.array_equal(to_uint8(from_pil), expected)
    assert np.array_equal(to_uint8(from_tensor), expected)


def test_contain_size_rounding():
    assert contain_size(300, 200, 128, 128) == (128, 85)   # 85.33
    assert contain_size(200, 300, 128, 96) == (64, 96)
    assert contain_size(1, 1000, 64, 32) == (1, 32)        # degenerate: kept at 1 pixel


def released_shrink_and_pad(img, W, H, scale):
    """The released augmentation's steps written out with PIL, for comparison."""
    fitted = ImageOps.contain(img, (W, H))
    w, h = int(fitted.width * scale), int(fitted.height * scale)
    small = fitted.resize((w, h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (W, H), "white")
    canvas.paste(small, ((W - w) // 2, (H - h) // 2))
    return np.asarray(canvas)


@pytest.mark.parametrize("scale", [0.7, 0.83, 1.0])
def test_shrink_and_pad_reference(scale):
    img = random_image(90, 50, seed=7)
    out = shrink_and_pad_reference(img, 64, 48, scale)
    assert out.shape == (1, 48, 64, 3)
    assert np.array_equal(to_uint8(out), released_shrink_and_pad(img, 64, 48, scale))
    if scale < 1.0:
        assert torch.all(out[0, 0] == 1.0) and torch.all(out[0, -1] == 1.0)  # white border
    with pytest.raises(InputError, match="scale"):
        shrink_and_pad_reference(img, 64, 48, 0.0)


# -- image loading ------------------------------------------------------------------------------

def test_load_rgba_composites_over_white(tmp_path):
    arr = np.zeros((4, 6, 4), np.uint8)
    arr[..., 0] = 200                  # red everywhere
    arr[:, :2, 3] = 0                  # transparent
    arr[:, 2:4, 3] = 128               # half transparent
    arr[:, 4:, 3] = 255                # opaque
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (1, 4, 6, 3) and img.dtype == torch.float32
    assert torch.allclose(img[0, :, :2], torch.ones(4, 2, 3))
    assert torch.allclose(img[0, :, 4:], torch.tensor([200 / 255, 0, 0]).expand(4, 2, 3))
    half = img[0, 0, 2]
    assert half[0].item() == pytest.approx((200 * 128 + 255 * 127) / 255 / 255, abs=2 / 255)
    assert half[1].item() == pytest.approx(127 / 255, abs=2 / 255)


def test_load_grayscale_palette_and_16bit(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (1, 4, 5, 3)
    assert torch.equal(img[0, ..., 1], torch.from_numpy(gray).float() / 255)

    pal = Image.fromarray(gray).convert("P")
    pal.save(tmp_path / "p.gif")
    assert torch.allclose(load_image(tmp_path / "p.gif"), img, atol=1 / 255)

    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert torch.allclose(load_image(tmp_path / "g16.png"), img, atol=1 / 255)

    rgb = random_image(7, 5, seed=1)
    rgb.save(tmp_path / "c.webp", lossless=True)
    assert torch.equal(load_image(tmp_path / "c.webp"), pil_to_tensor(rgb))


def test_load_image_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        load_image(tmp_path / "text.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(tmp_path / "empty.jpg")


# -- layout conversions -------------------------------------------------------------------------

def test_vae_layout_round_trip():
    frames = random_frames(5, 16, 24)
    x = frames_to_vae(frames)
    assert x.shape == (1, 3, 5, 16, 24)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[0, :, 2].permute(1, 2, 0), frames[2] * 2 - 1)
    assert torch.allclose(vae_to_frames(x), frames, atol=1e-6)
    both = vae_to_frames(torch.cat([x, x * 0 - 1], dim=0))  # B=2 concatenated along frames
    assert both.shape == (10, 16, 24, 3) and torch.all(both[5:] == 0)
    assert vae_to_frames(x * 3).max() == 1.0  # clamped
    with pytest.raises(InputError, match=r"\[B, 3, F, H, W\]"):
        vae_to_frames(torch.zeros(3, 5, 16, 24))


def test_pil_helpers_and_validation():
    frames = random_frames(2, 6, 8)
    pil = frames_to_pil_list(frames)
    assert len(pil) == 2 and pil[0].size == (8, 6)
    back = pil_to_tensor(pil[1])
    assert (back[0] - frames[1]).abs().max() <= 0.5 / 255 + 1e-6
    assert tensor_to_pil(frames[0]).mode == "RGB" and to_pil(frames[0]).size == (8, 6)
    assert torch.equal(pil_to_tensor(tensor_to_pil(frames[:1])), pil_to_tensor(pil[0]))
    u8 = (frames * 255).round().to(torch.uint8)
    assert torch.allclose(frames_to_vae(u8), frames_to_vae(frames), atol=1 / 255)
    with pytest.raises(InputError, match="one image"):
        tensor_to_pil(frames)
    with pytest.raises(InputError, match=r"\[F, H, W, 3\]"):
        frames_to_vae(torch.zeros(2, 3, 8, 8))
