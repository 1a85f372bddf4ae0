"""Video IO through PyAV: round trips, fps resampling, odd sizes, rotation, colour range, errors."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from comfy_kiwi import video_io
from comfy_kiwi.errors import BackendUnavailableError, InputError
from comfy_kiwi.video_io import available_codecs, read_video, write_video

F, W, H, FPS = 17, 64, 48, 8


def band_level(i: int) -> float:
    """Grey level of the top band that encodes frame index i (steps of 14/255 survive compression)."""
    return (10 + 14 * i) / 255.0


def moving_square(frames=F, width=W, height=H) -> torch.Tensor:
    """A yellow square moving right over a coloured background; the top 8 rows encode the frame index."""
    out = torch.zeros(frames, height, width, 3)
    out[..., 0], out[..., 2] = 0.2, 0.6
    for i in range(frames):
        out[i, ..., 1] = 0.3 + 0.4 * i / max(frames - 1, 1)
        x = 2 + 2 * i
        out[i, 16:32, x:x + 16] = torch.tensor([1.0, 0.9, 0.1])
        out[i, :8] = band_level(i)
    return out


def frame_indices(frames: torch.Tensor) -> list:
    """Decode the frame-index code of each frame (nearest grey band level)."""
    levels = frames[:, 1:7, 4:-4].mean(dim=(1, 2, 3))  # inside the band, away from chroma edges
    return [round((lvl.item() * 255.0 - 10) / 14) for lvl in levels]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("vid") / "clip.mp4"
    frames = moving_square()
    codec = write_video(path, frames, FPS)
    return path, frames, codec


def test_round_trip(clip):
    path, frames, codec = clip
    assert codec == available_codecs()[0]
    if "libx264" in available_codecs():
        assert codec == "libx264"
    back, fps = read_video(path)
    assert back.dtype == torch.float32 and back.shape == (F, H, W, 3)
    assert fps == pytest.approx(8.0)
    assert 0.0 <= back.min() and back.max() <= 1.0
    # Measured with libx264 crf 18: mean |error| ~0.007 (~1.8/255); worst pixels sit on the
    # square's chroma edges (4:2:0 subsampling).
    assert (back - frames).abs().mean().item() < 0.02
    assert frame_indices(back) == list(range(F))


def test_first_frames_and_start(clip):
    path, _, _ = clip
    back, fps = read_video(path, max_frames=5)
    assert back.shape[0] == 5 and fps == pytest.approx(8.0)
    assert frame_indices(back) == [0, 1, 2, 3, 4]
    back, _ = read_video(path, max_frames=4, start=3)
    assert frame_indices(back) == [3, 4, 5, 6]
    back, _ = read_video(path, max_frames=100)
    assert back.shape[0] == F


@pytest.mark.parametrize("fps,expected", [
    (4, list(range(0, 17, 2))),              # exact halving: 9 frames
    (3, [0, 3, 5, 8, 11, 13, 16]),           # round(k/3*8) -> nearest source frame
    (16, [i // 2 for i in range(34)]),       # ties go to the earlier frame: each frame twice
    (8, list(range(17))),                    # same rate: identity
])
def test_fps_resampling_picks_nearest(clip, fps, expected):
    path, _, _ = clip
    back, out_fps = read_video(path, fps=fps)
    assert out_fps == pytest.approx(fps)
    assert frame_indices(back) == expected


def test_fps_resampling_with_limit_and_start(clip):
    path, _, _ = clip
    back, _ = read_video(path, fps=4, max_frames=3)
    assert frame_indices(back) == [0, 2, 4]
    back, _ = read_video(path, fps=4, start=5)  # clock starts at source frame 5
    assert frame_indices(back) == [5, 7, 9, 11, 13, 15]


def test_fractional_fps(tmp_path):
    path = tmp_path / "ntsc.mp4"
    write_video(path, moving_square(frames=5), 29.97)
    back, fps = read_video(path)
    assert back.shape[0] == 5
    assert fps == pytest.approx(29.97, abs=1e-3)


@pytest.mark.parametrize("even,size", [("pad", (50, 66)), ("crop", (48, 64))])
def test_odd_size(tmp_path, even, size):
    frames = moving_square(frames=5, width=65, height=49)
    path = tmp_path / f"odd_{even}.mp4"
    write_video(path, frames, FPS, even=even)
    back, _ = read_video(path)
    assert back.shape == (5, *size, 3)
    common = back[:, :48, :64]
    assert (common - frames[:, :48, :64]).abs().mean().item() < 0.02
    if even == "pad":  # the added row/column repeats the last one
        assert (back[:, -1, :65] - frames[:, -1]).abs().mean().item() < 0.03
        assert (back[:, :49, -1] - frames[:, :, -1]).abs().mean().item() < 0.03


def test_fallback_codec_and_unknown_codec(tmp_path):
    path = tmp_path / "mpeg4.mp4"
    assert write_video(path, moving_square(frames=5), FPS, codec="mpeg4") == "mpeg4"
    back, _ = read_video(path)
    assert back.shape == (5, H, W, 3) and frame_indices(back) == [0, 1, 2, 3, 4]
    with pytest.raises(BackendUnavailableError, match="not available"):
        write_video(tmp_path / "x.mp4", moving_square(frames=1), FPS, codec="no-such-codec")


def test_webm_gets_vp9(tmp_path):
    path = tmp_path / "clip.webm"
    codec = write_video(path, moving_square(frames=5), FPS)
    assert codec == available_codecs("webm")[0]
    back, fps = read_video(path)
    assert back.shape == (5, H, W, 3) and fps == pytest.approx(8.0)
    assert frame_indices(back) == [0, 1, 2, 3, 4]


def test_animated_gif_reads_as_video(tmp_path):
    from PIL import Image
    arrays = (moving_square(frames=6).numpy() * 255).round().astype(np.uint8)
    images = [Image.fromarray(a) for a in arrays]
    images[0].save(tmp_path / "a.gif", save_all=True, append_images=images[1:], duration=120, loop=0)
    back, fps = read_video(tmp_path / "a.gif")
    assert back.shape == (6, H, W, 3) and fps == pytest.approx(1 / 0.12)
    assert frame_indices(back) == list(range(6))


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.mp4"
    write_video(path, moving_square(frames=5), FPS)
    before = path.read_bytes()

    def broken_encode(tmp, *args):
        with open(tmp, "wb") as f:
            f.write(b"half a video")
        raise av.error.InvalidDataError(1094995529, "simulated encoder failure")

    monkeypatch.setattr(video_io, "_encode", broken_encode)
    with pytest.raises(BackendUnavailableError, match="simulated"):
        write_video(path, moving_square(frames=9), FPS)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.mp4"]  # no temp files left behind


def test_write_argument_errors(tmp_path):
    frames = moving_square(frames=1)
    for bad in (0, -5, float("nan")):
        with pytest.raises(InputError, match="fps"):
            write_video(tmp_path / "a.mp4", frames, bad)
    with pytest.raises(InputError, match="extensions"):
        write_video(tmp_path / "a.avi2", frames, FPS)
    with pytest.raises(InputError, match="0 frames"):
        write_video(tmp_path / "a.mp4", frames[:0], FPS)
    with pytest.raises(InputError, match=r"\[F, H, W, 3\]"):
        write_video(tmp_path / "a.mp4", torch.zeros(2, 8, 8, 4), FPS)
    assert not (tmp_path / "a.mp4").exists()


def test_image_file_is_one_frame(tmp_path):
    from PIL import Image
    arr = (moving_square(frames=1)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "still.png")
    frames, fps = read_video(tmp_path / "still.png")
    assert frames.shape == (1, H, W, 3) and fps == 1.0
    assert torch.equal(frames[0], torch.from_numpy(arr).float() / 255)
    _, fps = read_video(tmp_path / "still.png", fps=12)
    assert fps == 12.0


def _write_raw(path, arrays, rotation=None, full_range=False):
    """Write rgb24 arrays with PyAV directly (for metadata write_video does not produce)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(available_codecs()[0], rate=FPS)
        stream.height, stream.width = arrays[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        cc = stream.codec_context
        if full_range:
            cc.color_range, cc.colorspace = 2, 5  # JPEG range, BT.601
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, arr in enumerate(arrays):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if full_range:
                frame = frame.reformat(format="yuv420p", dst_colorspace=5, dst_color_range=2)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_rotation_metadata_is_applied(tmp_path):
    frames = moving_square(frames=3)
    arrays = list((frames.numpy() * 255).round().astype(np.uint8))
    path = tmp_path / "rot.mp4"
    _write_raw(path, arrays, rotation=90)
    back, _ = read_video(path)
    assert back.shape == (3, W, H, 3)  # portrait: width and height swap
    expected = torch.from_numpy(np.rot90(frames.numpy(), k=1, axes=(1, 2)).copy())
    assert (back - expected).abs().mean().item() < 0.03


def test_full_range_video_reads_true_levels(tmp_path):
    arr = np.full((H, W, 3), 40, np.uint8)
    arr[:, W // 2:] = 200
    path = tmp_path / "full.mp4"
    _write_raw(path, [arr] * 3, full_range=True)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.color_range == 2  # tagged full (JPEG) range
    back, _ = read_video(path)
    # Read as limited range, 40 would come back as ~28 and 200 as ~214.
    left, right = back[:, 8:-8, 4:W // 2 - 4], back[:, 8:-8, W // 2 + 4:-4]
    assert (left - 40 / 255).abs().max().item() < 3 / 255
    assert (right - 200 / 255).abs().max().item() < 3 / 255


# -- bad inputs -------------------------------------------------------------------------------

def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    with pytest.raises(InputError, match="directory"):
        read_video(tmp_path)


def test_text_file_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(InputError, match="cannot open .* as a video"):
        read_video(path)


def test_truncated_file_is_reported(clip, tmp_path):
    data = clip[0].read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])  # the index (moov) sits at the end and is lost
    with pytest.raises(InputError, match="corrupt|truncated"):
        read_video(path)


def test_zero_decodable_frames(clip, tmp_path):
    data = bytearray(clip[0].read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(size - 8)  # container intact, every packet zeroed
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"no decodable frames.*corrupt"):
        read_video(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(InputError, match="no video stream"):
        read_video(path)


def test_read_argument_errors(clip):
    path = clip[0]
    for bad in (0, -1, float("inf")):
        with pytest.raises(InputError, match="fps"):
            read_video(path, fps=bad)
    with pytest.raises(InputError, match="max_frames"):
        read_video(path, max_frames=0)
    with pytest.raises(InputError, match="start"):
        read_video(path, start=-1)
    with pytest.raises(InputError, match="nothing left"):
        read_video(path, start=F)


def test_fps_fraction_is_exact():
    assert video_io._check_fps(29.97, "fps") == Fraction(2997, 100)
    assert video_io._check_fps(Fraction(30000, 1001), "fps") == Fraction(30000, 1001)
