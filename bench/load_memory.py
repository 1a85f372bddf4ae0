"""Peak memory of ``load_dit`` on a full-size Wan2.1-T2V-1.3B bf16 checkpoint, relative to the file size.

Writes a random bf16 safetensors file with the exact ``wan2.1-t2v-1.3b`` keys and shapes (~2.8 GB)
to a temporary folder (streamed, tensor by tensor), then loads it with ``load_dit`` in a fresh
subprocess: imports first, then the baseline RSS, the kernel's peak-RSS counter reset
(``/proc/self/clear_refs``; falls back to ``ru_maxrss``), the load, and the peak (``VmHWM``).
Reported: peak rise during the load / file size (goal ≤ 1.3) and the raw peak / file size (imports
included). The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so RSS follows live tensors.

    python bench/load_memory.py                 # writes, measures, deletes the file
    python bench/load_memory.py --keep DIR      # keep the file in DIR (reused when present)
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_rss import PeakRSS  # bench/peak_rss.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
PRESET = "wan2.1-t2v-1.3b"
GOAL = 1.3




def write_checkpoint(path: Path) -> int:
    """Stream a random bf16 checkpoint with the preset's keys/shapes; returns the file size."""
    import torch

    sys.path.insert(0, str(ROOT))
    from comfy_kiwi.models.wan_config import preset
    from comfy_kiwi.models.wan_dit import WanDiT

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(preset(PRESET)).state_dict().items()}
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = 2
        for s in shape:
            n *= s
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            t = torch.randn(shape, generator=g, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
            f.write(t.view(-1).view(torch.uint8).numpy().tobytes())
    return path.stat().st_size


def measure(path: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from comfy_kiwi.loading.dit_loader import load_dit

    torch.set_num_threads(2)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model = load_dit(path)
        seconds = time.perf_counter() - t0
    before, peak, exact = mem.before_kb, mem.peak_kb, mem.exact
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"baseline_mb": before / 1024, "peak_mb": peak / 1024, "weights_mb": params / 2**20,
            "seconds": seconds, "exact_peak": exact, "dtype": str(model.dtype)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="folder for the checkpoint (kept; reused when present)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{PRESET}-bf16.safetensors"
        t0 = time.perf_counter()
        size = path.stat().st_size if path.exists() else write_checkpoint(path)
        print(f"checkpoint: {path} ({size / 2**30:.2f} GiB, written/found in {time.perf_counter() - t0:.0f} s)")
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        res = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True,
                             cwd=ROOT, env=env)
        if res.returncode:
            sys.exit(res.stderr)
        r = json.loads(res.stdout.strip().splitlines()[-1])
    size_mb = size / 2**20
    rise = (r["peak_mb"] - r["baseline_mb"]) / size_mb
    raw = r["peak_mb"] / size_mb
    print(f"file {size_mb:.0f} MB | loaded weights {r['weights_mb']:.0f} MB ({r['dtype']}) | "
          f"baseline RSS {r['baseline_mb']:.0f} MB | peak RSS {r['peak_mb']:.0f} MB | load {r['seconds']:.1f} s")
    print(f"peak rise / file size = {rise:.3f} (goal ≤ {GOAL}); raw peak / file size = {raw:.3f}"
          f"{'' if r['exact_peak'] else ' (peak from ru_maxrss, not reset)'}")
    print("PASS" if rise <= GOAL else "FAIL")


if __name__ == "__main__":
    main()
