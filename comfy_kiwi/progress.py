"""Progress reporting and interruption, the same for every caller.

Inside ComfyUI (``comfy`` importable) steps go to ``comfy.utils.ProgressBar`` and every step asks
ComfyUI whether the user pressed "cancel"; elsewhere a tqdm bar is shown. The library never imports
ComfyUI at module import time: :mod:`comfy_kiwi.comfyui.adapter` is asked at run time.
"""

from __future__ import annotations

from .comfyui import adapter as comfy_adapter


class Progress:
    """``with Progress(total, "sampling") as p: ... p.step()`` — a bar plus an interrupt check."""

    def __init__(self, total: int, desc: str = "", enabled: bool = True, console: bool = True):
        """``console=False``: ComfyUI's bar only, no tqdm bar elsewhere (for inner loops such as the VAE's,
        which scripts and the trainer run many times). The interrupt check is always on."""
        self.total = int(total)
        self._comfy = comfy_adapter.progress_bar(self.total) if enabled else None
        self._tqdm = None
        if enabled and console and self._comfy is None:
            from tqdm.auto import tqdm
            self._tqdm = tqdm(total=self.total, desc=desc, leave=False)

    def check_interrupt(self) -> None:
        comfy_adapter.raise_if_interrupted()

    def step(self, n: int = 1) -> None:
        if self._comfy is not None:
            self._comfy.update(n)
        if self._tqdm is not None:
            self._tqdm.update(n)
        self.check_interrupt()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> "Progress":
        self.check_interrupt()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
