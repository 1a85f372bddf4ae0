"""VIVA's token refiner: adapts the VLM instructor's last hidden states to the DiT's cross-attention.

VIVA (Cong et al., 2025) feeds the last hidden states of a VLM "instructor" (instruction + first
source frame + optional reference) through a *trainable token refiner* that "aligns these tokens
to the pretrained DiT latent space" before they enter every block's cross-attention. The paper
names the refiner after HunyuanVideo's token refiner; the architecture below follows that design:

    h = W_in · hidden                                     input projection   C_in → dim
    c = MLP_t(sinusoid(t)) + MLP_c(masked_mean(hidden))   timestep + pooled-context embedding
    for each block:                                       (``depth`` blocks)
        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))      (zero-initialised)
        h = h + gate1 · SelfAttn(LN(h)·(1+scale1) + shift1, key mask)
        h = h + gate2 · MLP(LN(h)·(1+scale2) + shift2)
    return h                                              [B, L, dim]

What comes from where:

- from VIVA: a trainable refiner between the VLM's last hidden states and the DiT; it is
  conditioned on the timestep (the HunyuanVideo refiner it cites is).
- from HunyuanVideo's refiner (facts of its design): input Linear, timestep embedder + pooled-text
  embedder summed into one conditioning vector, pre-norm self-attention + MLP blocks with
  adaLN-produced *gates*, a key-padding mask, masked-mean pooling, depth 2, MLP ratio 4.
- chosen here: the adaLN also produces shift/scale (HunyuanVideo's refiner only gates); the
  adaLN linear is zero-initialised, so every gate is 0 at start and the refiner *is* the input
  projection (near-identity after the projection), the residual branches grow as it trains;
  QK RMSNorm for stable attention logits; sinusoid of Wan's ``t = 1000·σ`` with the DiT's
  frequency width 256; no final norm (the DiT's cross-attention normalises its keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.wan_dit import sinusoid

FREQ_DIM = 256


class RefinerBlock(nn.Module):
    """One pre-norm self-attention + MLP block whose residual branches are modulated and gated by ``cond``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise InputError(f"refiner width {dim} is not divisible by its {num_heads} heads.")
        self.num_heads, self.eps = num_heads, eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = nn.RMSNorm(dim // num_heads, eps=eps)
        self.norm_k = nn.RMSNorm(dim // num_heads, eps=eps)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)      # gates 0 at start: the block is the identity
        nn.init.zeros_(self.ada[1].bias)

    def _norm(self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, h.shape[-1:], eps=self.eps) * (1 + scale) + shift

    def forward(self, h: torch.Tensor, cond: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """h [B, L, dim]; cond [B, dim]; attn_mask [B, 1, 1, L] bool (True = attend) or None."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).unsqueeze(1).chunk(6, dim=-1)
        q, k, v = self.qkv(self._norm(h, shift1, scale1)).unflatten(-1, (3, self.num_heads, -1)).unbind(2)
        q, k = self.norm_q(q), self.norm_k(k)                                   # [B, L, H, D]
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=attn_mask)
        h = h + gate1 * self.proj(a.transpose(1, 2).flatten(2))
        return h + gate2 * self.mlp(self._norm(h, shift2, scale2))


class TokenRefiner(nn.Module):
    """``refine(hidden [B, L, C_in], timestep [B], mask [B, L] | None) → [B, L, dim]`` (see module doc).

    ``timestep`` uses Wan's convention t = 1000·σ (a number or [B]). ``mask`` marks real tokens
    (True/1) versus padding (False/0); padded keys are ignored by attention and pooling, padded
    query rows are still computed (the DiT's cross-attention sees them, as it sees the VLM's).
    """

    def __init__(self, in_dim: int, dim: int, num_heads: int, depth: int = 2, mlp_ratio: float = 4.0,
                 eps: float = 1e-6):
        super().__init__()
        if depth < 1:
            raise InputError(f"refiner depth must be ≥ 1, got {depth}.")
        self.in_dim, self.dim = in_dim, dim
        self.input_proj = nn.Linear(in_dim, dim)
        self.time_embed = nn.Sequential(nn.Linear(FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.context_embed = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(RefinerBlock(dim, num_heads, mlp_ratio, eps) for _ in range(depth))

    def forward(self, hidden: torch.Tensor, timestep, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.refine(hidden, timestep, mask)

    def refine(self, hidden: torch.Tensor, timestep, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, length = self._check(hidden)
        keep = self._mask(mask, b, length, hidden.device)                      # [B, L] bool
        x = hidden.to(self.input_proj.weight.dtype)
        t = torch.as_tensor(timestep, device=x.device)
        if t.numel() not in (1, b):
            raise InputError(f"timestep must be a number or [B] = [{b}], got shape {tuple(t.shape)}.")
        t = t.reshape(-1).expand(b)
        w = keep.to(x.dtype).unsqueeze(-1)                                      # masked mean over real tokens
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)                      # [B, C_in]
        cond = self.time_embed(sinusoid(t, FREQ_DIM).to(x.dtype)) + self.context_embed(pooled)   # [B, dim]
        attn_mask = None if bool(keep.all()) else keep[:, None, None, :]
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, cond, attn_mask)
        return h

    def _check(self, hidden: torch.Tensor) -> tuple[int, int]:
        if not torch.is_tensor(hidden) or hidden.ndim != 3 or hidden.shape[-1] != self.in_dim:
            shape = tuple(hidden.shape) if torch.is_tensor(hidden) else type(hidden).__name__
            raise InputError(f"refiner input must be VLM hidden states [B, L, {self.in_dim}], got {shape}.")
        if hidden.shape[1] == 0:
            raise InputError("refiner input has no tokens (L = 0).")
        return hidden.shape[0], hidden.shape[1]

    @staticmethod
    def _mask(mask, b: int, length: int, device) -> torch.Tensor:
        if mask is None:
            return torch.ones(b, length, dtype=torch.bool, device=device)
        if not torch.is_tensor(mask) or tuple(mask.shape) != (b, length):
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise InputError(f"refiner mask must be [B, L] = [{b}, {length}] (1 = token, 0 = padding), got {shape}.")
        keep = mask.to(device=device, dtype=torch.bool)
        if not bool(keep.any(1).all()):
            raise InputError("refiner mask leaves a sample with no tokens; every sample needs at least one.")
        return keep
