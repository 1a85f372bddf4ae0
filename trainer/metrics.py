"""Metrics: one JSON object per line in ``metrics.jsonl`` (and TensorBoard when it is installed)."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, path, tensorboard: bool = True, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            # drop lines written after the checkpoint we resume from (the killed run's tail)
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None and self.path.is_file():
            self.path.unlink()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:
                self.writer = None

    def log(self, step: int, values: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
