"""The memory estimates (``plan``, ``python -m trainer memory``) against CPU measurements of the real code.

    python bench/memory_estimates.py            # DiT forward, LoRA / frozen training step, VAE (about a minute)
    python bench/memory_estimates.py --mllm     # also the MLLM encode (Qwen2.5-VL-3B widths, ~2 minutes more)

Measured = the live tensors the code adds (``comfy_kiwi.testing.memory_probe``); printed as measured / estimated.
The DiT rows use reduced widths (the per-token terms scale with dim and ffn); the VAE rows the released widths on a
small video; the MLLM row the Qwen2.5-VL-3B widths with 2 language and 2 vision layers (a no-grad pass holds one
layer's activations at a time) on 16 frames of 1280×704 plus a reference. tests/test_memory_estimates.py checks
the same ratios in bands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

from comfy_kiwi.memory.planner import (MODELS, VAE_ACT_PER_PX, dit_activation_bytes_per_token,  # noqa: E402
                                       vae_video_bytes_per_px)
from comfy_kiwi.models.wan_config import WanDiTConfig  # noqa: E402
from comfy_kiwi.models.wan_vae import WAN21_VAE, WAN22_VAE  # noqa: E402
from comfy_kiwi.testing import memory_probe as probe  # noqa: E402
from trainer.memory import block_terms, held_terms, kiwi_lora_activations  # noqa: E402

GRID, CONTEXT = (2, 32, 32), 64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mllm", action="store_true", help="also measure the MLLM encode (slow)")
    args = ap.parse_args(argv)
    print(f"{'what':<52} {'measured':>12} {'estimated':>12} {'ratio':>7}")

    def show(what, measured, estimated):
        print(f"{what:<52} {measured / 2**20:10.1f} MB {estimated / 2**20:10.1f} MB {measured / estimated:7.3f}")

    for dim, ffn, heads in ((256, 1195, 2), (512, 512, 4)):
        cfg = WanDiTConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=2, in_dim=48, out_dim=48,
                           text_dim=64, freq_dim=64)
        tokens = probe.tokens_of(cfg, *GRID)
        show(f"DiT forward, dim {dim} ffn {ffn}", probe.dit_inference_peak(cfg, *GRID, context=CONTEXT),
             tokens * dit_activation_bytes_per_token(cfg))
        show(f"LoRA training step, dim {dim} ffn {ffn}", probe.lora_training_peak(cfg, *GRID, context=CONTEXT, rank=8),
             kiwi_lora_activations(cfg, tokens, CONTEXT, rank=8))
        show(f"frozen-block training step, dim {dim} ffn {ffn}",
             probe.lora_training_peak(cfg, *GRID, context=CONTEXT, rank=None),
             tokens * (sum(held_terms(cfg, cfg.num_layers).values()) + sum(block_terms(cfg).values())))
    frames, px = 9, 32 * 32
    for version, config in (("2.1", WAN21_VAE), ("2.2", WAN22_VAE)):
        for kind, got in zip(("encode", "decode"), probe.vae_peaks(config, frames, 32, 32)):
            held, _ = vae_video_bytes_per_px(kind, version, frames)
            show(f"VAE {version} {kind}, 32×32, {frames} frames", got, (VAE_ACT_PER_PX[(kind, version)] + held) * px)
    if args.mllm:
        import gpu_check_models as M
        M.QWEN25_VL_3B.update(num_hidden_layers=2, max_window_layers=2, vocab_size=1024)
        M.QWEN25_VL_3B_VISION.update(depth=2, fullatt_block_indexes=[1])
        enc = M.build_mllm(M.FULL, "cpu")
        frames = M.video((1280, 704, 81))
        with torch.no_grad(), probe.LivePeak() as m:
            enc.encode("make the sky purple", frames, frames[0])
        m5 = MODELS["wan2.2-ti2v-5b"]
        tokens = 8 * 334 + m5["context"] + m5["ref_context"] + 256
        show("MLLM encode, 16 frames of 1280×704 + reference", m.peak, tokens * 2048 * 84)
    return 0


if __name__ == "__main__":
    sys.exit(main())
