"""fp8 (e4m3fn) storage of a Wan DiT's big Linear layers, upcast per layer at compute time.

Only the transformer blocks' attention projections (q, k, v, o of self- and cross-attention) and
FFN linears are stored in fp8: they hold ~97 % of the weights. Norms, embeddings, modulation tables,
biases and the head stay in the compute dtype, because they are small and precision-sensitive.

Scales (``scale_weight`` of ``CastLinear``; upcast weight = fp8 value × scale):

- ``"none"``   weights cast as they are (values above 448 saturate; fine for Wan's ~|w| < 1 weights,
               but the small weights lose mantissa to subnormals);
- ``"tensor"`` one fp32 scale per weight: amax / 448 (ComfyUI's "scaled fp8" files use the same form);
- ``"block"``  one fp32 scale per ``block_size``×``block_size`` tile [⌈out/b⌉, ⌈in/b⌉]: outliers only
               cost precision inside their own tile.

The result saves and loads through ``comfy_kiwi.loading.dit_loader`` like a ComfyUI scaled-fp8 file.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max        # 448
SCALES = ("none", "tensor", "block")


def fp8_linears(dit: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, CastLinear) of every block linear that fp8 storage applies to."""
    from ..models.wan_dit import CastLinear
    out = []
    for i, block in enumerate(dit.blocks):
        for name, m in block.named_modules():
            if isinstance(m, CastLinear) and name.split(".")[0] in ("self_attn", "cross_attn", "ffn"):
                out.append((f"blocks.{i}.{name}", m))
    return out


def _tile_amax(w: torch.Tensor, b: int) -> torch.Tensor:
    rows, cols = -(-w.shape[0] // b), -(-w.shape[1] // b)
    padded = w.new_zeros(rows * b, cols * b)
    padded[:w.shape[0], :w.shape[1]] = w.abs()
    return padded.reshape(rows, b, cols, b).amax(dim=(1, 3))


def quantize_weight(w: torch.Tensor, scale: str = "tensor", block_size: int = 128):
    """fp32/bf16 weight [out, in] → (fp8 weight, fp32 scale or None)."""
    w = w.detach().float()
    if scale == "none":
        return w.clamp(-FP8_MAX, FP8_MAX).to(FP8), None
    if scale == "tensor":
        s = (w.abs().amax() / FP8_MAX).clamp_min(1e-12).reshape(())
        return (w / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s
    s = (_tile_amax(w, block_size) / FP8_MAX).clamp_min(1e-12)
    full = s.repeat_interleave(block_size, 0)[:w.shape[0]].repeat_interleave(block_size, 1)[:, :w.shape[1]]
    return (w / full).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def quantize_dit_fp8(dit: nn.Module, scale: str = "tensor", block_size: int = 128) -> nn.Module:
    """Store the block linears of ``dit`` in float8_e4m3fn (in place); returns ``dit``.

    The compute dtype (that of the other weights, e.g. bf16) is unchanged: each linear upcasts its
    weight per call. Quantising an already-fp8 model is an error (the scales would compound).
    """
    if scale not in SCALES:
        raise InputError(f"fp8 scale must be one of {', '.join(SCALES)}, got {scale!r}.")
    if not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block_size must be a positive whole number, got {block_size!r}.")
    linears = fp8_linears(dit)
    if not linears:
        raise InputError(f"{type(dit).__name__} has no transformer-block linears to store in fp8.")
    for name, lin in linears:
        if lin.weight.dtype.itemsize == 1:
            raise InputError(f"{name}.weight is already stored as {lin.weight.dtype}; load the model in bf16/fp32 "
                             "to quantise it again.")
    with torch.no_grad():
        for _, lin in linears:
            q, s = quantize_weight(lin.weight, scale, block_size)
            lin.weight = nn.Parameter(q.to(lin.weight.device), requires_grad=False)
            lin.scale_weight = None if s is None else s.to(lin.weight.device)
    return dit


def fp8_bytes_saved(dit: nn.Module) -> int:
    """Bytes the fp8 block linears take less than they would in the compute dtype."""
    item = dit.dtype.itemsize if hasattr(dit, "dtype") else 2
    return sum(lin.weight.numel() * (item - 1) for _, lin in fp8_linears(dit) if lin.weight.dtype == FP8)
