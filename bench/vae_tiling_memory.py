"""Peak memory of tiled vs untiled Wan VAE decoding on the CPU.

Each measurement runs in a fresh subprocess: build a random 2.1-structure VAE (a third of the real
width; big enough that activations, not weights, dominate), make latents, decode a tiny warm-up,
reset the kernel's peak-RSS counter (``/proc/self/clear_refs``; falls back to ``ru_maxrss``),
decode, and read the peak (``VmHWM``). Reported: the peak RSS rise during the decode (MB) and the
decode time. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc returns freed tensors to
the OS at once and RSS follows the live tensors (without it, RSS shows glibc's high-water mark).
The fp32 output video ``[1, 3, F, H, W]`` is part of every peak; its size is listed separately.

    python bench/vae_tiling_memory.py            # the table (a few minutes on 2 cores)
    python bench/vae_tiling_memory.py --quick    # smaller sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peak_rss import PeakRSS  # bench/peak_rss.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 5          # 2 latent frames: the first (1 pixel frame) and one full chunk (4 frames)
DIM = 32            # real Wan2.1: 96




def measure_one(size: int, tile: int | None) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from comfy_kiwi.models.wan_vae import WanVAE, WanVAEConfig
    from comfy_kiwi.testing.tiny_vae import randomize_

    torch.set_num_threads(2)
    torch.manual_seed(0)
    vae = randomize_(WanVAE(WanVAEConfig(version="2.1", dim=DIM, decoder_dim=DIM)), seed=0).eval()
    lat = size // vae.spatial_factor
    z = torch.randn(1, vae.z_dim, (FRAMES - 1) // 4 + 1, lat, lat)
    # warm-up on a tiny input so one-off allocations (thread pools, kernels) are not counted
    vae.decode(z[..., :2, :2])
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if tile is None:
            out = vae.decode(z)
        else:
            out = vae.decode(z, tiled=True, tile=(tile, tile), stride=(tile // 2, tile // 2))
        seconds = time.perf_counter() - t0
    before, peak, exact = mem.before_kb, mem.peak_kb, mem.exact
    return {"size": size, "tile": tile, "peak_rise_mb": (peak - before) / 1024,
            "output_mb": out.numel() * out.element_size() / 2**20, "seconds": seconds, "exact_peak": exact}


def run(size: int, tile: int | None) -> dict:
    cmd = [sys.executable, __file__, "--one", str(size), str(tile or 0)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller frames and tiles")
    ap.add_argument("--one", nargs=2, type=int, metavar=("SIZE", "TILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        size, tile = args.one
        print(json.dumps(measure_one(size, tile or None)))
        return
    # Tiles of 128 px and more: below that PyTorch's CPU conv3d leaves oneDNN for its im2col path
    # (a column buffer 27× the input, many times slower), which is a CPU artefact, not tiling.
    sizes = [128, 256] if args.quick else [256, 384, 512]
    tiles = [8, 16] if args.quick else [16, 24, 32]
    print(f"Wan2.1-structure VAE (dim {DIM}), {FRAMES} frames, square frames; tile and stride in latent "
          f"pixels (stride = tile/2).\nCell: peak RSS rise during decode in MB, decode seconds.")
    header = (f"{'frame (px)':>10} | {'output MB':>9} | {'untiled':>13} | "
              + " | ".join(f"{f'tile {t} ({8 * t}px)':>13}" for t in tiles))
    print(header)
    print("-" * len(header))
    for size in sizes:
        cells = []
        out_mb = 0.0
        for tile in [None, *tiles]:
            if tile is not None and tile >= size // 8:
                cells.append(f"{'= untiled':>13}")
                continue
            r = run(size, tile)
            out_mb = r["output_mb"]
            cells.append(f"{r['peak_rise_mb']:6.0f} {r['seconds']:5.1f}s")
        print(f"{f'{size}x{size}':>10} | {out_mb:9.1f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
