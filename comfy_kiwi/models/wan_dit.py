"""Wan video DiT (Wan2.1 / Wan2.2) in the original key layout, with Kiwi-Edit latent conditioning.

Parameter names follow Wan-AI's and ComfyUI's files (``blocks.N.self_attn.q``, ``head.modulation`` …),
so those files load without renaming; the diffusers layout is converted in ``loading/dit_keys.py``.
Modulation, norms, RoPE and residual gates run in fp32 and are cast back, so bf16/fp16 weights work;
block linears may be stored in fp8 and are upcast per call (``CastLinear``).

Shapes: latents [B, C, F, H, W] → tokens [B, L, dim] with L = f·h·w (f = F/pt, h = H/ph, w = W/pw,
frame-major) → blocks → head → unpatchified velocity [B, C_out, F, H, W].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..attention import BACKENDS, attention
from ..errors import InputError
from .conditioning import ConditionEmbedder
from .source_strategy import SIGMA_SCALED_ADD, source_strategy_named
from .wan_config import WanDiTConfig

CONTEXT_EMBEDDINGS = ("auto", "text", "none")


class CastLinear(nn.Linear):
    """A Linear whose stored weight may differ from the compute dtype (fp8, bf16): cast per call.

    ``scale_weight`` (ComfyUI "scaled fp8" files) multiplies the upcast weight when present.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("scale_weight", None)

    def enable_weight_scale(self, shape=()) -> None:
        """Add the per-tensor ``scale_weight`` buffer (before loading a scaled-fp8 file)."""
        self.scale_weight = torch.ones(shape, dtype=torch.float32, device=self.weight.device)

    def compute_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in ``dtype``: upcast, times ``scale_weight`` (a number, per row, or per tile)."""
        w = self.weight if self.weight.dtype == dtype else self.weight.to(dtype)
        s = self.scale_weight
        if s is None:
            return w
        if s.ndim == 2 and s.shape[1] > 1:   # block-wise scales [⌈out/b⌉, ⌈in/b⌉] of b×b tiles
            b = -(-w.shape[0] // s.shape[0])
            s = s.repeat_interleave(b, 0)[:w.shape[0]].repeat_interleave(b, 1)[:, :w.shape[1]]
        return w * s.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return F.linear(x, self.compute_weight(x.dtype), b)


class RMSNorm(nn.Module):
    """RMS norm over the full width (across heads), computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def layer_norm(x: torch.Tensor, eps: float, norm: nn.LayerNorm | None = None) -> torch.Tensor:
    """fp32 LayerNorm; affine when ``norm`` (whose weights may be bf16) is given. Returns fp32."""
    w = b = None
    if norm is not None:
        w, b = norm.weight.float(), norm.bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return (layer_norm(x, eps) * (1 + scale) + shift).to(x.dtype)


def sinusoid(t: torch.Tensor, dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[...] timesteps → [..., dim] fp32: cos half then sin half, frequencies 10000^(−i/half).

    ``dtype`` is the precision of the angle math: float64 as in Wan and Kiwi-Edit (diffsynth);
    float32 reproduces diffusers (for t≈1000 the two differ by ~3e-5).
    """
    half = dim // 2
    inv = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype).unsqueeze(-1) * inv
    return torch.cat([args.cos(), args.sin()], dim=-1).float()


def rope_tables(cfg: WanDiTConfig, frames: int, height: int, width: int, device=None):
    """3D RoPE angles for a (frames, height, width) token grid: (cos, sin), each [1, L, 1, head_dim/2] fp32.

    Each axis owns a slice of the head (t/h/w = d−4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋) with its own frequencies
    θ^(−2i/d_axis); positions are the grid indices from 0.
    """
    axes = []
    for n, d in zip((frames, height, width), cfg.rope_split):
        inv = torch.pow(cfg.rope_theta, -torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        axes.append(torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv))   # [n, d/2]
    t, h, w = axes
    angles = torch.cat([t[:, None, None].expand(-1, height, width, -1),
                        h[None, :, None].expand(frames, -1, width, -1),
                        w[None, None, :].expand(frames, height, -1, -1)], dim=-1)
    angles = angles.reshape(1, frames * height * width, 1, -1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, rope) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of x [B, L, H, D] by the angles in ``rope``."""
    cos, sin = rope
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.backend = "auto"
        self.q, self.k, self.v, self.o = (CastLinear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))              # [B, L, dim] → [B, L, H, D]

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        q = apply_rope(self.heads(self.norm_q(self.q(x))), rope)
        k = apply_rope(self.heads(self.norm_k(self.k(x))), rope)
        return self.o(attention(q, k, self.heads(self.v(x)), self.backend).flatten(2))


class CrossAttention(SelfAttention):
    """Attention from the video tokens to the context tokens; no RoPE, no gate.

    ``kv_cache`` (set by ``comfy_kiwi.memory.kv_cache``) memoises the context's keys/values: the
    context is the same at every sampling step, so they are computed once per run.
    """

    kv_cache = None

    def key_value(self, context: torch.Tensor):
        """Context [B, Lc, dim] → (k, v) [B, Lc, H, D], from the cache when one is attached."""
        if self.kv_cache is not None:
            return self.kv_cache.lookup(self, context, self.compute_key_value)
        return self.compute_key_value(context)

    def compute_key_value(self, context: torch.Tensor):
        return self.heads(self.norm_k(self.k(context))), self.heads(self.v(context))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.key_value(context)
        return self.o(attention(self.heads(self.norm_q(self.q(x))), k, v, self.backend).flatten(2))


class WanBlock(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)          # the only affine norm, before cross-attention
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.ffn = nn.Sequential(CastLinear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 CastLinear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, context: torch.Tensor, rope) -> torch.Tensor:
        """x [B, L, dim]; e [B, 1 or L, 6, dim] fp32 projected time; context [B, Lc, dim]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e).unbind(-2)
        y = self.self_attn(modulate(x, shift1, scale1, self.eps), rope)
        x = (x.float() + y.float() * gate1).to(x.dtype)
        x = x + self.cross_attn(layer_norm(x, self.eps, self.norm3).to(x.dtype), context)
        y = self.ffn(modulate(x, shift2, scale2, self.eps))
        return (x.float() + y.float() * gate2).to(x.dtype)


class Head(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = CastLinear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim]; temb [B, 1 or L, dim] fp32 (before the time projection) → [B, L, pt·ph·pw·C]."""
        shift, scale = (self.modulation.float() + temb.unsqueeze(-2)).unbind(-2)
        return self.head(modulate(x, shift, scale, self.eps))


class WanDiT(nn.Module):
    """``model(latents, timestep, context, source_latents=, source_scale=, reference_latents=,
    reference_first=)`` → velocity shaped like ``latents``.

    - ``timestep``: a number, [B], or per-token [B, f·h·w] (Wan2.2 TI2V; reference tokens get t = 0).
    - ``context`` [B, Lc, C]: ``context_embedding`` "text" runs it through ``text_embedding`` (umT5,
      C = text_dim), "none" feeds it to cross-attention as is (Kiwi MLLM, C = dim), "auto" picks by C.
    - ``source_latents`` (shape of ``latents``): mixed into the patch-embedded noisy tokens by the
      attached ``source_strategy`` (``source_strategy.py``; ``source_mode`` is its name). The default,
      "add_sigma" (Kiwi-Edit), adds them through ``source_embedder`` times ``source_scale`` (σ: a number
      or [B]; default timestep/1000); a method may attach its own (``attach_source_strategy``), whose
      weights sit in the ``source_mixer`` slot.
    - ``reference_latents`` [B, C, Fr, H, W]: ``ref_embedder`` tokens placed after the video tokens
      (or before when ``reference_first``); RoPE spans f+Fr frames, so the sequence order decides
      the frame indices; the reference tokens are dropped after the head.
    """

    def __init__(self, config: WanDiTConfig):
        super().__init__()
        c = self.config = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(CastLinear(c.text_dim, c.dim), nn.GELU(approximate="tanh"),
                                            CastLinear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(CastLinear(c.freq_dim, c.dim), nn.SiLU(), CastLinear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), CastLinear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(WanBlock(c) for _ in range(c.num_layers))
        self.head = Head(c)
        self.register_module("source_embedder", None)
        self.register_module("ref_embedder", None)
        self.register_module("source_mixer", None)   # a method's source-strategy weights (keys source_mixer.*)
        self.source_strategy = SIGMA_SCALED_ADD
        self.reference_first = False
        self.sinusoid_dtype = torch.float64       # float32 = diffusers' time-embedding numerics
        self.context_embedding = "auto"
        self.gradient_checkpointing = False       # recompute each block in backward (training only)
        self.kv_cache = None                      # see comfy_kiwi.memory.kv_cache
        self.step_cache = None                    # see comfy_kiwi.sampling.step_cache
        self.attention_backend = "auto"

    # --- settings -----------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (that of the patch embedding; block linears may be stored narrower)."""
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def attention_backend(self) -> str:
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise InputError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}.")
        self._attention_backend = name
        for m in self.modules():
            if isinstance(m, SelfAttention):
                m.backend = name

    @property
    def context_embedding(self) -> str:
        return self._context_embedding

    @context_embedding.setter
    def context_embedding(self, mode: str) -> None:
        if mode not in CONTEXT_EMBEDDINGS:
            raise InputError(f"context_embedding must be one of {', '.join(CONTEXT_EMBEDDINGS)}, got {mode!r}.")
        self._context_embedding = mode

    def attach_condition_embedders(self, source: bool = True, reference: bool = True,
                                   reference_first: bool | None = None, zero_init: bool = True) -> "WanDiT":
        """Add zero-initialised Kiwi-Edit source / reference embedders (same device and dtype)."""
        c, w = self.config, self.patch_embedding.weight
        for name, wanted in (("source_embedder", source), ("ref_embedder", reference)):
            if wanted and getattr(self, name) is None:
                setattr(self, name, ConditionEmbedder(c.in_dim, c.dim, c.patch_size, zero_init).to(w.device, w.dtype))
        if reference_first is not None:
            self.reference_first = bool(reference_first)
        return self

    def attach_source_strategy(self, strategy) -> "WanDiT":
        """Use ``strategy`` (a registered source strategy, or its name) for source latents; it adds the
        weights it needs (``strategy.attach``)."""
        strategy = source_strategy_named(strategy) if isinstance(strategy, str) else strategy
        strategy.attach(self)
        self.source_strategy = strategy
        return self

    @property
    def source_mode(self) -> str:
        """The attached source strategy's name; setting it selects a registered strategy by name (its
        weights, if any, must already be attached)."""
        return self.source_strategy.name

    @source_mode.setter
    def source_mode(self, mode: str) -> None:
        self.source_strategy = source_strategy_named(mode)

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, timestep, context: torch.Tensor,
                source_latents: torch.Tensor | None = None, source_scale=None,
                reference_latents: torch.Tensor | None = None, reference_first: bool | None = None) -> torch.Tensor:
        ref_first = self.reference_first if reference_first is None else bool(reference_first)
        batch, f, h, w = self._grid(latents)
        fr = self._reference_frames(reference_latents, latents)
        n_video, n_ref = f * h * w, fr * h * w
        t = self._timesteps(timestep, batch, n_video)                      # [B, 1] or [B, f·h·w]
        x = self.embed_inputs(latents, source_latents, self._source_scale(source_scale, t, source_latents, latents),
                              reference_latents, ref_first)                # [B, L, dim]
        if t.shape[1] > 1 and n_ref:                                       # clean references: t = 0
            pad = t.new_zeros(batch, n_ref)
            t = torch.cat([pad, t] if ref_first else [t, pad], dim=1)
        temb, e = self.embed_time(t)                                       # [B,T,dim], [B,T,6,dim]
        context = self.embed_context(context, batch)                       # [B, Lc, dim]
        rope = rope_tables(self.config, f + fr, h, w, x.device)
        x = self.run_blocks(x, e, context, rope)
        x = self.head(x, temb)                                             # [B, L, pt·ph·pw·C]
        x = x[:, n_ref:] if ref_first else x[:, :n_video]
        return self.unpatchify(x, (f, h, w)).to(latents.dtype)

    def embed_inputs(self, latents, source_latents=None, source_scale=None, reference_latents=None,
                     reference_first: bool = False) -> torch.Tensor:
        x = self.patch_embedding(latents.to(self.dtype)).flatten(2).transpose(1, 2)     # [B, f·h·w, dim]
        if source_latents is not None:
            x = self.source_strategy.embed(self, x, source_latents, source_scale)
        if reference_latents is not None:
            r = self.ref_embedder(reference_latents).expand(x.shape[0], -1, -1)       # [B, Fr·h·w, dim]
            x = torch.cat([r, x] if reference_first else [x, r], dim=1)
        return x.contiguous()

    def embed_time(self, t: torch.Tensor):
        """Timesteps [B, T] → (temb [B, T, dim], projected e [B, T, 6, dim]), both fp32."""
        temb = self.time_embedding(sinusoid(t, self.config.freq_dim, self.sinusoid_dtype))
        return temb, self.time_projection(temb).unflatten(-1, (6, self.config.dim))

    def embed_context(self, context: torch.Tensor, batch: int) -> torch.Tensor:
        if not torch.is_tensor(context) or context.ndim != 3:
            raise InputError(f"context must be a tensor [B, L, C], got "
                             f"{tuple(context.shape) if torch.is_tensor(context) else type(context).__name__}.")
        if context.shape[0] not in (1, batch):
            raise InputError(f"context batch {context.shape[0]} does not match the latents' batch {batch}.")
        if self._context_mode(context.shape[-1]) == "text":
            if self.kv_cache is not None:     # the umT5 projection is as constant as the K/V
                context = self.kv_cache.lookup(self.text_embedding, context,
                                               lambda c: self.text_embedding(c.to(self.dtype)))
            else:
                context = self.text_embedding(context.to(self.dtype))
        return context.to(self.dtype).expand(batch, -1, -1)

    def run_blocks(self, x: torch.Tensor, e: torch.Tensor, context: torch.Tensor, rope) -> torch.Tensor:
        if self.step_cache is not None and not torch.is_grad_enabled() and len(self.blocks):
            return self.step_cache.run_blocks(x, self.first_block_input(x, e),
                                              lambda x: self.run_all_blocks(x, e, context, rope))
        return self.run_all_blocks(x, e, context, rope)

    def first_block_input(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """What the first block's self-attention reads: x modulated by its shift₁/scale₁ (the step cache's
        proxy). The modulation is moved to e's device: with block swap it may wait in CPU RAM."""
        block = self.blocks[0]
        shift, scale = (block.modulation.float().to(e.device) + e)[..., :2, :].unbind(-2)
        return modulate(x, shift, scale, block.eps)

    def run_all_blocks(self, x: torch.Tensor, e: torch.Tensor, context: torch.Tensor, rope) -> torch.Tensor:
        checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpoint:   # keep only block inputs; recompute the insides during backward
                x = torch.utils.checkpoint.checkpoint(block, x, e, context, rope, use_reentrant=False)
            else:
                x = block(x, e, context, rope)
        return x

    def unpatchify(self, x: torch.Tensor, grid) -> torch.Tensor:
        """[B, f·h·w, pt·ph·pw·C] → [B, C, f·pt, h·ph, w·pw]; channel index ((p·ph+q)·pw+r)·C + c."""
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], -1, f * pt, h * ph, w * pw)

    # --- input checks ---------------------------------------------------------------------------------
    def _grid(self, latents: torch.Tensor) -> tuple[int, int, int, int]:
        c = self.config
        if not torch.is_tensor(latents) or latents.ndim != 5:
            raise InputError("latents must be a tensor [B, C, F, H, W], got "
                             f"{tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__}.")
        b, ch, *size = latents.shape
        if ch != c.in_dim:
            raise InputError(f"latents have {ch} channels but this DiT takes {c.in_dim} "
                             f"({'Wan2.2 VAE' if c.in_dim == 48 else 'Wan2.1 VAE' if c.in_dim == 16 else 'its VAE'}"
                             " latents).")
        for n, p, axis in zip(size, c.patch_size, ("frames", "height", "width")):
            if n % p or n == 0:
                raise InputError(f"latent {axis} {n} is not a positive multiple of the patch size {p} "
                                 f"(latents {tuple(latents.shape)}, patch {c.patch_size}).")
        return b, *(n // p for n, p in zip(size, c.patch_size))

    def _reference_frames(self, ref: torch.Tensor | None, latents: torch.Tensor) -> int:
        if ref is None:
            return 0
        if self.ref_embedder is None:
            raise InputError("reference latents were given but this DiT has no reference embedder; load a "
                             "Kiwi-Edit model with ref_embedder/ or call attach_condition_embedders().")
        if ref.ndim != 5 or ref.shape[1] != latents.shape[1] or ref.shape[3:] != latents.shape[3:]:
            raise InputError(f"reference latents {tuple(ref.shape)} must be [B, {latents.shape[1]}, Fr, "
                             f"{latents.shape[3]}, {latents.shape[4]}]: same channels and latent size as the "
                             "video (pad the reference image onto a canvas of the video's size first).")
        if ref.shape[0] not in (1, latents.shape[0]):
            raise InputError(f"reference batch {ref.shape[0]} does not match the latents' batch {latents.shape[0]}.")
        if ref.shape[2] % self.config.patch_size[0]:
            raise InputError(f"reference frames {ref.shape[2]} not a multiple of the patch size "
                             f"{self.config.patch_size[0]}.")
        return ref.shape[2] // self.config.patch_size[0]

    def _timesteps(self, timestep, batch: int, n_tokens: int) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=self.device)
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise InputError(f"timestep must be numeric, got dtype {t.dtype}.")
        if t.ndim <= 1 and t.numel() in (1, batch):
            return t.reshape(-1, 1).expand(batch, 1)
        if t.ndim == 2 and t.shape[0] in (1, batch) and t.shape[1] == n_tokens:
            return t.expand(batch, -1)
        raise InputError(f"timestep of shape {tuple(t.shape)} does not fit: give a number, [B] = [{batch}], or "
                         f"per-token [B, f·h·w] = [{batch}, {n_tokens}].")

    def _source_scale(self, scale, t: torch.Tensor, source: torch.Tensor | None, latents: torch.Tensor):
        return None if source is None else self.source_strategy.scale(self, scale, t, source, latents)

    def _context_mode(self, width: int) -> str:
        c, mode = self.config, self.context_embedding
        if mode == "auto":
            if c.text_dim == c.dim and width == c.dim:
                raise InputError(f"context width {width} fits both the text path (text_dim {c.text_dim}) and the "
                                 "direct path (dim); set model.context_embedding to 'text' or 'none'.")
            mode = "text" if width == c.text_dim else "none" if width == c.dim else None
        expected = {"text": c.text_dim, "none": c.dim}
        if mode is None or width != expected[mode]:
            raise InputError(f"context width {width} does not fit this DiT: it takes text-encoder features of "
                             f"width {c.text_dim} (through text_embedding) or DiT-wide features of width {c.dim} "
                             f"(MLLM connector output){'' if mode is None else f'; context_embedding is {mode!r}'}.")
        return mode
