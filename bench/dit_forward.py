"""DiT forward speed on this CPU, at Wan2.2-TI2V-5B widths with fewer blocks.

(a) ours / diffusers ``WanTransformer3DModel`` holding identical weights (goal ≤ 1.0);
(c) ours / the same forward's matrix products, convolutions and attention calls alone: every
    ``F.linear`` / ``F.conv3d`` / ``F.scaled_dot_product_attention`` call of one forward is recorded
    (with its real input tensors) and replayed back to back; the ratio is the cost of everything else
    (norms, modulation, RoPE, casts, reshapes).

Dims: dim 3072, ffn 14336, 24 heads (head width 128), in/out 48 channels, text_dim 4096 (the umT5
path, which diffusers always takes), ``--blocks`` blocks (default 2 of 30), latents [1, 48, 2, 32, 32]
→ 512 tokens, context 512 tokens; fp32, eval, no_grad; best of ``--repeats`` timings, alternating.

    python bench/dit_forward.py [--blocks 2] [--repeats 3] [--frames 2] [--size 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_kiwi.models.wan_config import WanDiTConfig  # noqa: E402
from comfy_kiwi.testing.tiny_dit import diffusers_twin, tiny_dit  # noqa: E402

KERNELS = (F.linear, F.conv3d, F.scaled_dot_product_attention)


class Recorder(TorchFunctionMode):
    """Records (function, args, kwargs) of every heavy call made during a forward."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in KERNELS:
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = WanDiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=args.blocks, in_dim=48, out_dim=48)
    ours = tiny_dit(config=cfg, seed=0)
    ours.sinusoid_dtype = torch.float32          # diffusers' time-embedding numerics, for the check below
    ours.attention_backend = "sdpa"
    theirs = diffusers_twin(ours)
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(1, 48, args.frames, args.size, args.size, generator=g)
    t = torch.tensor([700.0])
    ctx = torch.randn(1, 512, cfg.text_dim, generator=g)
    tokens = args.frames * (args.size // 2) ** 2
    print(f"config: dim {cfg.dim}, ffn {cfg.ffn_dim}, heads {cfg.num_heads}, blocks {cfg.num_layers} (of 30), "
          f"in/out 48, tokens {tokens}, context 512×{cfg.text_dim}, fp32, threads {torch.get_num_threads()}")

    with torch.no_grad():
        a, b = ours(lat, t, ctx), theirs(lat, t, ctx, return_dict=False)[0]
        print(f"outputs agree: max abs diff {(a - b).abs().max().item():.2e}")
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):        # alternate, so drift of the machine hits both
            t_ours.append(best_time(lambda: ours(lat, t, ctx), 1))
            t_theirs.append(best_time(lambda: theirs(lat, t, ctx, return_dict=False), 1))
        fo, fd = min(t_ours), min(t_theirs)

        rec = Recorder()
        with rec:
            ours(lat, t, ctx)
        calls = rec.calls

        def replay():
            for func, a_, kw in calls:
                func(*a_, **kw)
        replay()
        t_kern, t_ours2 = [], []
        for _ in range(args.repeats):        # alternate here too
            t_kern.append(best_time(replay, 1))
            t_ours2.append(best_time(lambda: ours(lat, t, ctx), 1))
        fk, fo2 = min(t_kern), min(t_ours2)
    print(f"(a) forward: ours {fo:.3f} s, diffusers {fd:.3f} s → ours/diffusers = {fo / fd:.3f} (goal ≤ 1.0)")
    print(f"(c) kernels alone ({len(calls)} linear/conv/attention calls): {fk:.3f} s → forward/kernels = "
          f"{fo2 / fk:.3f} (forward {fo2:.3f} s in this interleaved series)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
