"""Training-memory estimate of ImVideoEdit on a Wan DiT (weights, gradients, AdamW states, activations).

Parameter counts are exact: the DiT and the modules are built on the ``meta`` device (no memory) and
counted. Activations are an estimate: per block, the tensors autograd keeps (counted below in units of
one token × width), times the tokens of the paired batch, times bytes per element. With gradient
checkpointing only each block's input is kept, plus one block's insides while it is recomputed.
The VAE and umT5 are not resident: their outputs are cached to disk before training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GiB = 1024 ** 3
# tensors kept for backward per token, in units of `dim` (ffn hidden counted separately):
# base block: norms/modulation (4), q,k,v,attn-out,o (5), cross q,attn-out,o (3), residuals (2) ≈ 14
BASE_PER_TOKEN_DIM = 14
BASE_PER_TOKEN_FFN = 2          # ffn hidden before and after GELU
# ImVideoEdit per block: LN×3, side-by-side copy, 2D attn q,k,v,out,o ×2, cross q,out,o, gate MLP (2),
# sigmoid, zero linears (2), H_pred / H_res / H_diff / update ≈ 26
ADAPTER_PER_TOKEN_DIM = 26
CUDA_OVERHEAD_GIB = 1.5         # CUDA context, allocator fragmentation, kernels' workspaces


@dataclass
class MemoryEstimate:
    model: str
    height: int
    width: int
    frames: int
    batch_size: int
    checkpointing: bool
    base_params: int
    adapter_params: int
    weights_gib: float
    adapter_gib: float
    activations_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.adapter_gib + self.activations_gib + self.overhead_gib


def count_params(model: str = "wan2.1-t2v-1.3b") -> tuple[int, int]:
    """(base DiT params, ImVideoEdit params), counted exactly on the meta device."""
    from comfy_kiwi.methods.imvideoedit import ImVideoEditAdapter
    from comfy_kiwi.models.wan_config import PRESETS
    from comfy_kiwi.models.wan_dit import WanDiT
    with torch.device("meta"):
        dit = WanDiT(PRESETS[model])
        adapter = ImVideoEditAdapter(dit)
    return sum(p.numel() for p in dit.parameters()), sum(p.numel() for p in adapter.parameters())


def estimate(model: str = "wan2.1-t2v-1.3b", height: int = 480, width: int = 832, batch_size: int = 1,
             frames: int = 1, checkpointing: bool = True, base_bytes: int = 2, adapter_bytes: int = 4,
             activation_bytes: int = 2) -> MemoryEstimate:
    """Peak training memory. Defaults = the imvideoedit preset: bf16 frozen base, fp32 modules with fp32
    AdamW states, bf16 autocast, gradient checkpointing, image pairs (1 frame)."""
    from comfy_kiwi.models.wan_config import PRESETS
    cfg = PRESETS[model]
    base, adapter = count_params(model)
    lat_frames = (frames - 1) // 4 + 1
    tokens = 2 * batch_size * lat_frames * (height // 16) * (width // 16)      # source + target streams
    per_block = tokens * ((BASE_PER_TOKEN_DIM + ADAPTER_PER_TOKEN_DIM) * cfg.dim
                          + BASE_PER_TOKEN_FFN * cfg.ffn_dim) * activation_bytes
    block_inputs = tokens * cfg.dim * activation_bytes * cfg.num_layers
    acts = block_inputs + per_block if checkpointing else per_block * cfg.num_layers
    # adapter: weights + grads in adapter_bytes, AdamW exp_avg + exp_avg_sq in the same dtype
    return MemoryEstimate(model, height, width, frames, batch_size, checkpointing, base, adapter,
                          weights_gib=base * base_bytes / GiB, adapter_gib=adapter * adapter_bytes * 4 / GiB,
                          activations_gib=acts / GiB, overhead_gib=CUDA_OVERHEAD_GIB)


def format_estimate(e: MemoryEstimate) -> str:
    return "\n".join([
        f"{e.model} at {e.width}x{e.height}, {e.frames} frame(s), batch {e.batch_size}, "
        f"gradient checkpointing {'on' if e.checkpointing else 'off'}",
        f"  frozen DiT        {e.base_params / 1e9:6.3f} B params  {e.weights_gib:6.2f} GiB",
        f"  ImVideoEdit       {e.adapter_params / 1e9:6.3f} B params  {e.adapter_gib:6.2f} GiB "
        "(weights + grads + AdamW m, v)",
        f"  activations                        {e.activations_gib:6.2f} GiB",
        f"  CUDA overhead                      {e.overhead_gib:6.2f} GiB",
        f"  total                              {e.total_gib:6.2f} GiB",
    ])
