"""Peak DiT weight memory on the compute device with block swap N versus without.

Model: Wan2.1-1.3B widths (dim 1536, ffn 8960, 12 heads) with ``--blocks`` blocks, fp32, 768 tokens.
This machine has no GPU, so compute and storage are both the CPU; block swap still makes a real copy
of each block it "brings to the device", and the peak of those resident bytes (plus the always-
resident blocks, embeddings and head) is recorded by ``BlockSwap`` (its bound is checked against an
independent pointer probe in tests/test_memory_block_swap.py). Also reported: time per forward
relative to no swap (on a CPU this is the cost of the copies; on a GPU the side-stream prefetch
overlaps them with compute), and that outputs are bit-identical.

    python bench/block_swap_memory.py [--blocks 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_kiwi.memory import BlockSwap  # noqa: E402
from comfy_kiwi.models.wan_config import WanDiTConfig  # noqa: E402
from comfy_kiwi.comfyui.placement import module_bytes  # noqa: E402
from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_dit  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=8)
    args = ap.parse_args(argv)
    L = args.blocks
    dit = tiny_dit(config=WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=L))
    x = random_inputs(dit, frames=3, height=32, width=32, context_len=512)
    total = module_bytes(dit)
    non_block = total - sum(module_bytes(b) for b in dit.blocks)
    print(f"config: dim 1536, ffn 8960, heads 12, {L} blocks, 768 tokens; weights {total / 2**20:.0f} MiB "
          f"({module_bytes(dit.blocks[0]) / 2**20:.0f} MiB per block)")
    with torch.no_grad():
        ref = dit(**x)
        t0 = time.perf_counter()
        dit(**x)
        base = time.perf_counter() - t0
        print(f"{'N':>3} {'prefetch':>8} {'peak resident MiB':>18} {'vs no swap':>10} {'time vs no swap':>15} exact")
        print(f"{0:>3} {'-':>8} {total / 2**20:>18.0f} {1.0:>10.3f} {1.0:>15.3f} True")
        for n in (L // 4, L // 2, L):
            for prefetch in (False, True):
                swap = BlockSwap(dit, n, prefetch=prefetch).install()
                t0 = time.perf_counter()
                out = dit(**x)
                dt = time.perf_counter() - t0
                swap.remove()
                peak = swap.peak_resident_bytes + non_block
                print(f"{n:>3} {str(prefetch):>8} {peak / 2**20:>18.0f} {peak / total:>10.3f} {dt / base:>15.3f} "
                      f"{torch.equal(out, ref)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
