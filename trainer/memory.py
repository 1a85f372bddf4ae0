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
# ImVideoEdit per block: LN×3, side-by-side copy, 2D attn q,k,v,out,o ×2, cross q,out,o, gate MLP (2),
# sigmoid, zero linears (2), H_pred / H_res / H_diff / update ≈ 26 (in units of one token × dim × activation bytes)
ADAPTER_PER_TOKEN_DIM = 26
CUDA_OVERHEAD_GIB = 1.5         # CUDA context, allocator fragmentation, kernels' workspaces


def block_terms(cfg, lora: bool = False) -> dict[str, int]:
    """Bytes per token that one Wan block keeps for its backward (bf16 activations; norms, RoPE and gates in
    fp32 as ``wan_dit.py`` computes them), itemised. Measured against a real forward + backward on the CPU
    (``comfy_kiwi.testing.memory_probe.lora_training_peak``, tests/test_memory_estimates.py): an earlier
    count of 14 × dim + 2 × ffn bf16 values left out the fp32 copies and the LoRA's input casts (the measured
    peak was about twice it at the test widths).

    ``lora``: the trainer's fp32 DiT LoRA on the 10 default targets under bf16 autocast; its hook casts each
    target's input to fp32 and autocast casts it back to a bf16 copy that the LoRA keeps (the dim-wide
    targets and ffn.2's ffn-wide input; cross-attention k/v see the context, counted apart), and ffn.2's input
    also passes through fp32 while the block is recomputed."""
    d, f = cfg.dim, cfg.ffn_dim
    terms = {
        "fp32 LayerNorm inputs (self-attn, cross-attn, FFN)": 3 * 4 * d,
        "fp32 RMSNorm inputs (q, k of self-attn; q of cross-attn)": 3 * 4 * d,
        "q, k (after RoPE), v, cross q, attention outputs (bf16)": 6 * 2 * d,
        "FFN input, hidden before and after GELU (bf16)": 2 * d + 2 * 2 * f,
        "residual sums and the block output (bf16)": 3 * 2 * d,
    }
    if lora:
        terms["LoRA input copies (bf16)"] = 8 * 2 * d + 2 * f
        terms["LoRA ffn.2 input upcast to fp32 (transient)"] = 4 * f
    return terms


def held_terms(cfg, layers_kept: int) -> dict[str, int]:
    """Bytes per token held outside the running block during a checkpointed step: the block inputs
    (``layers_kept`` of them, bf16), the gradient arriving at the running block (bf16), the RoPE cos/sin
    tables (fp32) and the loss side (the velocity in bf16 and the fp32 difference the squared loss keeps)."""
    c = cfg.out_dim * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    return {"block inputs (bf16)": layers_kept * 2 * cfg.dim,
            "gradient of the running block's output": 2 * cfg.dim,
            "RoPE cos/sin (fp32)": 4 * cfg.head_dim,
            "velocity and fp32 loss difference": 2 * c + 4 * c}


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
    per_block = tokens * (sum(block_terms(cfg).values()) + ADAPTER_PER_TOKEN_DIM * cfg.dim * activation_bytes)
    held = sum(held_terms(cfg, cfg.num_layers if checkpointing else 0).values())
    acts = tokens * held + per_block * (1 if checkpointing else cfg.num_layers)
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
    from comfy_kiwi.training_lib.dit_lora_train import DEFAULT_TARGETS
    cfg = PRESETS[model]
    with torch.device("meta"):
        block = dict(WanBlock(cfg).named_modules())
    per_block = sum(rank * (block[t].in_features + block[t].out_features) for t in (targets or DEFAULT_TARGETS))
    return per_block * cfg.num_layers


def estimate_kiwi_lora(model: str = "wan2.2-ti2v-5b", height: int = 480, width: int = 832, frames: int = 81,
                       batch_size: int = 1, rank: int = 32, storage: str = "bf16", block_swap: int = 0,
                       checkpointing: bool = True, reference: bool = True,
                       context_tokens: int = 1280) -> KiwiLoraEstimate:
    """Peak GPU memory of one LoRA training step (the kiwi-lora-5b-480p preset's settings by default).

    Counted: the resident DiT weights (block linears in fp8 = 1 byte or bf16 = 2; everything else bf16; with
    block swap only the non-swapped blocks + 2 swapped ones), the LoRA's fp32 weights/grads/AdamW states, one
    block's weights upcast to bf16 while it computes (fp8 only), activations (:func:`kiwi_lora_activations`),
    the VAE in bf16 for the per-step reference encode, and CUDA
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
    acts = kiwi_lora_activations(cfg, tokens, batch_size * context_tokens, rank, checkpointing)
    n_lora = lora_params(model, rank)
    n_vae = vae_params("2.2" if cfg.in_dim == 48 else "2.1") if reference else 0
    parts = {"DiT weights (resident)": weights / GiB, "fp8 upcast of the running block": upcast / GiB,
             "LoRA weights + grads + AdamW": n_lora * LORA_TRAIN_BYTES / GiB, "activations": acts / GiB,
             "VAE (bf16, reference encode)": n_vae * 2 / GiB, "CUDA overhead": CUDA_OVERHEAD_GIB}
    return KiwiLoraEstimate(model, height, width, frames, tokens, context_tokens, rank, storage, block_swap,
                            checkpointing, total, n_lora, n_vae, parts)


def kiwi_lora_activations(cfg, tokens: int, context_tokens: int, rank: int = 32, checkpointing: bool = True) -> int:
    """Activation bytes of one DiT-LoRA training step: the held tensors, one block's (or, without
    checkpointing, every block's) backward set, the fp32 rank-wide LoRA intermediates, and the context's
    cross-attention k/v with their LoRA copies (bf16)."""
    terms = block_terms(cfg, lora=True)
    transient = sum(v for k, v in terms.items() if "transient" in k)        # once, in the running block
    per_block = tokens * (sum(terms.values()) - transient) + tokens * rank * 10 * 4
    held = tokens * (sum(held_terms(cfg, cfg.num_layers if checkpointing else 0).values()) + transient)
    return held + per_block * (1 if checkpointing else cfg.num_layers) + context_tokens * cfg.dim * 2 * 3


def format_kiwi_lora(e: KiwiLoraEstimate) -> str:
    head = (f"{e.model} DiT LoRA r{e.rank} at {e.width}x{e.height}, {e.frames} frames ({e.tokens} DiT tokens, "
            f"{e.context_tokens} context tokens), base in {e.storage}, block swap {e.block_swap}, gradient "
            f"checkpointing {'on' if e.checkpointing else 'off'}; MLLM context cached on disk (not resident)")
    lines = [head, f"  base DiT {e.base_params / 1e9:.3f} B params, LoRA {e.lora_params / 1e6:.1f} M params"]
    lines += [f"  {name:<34} {gib:6.2f} GiB" for name, gib in e.parts.items()]
    lines.append(f"  {'total':<34} {e.total_gib:6.2f} GiB")
    return "\n".join(lines)
