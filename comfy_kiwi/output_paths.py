"""Where results are written: checked before the work starts, and written so that a failure loses nothing.

A command that finds out after minutes of sampling or training that it cannot write its result has wasted
the user's time; one that truncates an earlier result and then fails has lost it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import InputError


def check_writable_folder(folder, label: str) -> None:
    """``folder`` (or, while it does not exist yet, the nearest folder above it) takes a new file: probed
    with a temporary file that is removed again. ``label`` names the option in the error."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kiwi-write-check-"):
            pass
    except OSError as e:
        raise InputError(f"{label}: cannot write there ({e.strerror or e}).") from None


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path beside ``path``; once the block has written it completely, it is renamed
    over ``path``. An existing file is only ever replaced by a complete new one; a failed write leaves
    nothing behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
