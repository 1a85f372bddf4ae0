"""Video files in and out through PyAV (FFmpeg's libraries; no ffmpeg executable needed).

Frames are float32 ``[F, H, W, 3]`` in 0..1, the project-wide convention (see :mod:`comfy_kiwi.frames`).

Reading (:func:`read_video`)
    * ``max_frames`` keeps the first N frames (after skipping ``start`` frames) and stops decoding
      there, like the Kiwi loader (first ``num_frames``, no stride).
    * ``fps`` resamples to a target rate instead: output frame k is the source frame whose
      timestamp is nearest to ``k / fps`` seconds after the first kept frame (exact rational
      arithmetic; a tie goes to the earlier frame). Targets run until the end of the last source
      frame's display time, so 17 frames at 8 fps (2.125 s) give 9 frames at 4 fps (source frames
      0, 2, ..., 16) and 34 at 16 fps (each source frame twice).
    * YUV -> RGB uses the colour matrix and range the stream is tagged with (BT.709, BT.601, full or
      limited range); untagged streams get FFmpeg's default (BT.601, limited), the same as the
      ffmpeg-based reader the Kiwi loader uses. >8-bit streams are read at 16 bits per channel.
    * Rotation metadata (phone videos) is applied in multiples of 90 degrees.
    * Image files (jpg, png, webp, bmp, tiff) are read as one-frame videos.

Writing (:func:`write_video`)
    * H.264 (libx264, ``crf``) in .mp4 when FFmpeg has it, else libopenh264, mpeg4, VP9; the codec
      used is returned. .webm files get VP9 (else VP8, AV1). Output is yuv420p tagged BT.709 /
      limited range.
    * yuv420p needs even width and height: odd sizes are padded by repeating the last row/column
      (``even="pad"``, the default, keeps every input pixel) or cropped (``even="crop"``).
    * ``codec="ffv1"`` (in .mkv) stores RGB losslessly instead: what is read back is exactly what was
      written (training data one must not degrade, e.g. the toy world's clips).
    * Atomic: encoded into a hidden temp file next to the target and renamed over it only when
      complete, so a failed write leaves any existing file untouched.
"""

from __future__ import annotations

import math
import os
import uuid
from fractions import Fraction

import numpy as np
import torch

from .errors import BackendUnavailableError, InputError
from .frames import _to_uint8_array, check_frames, check_input_file, load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "CODEC_PREFERENCE",
    "WEBM_CODEC_PREFERENCE",
    "read_video",
    "write_video",
    "available_codecs",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Containers write_video produces, and the encoders tried for each (best first).
VIDEO_EXTENSIONS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
CODEC_PREFERENCE = ("libx264", "libopenh264", "mpeg4", "libvpx-vp9")
WEBM_CODEC_PREFERENCE = ("libvpx-vp9", "libvpx", "libsvtav1")

# AVColorSpace values that swscale can take directly as a conversion matrix
# (BT.709, FCC, BT.470BG, SMPTE170M, SMPTE240M, BT.2020 NCL).
_KNOWN_COLORSPACES = {1, 4, 5, 6, 7, 9}
_RANGE_MPEG, _RANGE_JPEG = 1, 2
_BT709 = 1


def _av():
    try:
        import av  # noqa: PLC0415 - imported lazily so the library imports without PyAV
    except ImportError as e:  # pragma: no cover - av is a declared dependency
        raise BackendUnavailableError("video IO needs PyAV: pip install av") from e
    return av


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def _check_fps(fps, what: str) -> Fraction:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a positive number of frames per second; got {fps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be a positive number of frames per second (e.g. 16 or 29.97); got {fps!r}")
    if isinstance(fps, Fraction):
        return fps
    # repr() gives the shortest decimal for the float, so 29.97 becomes 2997/100, not a binary fraction.
    return Fraction(repr(value)).limit_denominator(1_000_000)


def available_codecs(container: str = "mp4") -> list:
    """The encoders this PyAV's FFmpeg has for ``container`` ("mp4", "mov", "matroska", "webm"), best first."""
    av = _av()
    found = []
    for name in WEBM_CODEC_PREFERENCE if container == "webm" else CODEC_PREFERENCE:
        try:
            av.Codec(name, "w")
        except Exception:  # unknown codec or decoder-only build
            continue
        found.append(name)
    return found


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _frame_to_array(frame, reformatter) -> np.ndarray:
    """Decoded frame -> [H, W, 3] uint8 (8-bit sources) or uint16 (deeper sources), upright.

    ``reformatter`` is one ``av.video.reformatter.VideoReformatter`` per file, so the swscale
    context is built once instead of once per frame.
    """
    kwargs = {}
    # Pass the stream's own colour tags explicitly: newer PyAV reads them from the frame anyway,
    # older versions would otherwise assume BT.601 limited range for everything.
    if frame.colorspace in _KNOWN_COLORSPACES:
        kwargs["src_colorspace"] = int(frame.colorspace)
    if frame.color_range in (_RANGE_MPEG, _RANGE_JPEG):
        kwargs["src_color_range"] = int(frame.color_range)
    deep = frame.format.components[0].bits > 8
    rgb = reformatter.reformat(frame, format="rgb48le" if deep else "rgb24", **kwargs)
    arr = rgb.to_ndarray()
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 90 == 0 and rotation % 360 != 0:
        # `rotation` is counter-clockwise degrees for display; np.rot90 turns counter-clockwise too.
        arr = np.rot90(arr, k=(rotation // 90) % 4)
    return np.ascontiguousarray(arr)


def _stream_rate(stream):
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, attr, None)
        if rate:
            return Fraction(rate)
    return None


def _timed_frames(container, stream, start: int, path: str, counter: list):
    """Yield ``(time, frame)`` from ``start`` on; time in seconds (Fraction) from the first kept frame."""
    av = _av()
    rate = _stream_rate(stream)
    t0 = None
    index = 0
    try:
        for frame in container.decode(stream):
            counter[0] += 1
            if index < start:
                index += 1
                continue
            if frame.pts is not None and frame.time_base:
                t = frame.pts * Fraction(frame.time_base)
            else:  # no timestamps (raw streams): assume a constant rate
                t = Fraction(index) / (rate or 1)
            if t0 is None:
                t0 = t
            index += 1
            yield t - t0, frame
    except av.FFmpegError as e:
        if counter[0] == 0:
            raise InputError(
                f"{path!r} has no decodable frames: the decoder rejected its data ({e}); the file is "
                f"corrupt or its content does not match its container"
            ) from e
        raise InputError(
            f"{path!r} is corrupt or truncated: decoding failed after {counter[0]} frame(s) ({e})"
        ) from e


def _frame_duration(frame, rate, last_gap):
    duration = getattr(frame, "duration", None)
    if duration and frame.time_base:
        return duration * Fraction(frame.time_base)
    if rate:
        return 1 / rate
    return last_gap


def _nearest_resample(timed, fps: Fraction, max_frames, rate):
    """Yield the source frame nearest to each target time ``k / fps`` (ties -> the earlier frame)."""
    step = 1 / fps
    k = 0
    prev = None  # (time, frame)
    last_gap = step
    for t, frame in timed:
        while k * step <= t:
            target = k * step
            if prev is not None and target - prev[0] <= t - target:
                yield prev[1]
            else:
                yield frame
            k += 1
            if max_frames is not None and k >= max_frames:
                return
        if prev is not None and t > prev[0]:
            last_gap = t - prev[0]
        prev = (t, frame)
    if prev is None:
        return
    # Past the last frame: it stays on screen for its duration; fill targets inside that span.
    end = prev[0] + _frame_duration(prev[1], rate, last_gap)
    while k * step < end and (max_frames is None or k < max_frames):
        yield prev[1]
        k += 1


def _stack(arrays: list) -> torch.Tensor:
    """List of [H, W, 3] uint8/uint16 arrays -> float32 [F, H, W, 3] in 0..1 without an extra copy."""
    h, w, _ = arrays[0].shape
    out = torch.empty((len(arrays), h, w, 3), dtype=torch.float32)
    for i, arr in enumerate(arrays):
        if arr.dtype == np.uint16:
            out[i] = torch.from_numpy(arr.astype(np.float32) * (255.0 / 65535.0))
        else:
            out[i] = torch.from_numpy(arr)
    return out.div_(255.0)


def read_video(path, max_frames: int | None = None, fps: float | None = None, start: int = 0):
    """Read a video (or an image as a one-frame video).

    Args:
        path: video file FFmpeg can decode (mp4, mov, mkv, webm, avi, gif, ...) or an image file.
        max_frames: keep at most this many output frames (None: all).
        fps: None keeps every source frame; a number resamples to that rate by picking the
            source frame nearest to each target time (see the module docstring).
        start: number of source frames to skip first (the resampling clock starts at the first
            kept frame).

    Returns:
        ``(frames, fps)``: float32 ``[F, H, W, 3]`` in 0..1, and the frame rate of the returned
        frames — the requested ``fps`` when resampling, else the stream's average rate (from the
        timestamps when the container has none; 1.0 for a still image).
    """
    path = check_input_file(path, "video")
    if max_frames is not None and int(max_frames) < 1:
        raise InputError(f"max_frames must be at least 1 (or None for all frames); got {max_frames}")
    if int(start) < 0:
        raise InputError(f"start (source frames to skip) must be >= 0; got {start}")
    start = int(start)
    target_fps = None if fps is None else _check_fps(fps, "fps")

    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
        image = load_image(path)
        if start > 0:
            raise InputError(f"{path!r} is a still image (1 frame); cannot skip {start} frame(s)")
        return image, float(target_fps) if target_fps is not None else 1.0

    av = _av()
    try:
        container = av.open(path, mode="r")
    except av.FFmpegError as e:
        raise InputError(
            f"cannot open {path!r} as a video: FFmpeg found no readable media in it ({e}). Accepted: video "
            f"files FFmpeg can decode (mp4, mov, mkv, webm, avi, gif, ...) or images "
            f"({', '.join(IMAGE_EXTENSIONS)}); the file may be corrupt, truncated or not a video"
        ) from e
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise InputError(f"{path!r} has no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is the slow part
        rate = _stream_rate(stream)
        counter = [0]
        timed = _timed_frames(container, stream, start, path, counter)
        reformatter = av.video.reformatter.VideoReformatter()

        arrays, cache = [], {}
        timestamps_rate = None
        if target_fps is None:
            last_t = 0
            for last_t, frame in timed:
                arrays.append(_frame_to_array(frame, reformatter))
                if max_frames is not None and len(arrays) >= max_frames:
                    break
            if len(arrays) > 1 and last_t > 0:  # containers without a rate: measure it
                timestamps_rate = float((len(arrays) - 1) / last_t)
        else:
            for frame in _nearest_resample(timed, target_fps, max_frames, rate):
                key = id(frame)
                if key not in cache:  # an upsampled frame repeats: convert it once
                    cache.clear()
                    cache[key] = (frame, _frame_to_array(frame, reformatter))
                arrays.append(cache[key][1])
        timed.close()

    if not arrays:
        if start > 0 and counter[0] > 0:
            raise InputError(f"{path!r} has only {counter[0]} frame(s); nothing left after skipping {start}")
        raise InputError(f"{path!r} has a video stream but no decodable frames")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"{path!r} changes frame size mid-stream ({sorted(shapes)}); re-encode it to one size")

    if target_fps is not None:
        out_fps = float(target_fps)
    elif rate:
        out_fps = float(rate)
    else:
        out_fps = 1.0 if timestamps_rate is None else timestamps_rate
    return _stack(arrays), out_fps


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _make_even(frames: torch.Tensor, even: str) -> torch.Tensor:
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    if even == "crop":
        if h < 2 or w < 2:
            raise InputError(f"cannot crop a {w}x{h} video to even size; use even='pad'")
        return frames[:, : h - h % 2, : w - w % 2]
    # Repeat the last row/column: no content is lost, and the edge stays visually seamless.
    if h % 2:
        frames = torch.cat([frames, frames[:, -1:]], dim=1)
    if w % 2:
        frames = torch.cat([frames, frames[:, :, -1:]], dim=2)
    return frames


# Encoders that store RGB losslessly, and the pixel format they take.
LOSSLESS_RGB_CODECS = {"ffv1": "bgr0"}


def _codec_setup(stream, codec: str, crf: int, fps: Fraction) -> None:
    cc = stream.codec_context
    if codec in ("libx264", "libx265"):
        stream.options = {"crf": str(crf), "preset": "medium"}
        return
    if codec == "libvpx-vp9":
        stream.options = {"crf": str(min(63, crf + 13)), "b": "0", "row-mt": "1"}
        return
    # Bitrate-driven encoders: ~0.4 bit per pixel at crf 18, doubling every 6 crf steps down
    # (x264's rule of thumb), with a floor so tiny test clips are not starved.
    bits_per_pixel = 0.4 * 2.0 ** ((18 - crf) / 6.0)
    cc.bit_rate = max(2_000_000, int(stream.width * stream.height * float(fps) * bits_per_pixel))
    if codec == "mpeg4":
        stream.options = {"qmin": "1", "qmax": "8"}


def _encode(tmp_path: str, fmt: str, codec: str, arrays: list, fps: Fraction, crf: int) -> None:
    av = _av()
    h, w, _ = arrays[0].shape
    rgb_format = LOSSLESS_RGB_CODECS.get(codec)
    with av.open(tmp_path, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, rgb_format or "yuv420p"
        cc = stream.codec_context
        cc.time_base = 1 / fps
        if rgb_format is None:
            # Tag what we encode so every reader converts back with the same matrix.
            cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = _BT709, _RANGE_MPEG, _BT709, _BT709
            _codec_setup(stream, codec, crf, fps)
        reformatter = av.video.reformatter.VideoReformatter()  # one swscale context for all frames
        for i, arr in enumerate(arrays):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if rgb_format is not None:          # RGB → packed RGB: a byte shuffle, no colour matrix
                frame = reformatter.reformat(frame, format=rgb_format)
            else:
                frame = reformatter.reformat(frame, format="yuv420p", dst_colorspace=_BT709,
                                             dst_color_range=_RANGE_MPEG)
            frame.pts, frame.time_base = i, cc.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def write_video(path, frames, fps: float, codec: str | None = None, crf: int = 18, even: str = "pad") -> str:
    """Write ``[F, H, W, 3]`` frames (float 0..1 or uint8) to a video file; return the codec used.

    Args:
        path: output file; ``.mp4`` (also ``.m4v``, ``.mov``, ``.mkv``, ``.webm``). Missing folders
            are created.
        frames: the frames; values outside 0..1 are clipped.
        fps: frame rate (> 0; fractional rates such as 29.97 are kept exact as 2997/100).
        codec: None picks the first of :data:`CODEC_PREFERENCE` (:data:`WEBM_CODEC_PREFERENCE` for
            .webm) that works; a name forces that encoder (:class:`BackendUnavailableError` if this
            FFmpeg lacks it or the container cannot hold it).
        crf: quality for libx264 (0 = lossless luma, 18 ~ visually lossless, 23 = x264 default);
            bitrate-driven fallbacks scale their bitrate from it. (yuv420p halves the colour
            resolution at any crf; ``codec="ffv1"`` in .mkv is the exactly lossless choice.)
        even: ``"pad"`` (repeat the last row/column) or ``"crop"`` for odd sizes.
    """
    av = _av()
    path = os.fspath(path)
    fmt = VIDEO_EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise InputError(f"cannot write {path!r}: use one of the extensions {', '.join(VIDEO_EXTENSIONS)}")
    if os.path.isdir(path):
        raise InputError(f"cannot write video to {path!r}: it is a directory")
    rate = _check_fps(fps, "fps")
    if not 0 <= int(crf) <= 51:
        raise InputError(f"crf must be between 0 (lossless) and 51; got {crf}")
    if even not in ("pad", "crop"):
        raise InputError(f"even must be 'pad' or 'crop'; got {even!r}")
    frames = check_frames(frames)
    if frames.shape[0] == 0:
        raise InputError("cannot write a video with 0 frames")
    if codec not in LOSSLESS_RGB_CODECS:     # only yuv420p needs even sizes
        frames = _make_even(frames, even)
    # One uint8 copy up front: the encoder loop then only wraps arrays.
    arrays = [_to_uint8_array(f) for f in frames]

    if codec is None:
        candidates = available_codecs(fmt)
        if not candidates:
            wanted = WEBM_CODEC_PREFERENCE if fmt == "webm" else CODEC_PREFERENCE
            raise BackendUnavailableError(
                f"this PyAV/FFmpeg build has none of the video encoders {', '.join(wanted)} for {path!r}; "
                f"install a PyAV wheel with libx264 and libvpx (pip install av)"
            )
    else:
        try:
            av.Codec(codec, "w")
        except Exception:
            raise BackendUnavailableError(
                f"video encoder {codec!r} is not available in this PyAV/FFmpeg build; "
                f"available here: {', '.join(available_codecs(fmt)) or 'none'}"
            ) from None
        candidates = [codec]

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    failures = []
    for name in candidates:
        tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:8]}.partial{ext}")
        try:
            _encode(tmp, fmt, name, arrays, rate, int(crf))
            os.replace(tmp, path)
            return name
        except av.FFmpegError as e:
            failures.append(f"{name}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise BackendUnavailableError(f"could not encode {path!r} with any codec tried: {'; '.join(failures)}")
