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


# --------------------------------------------------------------------------------------------------
# Kiwi-Edit DiT LoRA (the consumer path): frozen base DiT in bf16 or fp8, optional block swap,
# gradient checkpointing, MLLM context cached on disk (the MLLM is not resident)
# --------------------------------------------------------------------------------------------------

LORA_TRAIN_BYTES = 16           # fp32 LoRA weight + grad + AdamW exp_avg + exp_avg_sq
SWAP_RESIDENT_EXTRA = 2         # training block swap keeps the running block and the one before it


@dataclass
class KiwiLoraEstimate:
    model: str
    height: int
    width: int
    frames: int
    tokens: int                 # video + reference tokens through the DiT
    context_tokens: int
    rank: int
    storage: str
    block_swap: int
    checkpointing: bool
    base_params: int
    lora_params: int
    vae_params: int
    parts: dict                 # name -> GiB

    @property
    def total_gib(self) -> float:
        return sum(self.parts.values())


def lora_params(model: str = "wan2.2-ti2v-5b", rank: int = 32, targets=None) -> int:
    """Parameters of a DiT LoRA on ``targets`` of every block (default: self/cross-attention q/k/v/o, FFN)."""
    from comfy_kiwi.models.wan_config import PRESETS
    from comfy_kiwi.models.wan_dit import WanBlock
    from comfy_kiwi.training.dit_lora_train import DEFAULT_TARGETS
    cfg = PRESETS[model]
    with torch.device("meta"):
        block = dict(WanBlock(cfg).named_modules())
    per_block = sum(rank * (block[t].in_features + block[t].out_features) for t in (targets or DEFAULT_TARGETS))
    return per_block * cfg.num_layers


def estimate_kiwi_lora(model: str = "wan2.2-ti2v-5b", height: int = 480, width: int = 832, frames: int = 81,
                       batch_size: int = 1, rank: int = 32, storage: str = "bf16", block_swap: int = 0,
                       checkpointing: bool = True, reference: bool = True, context_tokens: int = 1280,
                       activation_bytes: int = 2) -> KiwiLoraEstimate:
    """Peak GPU memory of one LoRA training step (the kiwi-lora-5b-480p preset's settings by default).

    Counted: the resident DiT weights (block linears in fp8 = 1 byte or bf16 = 2; everything else bf16; with
    block swap only the non-swapped blocks + 2 swapped ones), the LoRA's fp32 weights/grads/AdamW states, one
    block's weights upcast to bf16 while it computes (fp8 only), activations (block inputs for all blocks +
    one block's insides, as for ImVideoEdit above), the VAE in bf16 for the per-step reference encode, and CUDA
    overhead. The MLLM is not resident: its context is cached on disk before training."""
    from comfy_kiwi.memory.planner import vae_params
    from comfy_kiwi.memory.fp8 import fp8_linears
    from comfy_kiwi.models.wan_config import PRESETS
    from comfy_kiwi.models.wan_dit import WanDiT
    cfg = PRESETS[model]
    with torch.device("meta"):
        dit = WanDiT(cfg).attach_condition_embedders()
    total = sum(p.numel() for p in dit.parameters())
    linear = sum(lin.weight.numel() for _, lin in fp8_linears(dit))
    per_block_params = sum(p.numel() for p in dit.blocks[0].parameters())
    per_block_linear = linear // cfg.num_layers
    lin_bytes = 1 if storage == "fp8" else 2
    resident_blocks = cfg.num_layers if not block_swap else cfg.num_layers - block_swap + SWAP_RESIDENT_EXTRA
    block_bytes = per_block_linear * lin_bytes + (per_block_params - per_block_linear) * 2
    other = (total - per_block_params * cfg.num_layers) * 2
    weights = resident_blocks * block_bytes + other
    upcast = per_block_linear * 2 if storage == "fp8" else 0
    vae_factor, vae_t = (16, 4) if cfg.in_dim == 48 else (8, 4)
    grid = (height // vae_factor // 2) * (width // vae_factor // 2)
    video_tokens = ((frames - 1) // vae_t + 1) * grid
    tokens = batch_size * (video_tokens + (grid if reference else 0))
    per_block_act = tokens * (BASE_PER_TOKEN_DIM * cfg.dim + BASE_PER_TOKEN_FFN * cfg.ffn_dim) * activation_bytes
    block_inputs = tokens * cfg.dim * activation_bytes * cfg.num_layers
    lora_acts = tokens * rank * 10 * activation_bytes            # the rank-wide intermediates of one block
    acts = (block_inputs + per_block_act + lora_acts) if checkpointing else \
        (per_block_act + lora_acts) * cfg.num_layers
    acts += 2 * tokens * cfg.dim * activation_bytes              # gradient w.r.t. the running block's input
    acts += batch_size * context_tokens * cfg.dim * activation_bytes * 3
    n_lora = lora_params(model, rank)
    n_vae = vae_params("2.2" if cfg.in_dim == 48 else "2.1") if reference else 0
    parts = {"DiT weights (resident)": weights / GiB, "fp8 upcast of the running block": upcast / GiB,
             "LoRA weights + grads + AdamW": n_lora * LORA_TRAIN_BYTES / GiB, "activations": acts / GiB,
             "VAE (bf16, reference encode)": n_vae * 2 / GiB, "CUDA overhead": CUDA_OVERHEAD_GIB}
    return KiwiLoraEstimate(model, height, width, frames, tokens, context_tokens, rank, storage, block_swap,
                            checkpointing, total, n_lora, n_vae, parts)


def format_kiwi_lora(e: KiwiLoraEstimate) -> str:
    head = (f"{e.model} DiT LoRA r{e.rank} at {e.width}x{e.height}, {e.frames} frames ({e.tokens} DiT tokens, "
            f"{e.context_tokens} context tokens), base in {e.storage}, block swap {e.block_swap}, gradient "
            f"checkpointing {'on' if e.checkpointing else 'off'}; MLLM context cached on disk (not resident)")
    lines = [head, f"  base DiT {e.base_params / 1e9:.3f} B params, LoRA {e.lora_params / 1e6:.1f} M params"]
    lines += [f"  {name:<34} {gib:6.2f} GiB" for name, gib in e.parts.items()]
    lines.append(f"  {'total':<34} {e.total_gib:6.2f} GiB")
    return "\n".join(lines)
