"""Sampling loop time / (steps × one DiT forward), on this CPU (goal ≤ 1.05).

The DiT has Wan2.1-1.3B widths (dim 1536, ffn 8960, 12 heads) with ``--blocks`` blocks, a Kiwi
source embedder and a DiT-wide context of 512 tokens (the MLLM path); latents [1, 16, 3, 32, 32]
→ 768 tokens; fp32. The forwards are timed inside the sampling run itself (the machine is shared, so separate runs drift);
the ratio is the loop's wall time over the sum of its forwards. Measured twice: ``sample_edit`` as
is, and inside ``kv_cache(dit)`` (K/V of the context computed once).

    python bench/sampling_overhead.py [--blocks 4] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_kiwi.memory import kv_cache  # noqa: E402
from comfy_kiwi.models.wan_config import WanDiTConfig  # noqa: E402
from comfy_kiwi.pipeline import EditConditioning, EditSettings, SourceConditioning, sample_edit  # noqa: E402
from comfy_kiwi.testing.tiny_dit import tiny_dit  # noqa: E402


class TimedDiT(torch.nn.Module):
    """The DiT, with the wall time of each forward recorded (timed inside the same run as the loop,
    so other load on the machine affects both sides of the ratio alike)."""

    def __init__(self, dit):
        super().__init__()
        self.dit, self.times = dit, []

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.dit(*args, **kwargs)
        self.times.append(time.perf_counter() - t0)
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args(argv)
    cfg = WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=args.blocks)
    dit = tiny_dit(config=cfg, embedders=True)
    g = torch.Generator().manual_seed(0)
    src = torch.randn(1, 16, 3, 32, 32, generator=g)
    ctx = torch.randn(1, 512, cfg.dim, generator=g)
    settings = EditSettings(steps=args.steps, progress=False)
    cond, source = EditConditioning(ctx), SourceConditioning(src)
    print(f"config: dim 1536, ffn 8960, heads 12, blocks {args.blocks}, tokens {3 * 16 * 16}, context 512, "
          f"steps {args.steps}, fp32, threads {torch.get_num_threads()}")
    timed = TimedDiT(dit)
    for use_cache in (False, True):
        timed.times.clear()
        with kv_cache(dit, enabled=use_cache):
            t0 = time.perf_counter()
            sample_edit(timed, cond, source, settings)
            loop = time.perf_counter() - t0
        fw = sum(timed.times)
        print(f"(b){' kv_cache' if use_cache else ''}: sampling {args.steps} steps {loop:.3f} s, the DiT forwards "
              f"inside it {fw:.3f} s (median {statistics.median(timed.times):.3f} s) → loop/(steps × forward) = "
              f"{loop / fw:.4f} (goal ≤ 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
