"""Shared by the fuzz layer (tests/test_fuzz_*.py): broken input files, and the checks every fuzz case
makes — a clear error (a KiwiError, or one ``error:`` line from a command, never a traceback), and no
file in the work folder created, changed or lost."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from comfy_kiwi.errors import KiwiError

TOY_VIDEO = Path(__file__).resolve().parents[1] / "comfy_kiwi" / "toy" / "examples" / "toy_scene.mp4"
NON_UTF8 = b"\xff\xfe make it red".decode("utf-8", "surrogateescape")     # what a Latin-1 shell hands Python
LONG_TEXT = "make the car red " * 6000                                      # ≈ 100k characters


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` → its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_broken_files(folder: Path) -> dict[str, Path]:
    """Inputs a user can hand us by mistake, each a real file of its kind gone wrong."""
    from PIL import Image

    from comfy_kiwi.video_io import write_video
    folder.mkdir(parents=True, exist_ok=True)
    f = {"video": folder / "toy.mp4", "existing": folder / "existing.mp4"}
    shutil.copy(TOY_VIDEO, f["video"])
    shutil.copy(TOY_VIDEO, f["existing"])              # an earlier result: no failing run may touch it
    data = TOY_VIDEO.read_bytes()
    f["truncated"] = folder / "truncated.mp4"
    f["truncated"].write_bytes(data[: len(data) // 3])
    f["garbage"] = folder / "garbage.mp4"
    f["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    f["empty"] = folder / "empty.mp4"
    f["empty"].write_bytes(b"")
    f["zero_frames"] = folder / "zero_frames.mp4"
    _write_zero_frame_video(f["zero_frames"])
    f["one_pixel_video"] = folder / "one_pixel.mp4"
    write_video(f["one_pixel_video"], torch.rand(5, 1, 1, 3), 8)
    f["one_pixel_png"] = folder / "one_pixel.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(f["one_pixel_png"])
    f["corrupt_png"] = folder / "corrupt.png"
    buf = (folder / "one_pixel.png").read_bytes()
    f["corrupt_png"].write_bytes(buf[:20] + b"\x00" * 10)
    f["garbage_safetensors"] = folder / "garbage.safetensors"
    f["garbage_safetensors"].write_bytes(b"\xff" * 64)
    f["huge_header_safetensors"] = folder / "huge_header.safetensors"
    f["huge_header_safetensors"].write_bytes((2 ** 40).to_bytes(8, "little") + b"{}")
    f["pickle_pt"] = folder / "weights.pt"
    f["pickle_pt"].write_bytes(pickle.dumps({"blocks.0.weight": torch.zeros(2)}))
    f["empty_dir"] = folder / "empty_dir"
    f["empty_dir"].mkdir()
    f["text_file"] = folder / "notes.txt"
    f["text_file"].write_text("not a model")
    return f


def truncated_copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def _write_zero_frame_video(path: Path) -> None:
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
        for packet in s.encode(None):
            c.mux(packet)


def assert_command_fails_clearly(main, argv, folder: Path, words: str, capsys) -> str:
    """Run a command's ``main(argv)``; it must fail with one clear error line naming ``words``, and leave every
    file under ``folder`` as it was (nothing created, changed or lost)."""
    before = snapshot(folder)
    try:
        rc = main(argv)
    except SystemExit as e:        # argparse's own errors (a number that is not one, an unknown choice)
        rc = e.code
    line = assert_clear_command_error(rc, capsys.readouterr().err)
    assert words.lower() in line.lower(), line[:500]
    assert snapshot(folder) == before
    return line


def assert_clear_command_error(rc, err: str) -> str:
    """A command failed the way a user can read: exit status 2, the last stderr line an ``error:`` line of
    reasonable length, no traceback."""
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and lines, (rc, err[-2000:])
    last = lines[-1]
    assert last.startswith("error:") or ": error:" in last, last[:500]
    assert len(last) < 800, f"error line of {len(last)} characters: {last[:300]}…"
    return last


def assert_clear_error(call) -> KiwiError:
    """``call()`` raises a KiwiError (what nodes and library calls must raise for bad input) whose message
    is short enough to read."""
    try:
        call()
    except KiwiError as e:
        assert 10 < len(str(e)) < 800, str(e)[:300]
        return e
    except Exception as e:       # noqa: BLE001 - the point: any other exception is a failure of this layer
        raise AssertionError(f"raw {type(e).__name__} instead of a clear error: {str(e)[:500]}") from e
    raise AssertionError("no error raised")
