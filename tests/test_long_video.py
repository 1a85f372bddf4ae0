"""Long-video editing in overlapping windows on the tiny Kiwi release."""

import pytest
import torch

from comfy_kiwi import EditPipeline, EditSettings
from comfy_kiwi.errors import InputError
from comfy_kiwi.methods.instructx import edit as edit_long_video
from comfy_kiwi.methods.instructx import window_starts
from comfy_kiwi.testing.tiny_release import tiny_video_frames, write_tiny_kiwi_release

FAST = EditSettings(steps=2, max_pixels=64 * 64, num_frames=None, progress=False)


def test_window_layout():
    assert window_starts(81, 81) == [(0, 81)]
    assert window_starts(161, 81) == [(0, 81), (80, 81)]
    assert window_starts(101, 81) == [(0, 81), (80, 21)]
    assert window_starts(13, 5) == [(0, 5), (4, 5), (8, 5)]
    assert window_starts(17, 9) == [(0, 9), (8, 9)]
    for n, w in ((161, 81), (101, 81), (13, 5), (45, 21)):
        spans = window_starts(n, w)
        assert all((length - 1) % 4 == 0 for _, length in spans)
        assert 1 + sum(length - 1 for _, length in spans) == n     # one shared frame per boundary
    with pytest.raises(InputError, match="4k\\+1"):
        window_starts(13, 6)
    with pytest.raises(InputError, match="4k\\+1 frames after"):
        window_starts(12, 5)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = write_tiny_kiwi_release(tmp_path_factory.mktemp("rel") / "kiwi", "instruct-only")
    return EditPipeline.from_pretrained(root, dtype=torch.float32, device="cpu")


def test_long_video_boundaries_and_frame_count(pipe):
    frames = tiny_video_frames(13, 64, 64)
    seen_sources, windows = [], []
    original_encode = pipe.encode_source

    def spy(f, *a, **kw):
        seen_sources.append(f.clone())
        return original_encode(f, *a, **kw)

    pipe.encode_source = spy
    try:
        out = edit_long_video(pipe, frames, "make it red", settings=FAST, window=5,
                              on_window=lambda j, s, n: windows.append((s, n)))
    finally:
        del pipe.encode_source
    prepared = pipe.prepare(frames, FAST)
    assert out.shape == prepared.shape                          # 13 in, 13 out
    assert windows == [(0, 5), (4, 5), (8, 5)]
    assert torch.equal(seen_sources[0], prepared[0:5])
    # windows 1 and 2: first source frame = the previous window's last edited frame, rest original
    assert torch.equal(seen_sources[1][0], out[4]) and torch.equal(seen_sources[1][1:], prepared[5:9])
    assert torch.equal(seen_sources[2][0], out[8]) and torch.equal(seen_sources[2][1:], prepared[9:13])
    # window 0 alone reproduces the first five output frames exactly
    first = pipe.edit(prepared[:5], "make it red", settings=FAST)
    assert torch.equal(first.frames, out[:5])


def test_short_video_is_one_window(pipe):
    frames = tiny_video_frames(5, 64, 64)
    out = edit_long_video(pipe, frames, "make it red", settings=FAST, window=9)
    assert torch.equal(out, pipe.edit(frames, "make it red", settings=FAST).frames)
