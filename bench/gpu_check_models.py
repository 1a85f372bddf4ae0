"""Random-weight models for ``bench/gpu_check.py``: the real architectures (full) or the tiny test ones (``--tiny``).

Full size: Wan2.2-TI2V-5B DiT with the Kiwi source/reference embedders, the Wan2.2 VAE, Qwen2.5-VL-3B inside the
project's ``MLLMEncoder`` (Kiwi-Edit queries and connectors), Wan2.1-T2V-14B. Each is built by the project's own
classes directly on the target device in bf16 (no files: memory and time do not depend on the weights' values).
The Qwen2.5-VL-3B widths are its published config; its processor is the tiny test tokenizer with the real vision
settings (the token ids only need to exist in the 151,936-row embedding).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

QWEN25_VL_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                    num_key_value_heads=2, max_window_layers=36, vocab_size=151936, rope_theta=1000000.0,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
QWEN25_VL_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, spatial_patch_size=14, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, temporal_patch_size=2)


@dataclass(frozen=True)
class Scale:
    """What one run builds: names of the DiT presets and the video sizes of each part."""

    tiny: bool
    edit_size: tuple[int, int, int]          # width, height, frames of the edit (and the DiT forward)
    train_size: tuple[int, int, int]         # of the LoRA step
    wan14b_size: tuple[int, int, int]
    context: int                             # Kiwi context tokens for the DiT-only parts

    @property
    def label(self) -> str:
        return "tiny (CPU)" if self.tiny else "full size"


FULL = Scale(False, (1280, 704, 81), (832, 480, 81), (832, 480, 81), 512)
TINY = Scale(True, (64, 64, 5), (64, 64, 5), (32, 32, 5), 16)


@contextlib.contextmanager
def building(device, dtype=torch.bfloat16):
    """Create parameters directly on ``device`` in ``dtype`` (no fp32 copy in RAM first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def dit_config(scale: Scale, name: str = "wan2.2-ti2v-5b"):
    from comfy_kiwi.models.wan_config import preset
    from comfy_kiwi.testing.tiny_release import tiny_kiwi_dit_config
    if not scale.tiny:
        return preset(name)
    return tiny_kiwi_dit_config() if name == "wan2.2-ti2v-5b" else preset("tiny-wan2.1")


def build_dit(scale: Scale, device, name: str = "wan2.2-ti2v-5b", embedders: bool = True):
    from comfy_kiwi.models.wan_dit import WanDiT
    torch.manual_seed(0)
    with building(device), torch.no_grad():
        dit = WanDiT(dit_config(scale, name))
        if embedders:
            dit.attach_condition_embedders(zero_init=False)
    return dit.eval().requires_grad_(False)


def build_vae(scale: Scale, device):
    from comfy_kiwi.models.wan_vae import WAN22_VAE, WanVAE, tiny_config
    torch.manual_seed(1)
    with building(device), torch.no_grad():
        vae = WanVAE(tiny_config("2.2", dim=8) if scale.tiny else WAN22_VAE)
    return vae.eval().requires_grad_(False)


def build_mllm(scale: Scale, device):
    """The Kiwi-Edit ``MLLMEncoder`` around a random Qwen2.5-VL (3B widths, or the tiny test model)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from comfy_kiwi.mllm.config import MLLMEncoderConfig
    from comfy_kiwi.mllm.encoder import MLLMEncoder
    from comfy_kiwi.mllm.loader import load_processor
    from comfy_kiwi.testing import tiny_qwen
    tiny = tiny_qwen.build_tiny_qwen()
    cfg = dict(tiny.qwen_config)
    enc_cfg = tiny_qwen.tiny_encoder_config()
    if not scale.tiny:
        cfg.update(QWEN25_VL_3B)
        cfg["vision_config"] = {**cfg["vision_config"], **QWEN25_VL_3B_VISION}
        enc_cfg = MLLMEncoderConfig()
    qwen_config = Qwen2_5_VLConfig(**cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_qwen.write_processor_files(Path(tmp), tiny)
        processor = load_processor(Path(tmp), qwen_config, enc_cfg.placeholder_token, "gpu_check processor")
    torch.manual_seed(2)
    with building(device), torch.no_grad():
        qwen = Qwen2_5_VLForConditionalGeneration(qwen_config)
        encoder = MLLMEncoder(qwen, processor, enc_cfg)
    return encoder.to(device).eval()


def video(scale_size, device="cpu", seed: int = 0) -> torch.Tensor:
    """Smooth moving frames ``[F, H, W, 3]`` in 0..1 (what the pipeline's stages take)."""
    from comfy_kiwi.testing.tiny_release import tiny_video_frames
    w, h, f = scale_size
    return tiny_video_frames(f, h, w, seed).to(device)


def latent_inputs(cfg, size, context: int, device, dtype=torch.bfloat16, reference: bool = True,
                  context_width: int | None = None):
    """Latents, source latents, one reference latent frame and a context for a DiT forward at ``size``."""
    w, h, f = size
    stride = 16 if cfg.in_dim == 48 else 8
    g = torch.Generator().manual_seed(3)
    shape = (1, cfg.in_dim, (f - 1) // 4 + 1, h // stride, w // stride)
    lat, src = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(2))
    ref = torch.randn((1, cfg.in_dim, 1, *shape[3:]), generator=g).to(device, dtype) if reference else None
    ctx = torch.randn((1, context, context_width or cfg.dim), generator=g).to(device, dtype)
    return lat, src, ref, ctx
