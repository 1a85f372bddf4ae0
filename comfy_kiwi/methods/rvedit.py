"""RVEDiT (Li et al., 2026): granularity-routed conditioning and reference-anchored attention alignment.

**Granularity-routed token conditioning.** Shallow blocks see only the editing tokens, deeper
blocks see every conditioning stream:

    context_l = X_e                    for the first L_s blocks   (block_index < L_s, 0-based;
                                                                    the paper's 1-based l ≤ L_s)
    context_l = [X_e ; X_v ; X_ℓ]      for the deeper blocks       (concatenated along tokens)

In this stack (all DiT-wide, [B, L_*, dim], ready for cross-attention):

- X_e — editing tokens: the MLLM encoder's learnable-query output after its connector
  (``comfy_kiwi.mllm``; what Kiwi feeds every block today).
- X_v — source-video tokens: chosen here as the VAE latents of the source video patch-embedded to
  the DiT width by a trainable Conv3d (a ``ConditionEmbedder``), optionally pooled spatially to
  bound their count. They carry the pixel-level evidence the deep blocks refine; no MLLM change is
  needed. (MLLM visual tokens would be the alternative; they are coarser and cost a second connector.)
- X_ℓ — caption tokens: umT5 features of the caption through the DiT's own ``text_embedding``
  (Wan's native text path).

**Reference-anchored attention alignment.** During training a second, parameter-sharing, no-grad
pass runs the DiT on (target video, target caption); at one block drawn uniformly each step the
cross-attention outputs of both passes, a (editing) and b (reference), are pulled together by a
symmetric InfoNCE over token positions (positives = the same position, τ = 0.07). The reference
pass costs nothing at inference.

Helpers: ``route_context`` (the rule), ``source_video_tokens`` (X_v), ``RoutedContext`` (installs
the rule on a WanDiT by forward pre-hooks on the blocks), ``CrossAttentionTap`` (captures
cross-attention inputs/outputs), ``symmetric_info_nce`` and ``AlignmentConfig``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

CAPTURES = ("output", "input", "both")


def _check_stream(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if not torch.is_tensor(t) or t.ndim != 3:
        raise InputError(f"{name} must be tokens [B, L, dim], got "
                         f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}.")
    if t.shape[-1] != like.shape[-1]:
        raise InputError(f"{name} has width {t.shape[-1]} but X_e has {like.shape[-1]}; project every stream "
                         "to the DiT width first.")
    if t.shape[0] not in (1, like.shape[0]) and like.shape[0] != 1:
        raise InputError(f"{name} batch {t.shape[0]} does not match X_e's batch {like.shape[0]}.")


def route_context(block_index: int, L_s: int, x_e: torch.Tensor, x_v: torch.Tensor | None = None,
                  x_l: torch.Tensor | None = None) -> torch.Tensor:
    """The cross-attention context of block ``block_index`` (0-based): X_e for the first ``L_s`` blocks,
    [X_e; X_v; X_ℓ] (the streams given, in that order) for the rest. All [B, L_*, dim]."""
    if block_index < 0 or L_s < 0:
        raise InputError(f"block_index and L_s must be ≥ 0, got {block_index} and {L_s}.")
    _check_stream("X_e", x_e, x_e)
    if block_index < L_s:
        return x_e
    parts = [x_e]
    for name, t in (("X_v", x_v), ("X_ℓ", x_l)):
        if t is not None:
            _check_stream(name, t, x_e)
            parts.append(t)
    if len(parts) == 1:
        return x_e
    batch = max(p.shape[0] for p in parts)
    return torch.cat([p.to(x_e.dtype).expand(batch, -1, -1) for p in parts], dim=1)


def source_video_tokens(embedder: nn.Module, source_latents: torch.Tensor, pool=(1, 1, 1)) -> torch.Tensor:
    """X_v: source latents [B, C, F, H, W] → [B, L_v, dim] through ``embedder.patch_embedding`` (a Conv3d,
    e.g. a ``ConditionEmbedder``), then average-pooled on the token grid by ``pool`` = (pt, ph, pw)
    to bound the context length (a 480p video gives ~30k tokens unpooled). Frame-major order."""
    conv = getattr(embedder, "patch_embedding", None)
    if not isinstance(conv, nn.Conv3d):
        raise InputError("source_video_tokens needs a module with a Conv3d ``patch_embedding`` "
                         "(e.g. comfy_kiwi.models.conditioning.ConditionEmbedder).")
    if not torch.is_tensor(source_latents) or source_latents.ndim != 5 or source_latents.shape[1] != conv.in_channels:
        raise InputError(f"source latents must be [B, {conv.in_channels}, F, H, W], got "
                         f"{tuple(source_latents.shape) if torch.is_tensor(source_latents) else source_latents!r}.")
    grid = conv(source_latents.to(conv.weight.dtype))                        # [B, dim, f, h, w]
    pool = tuple(int(p) for p in pool)
    if len(pool) != 3 or min(pool) < 1 or any(n % p for n, p in zip(grid.shape[2:], pool)):
        raise InputError(f"pool {pool} must be three whole numbers ≥ 1 dividing the token grid "
                         f"{tuple(grid.shape[2:])}.")
    if pool != (1, 1, 1):
        grid = F.avg_pool3d(grid, pool)
    return grid.flatten(2).transpose(1, 2)


class RoutedContext(contextlib.AbstractContextManager):
    """``with RoutedContext(model, L_s, x_e, x_v, x_l): model(latents, t, x_e)`` — each block's context
    argument is replaced by ``route_context(i, ...)`` through a forward pre-hook on ``model.blocks[i]``.

    Pass ``x_e`` as the model's ``context`` too (its checks run on it). The streams must already be
    DiT-wide and in the model's dtype; they are not re-embedded. Hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, L_s: int, x_e: torch.Tensor, x_v: torch.Tensor | None = None,
                 x_l: torch.Tensor | None = None):
        n = len(model.blocks)
        if not 0 <= L_s <= n:
            raise InputError(f"L_s must be between 0 and the number of blocks {n}, got {L_s}.")
        self.model, self.handles, self.L_s = model, [], L_s
        self.contexts = [route_context(i, L_s, x_e, x_v, x_l) for i in range(n)]

    def set_streams(self, x_e: torch.Tensor, x_v: torch.Tensor | None = None,
                    x_l: torch.Tensor | None = None) -> None:
        """New streams for the installed hooks. Training keeps the hooks installed across forward and
        backward (gradient checkpointing re-runs the blocks in backward and must see the same routing)."""
        self.contexts = [route_context(i, self.L_s, x_e, x_v, x_l) for i in range(len(self.contexts))]

    def _hook(self, index: int):
        def pre_hook(module, args, kwargs):
            context = self.contexts[index]
            if len(args) >= 3:                      # WanBlock.forward(x, e, context, rope)
                batch = args[0].shape[0]
                args = (*args[:2], context.to(args[2].dtype).expand(batch, -1, -1), *args[3:])
            elif "context" in kwargs:
                kwargs = {**kwargs, "context": context.to(kwargs["context"].dtype)}
            else:
                raise InputError("RoutedContext: a block was called without a context argument.")
            return args, kwargs
        return pre_hook

    def install(self) -> "RoutedContext":
        """Put the hooks on the blocks (what ``with`` does on entry; training keeps them for the whole run)."""
        for i, block in enumerate(self.model.blocks):
            self.handles.append(block.register_forward_pre_hook(self._hook(i), with_kwargs=True))
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    @contextlib.contextmanager
    def suspended(self):
        """The installed hooks taken off for the block and put back after (a sampler that routes by itself)."""
        self.remove()
        try:
            yield
        finally:
            self.install()

    def __enter__(self) -> "RoutedContext":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()


class CrossAttentionTap(contextlib.AbstractContextManager):
    """Capture what chosen blocks' ``cross_attn`` modules see and return, by forward hooks.

    ``with CrossAttentionTap(model, [3, 7]) as tap: model(...)`` → ``tap.outputs[3]`` [B, L, dim],
    ``tap.inputs[3]`` = (x, context) when ``capture`` is "input" or "both". With ``detach`` the
    stored tensors are cut from the graph (the no-grad reference branch); otherwise the outputs
    keep their graph so a loss on them trains the model. Each forward overwrites the previous
    capture of a block.
    """

    def __init__(self, model: nn.Module, blocks: Iterable[int], capture: str = "output", detach: bool = False):
        if capture not in CAPTURES:
            raise InputError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}.")
        n = len(model.blocks)
        self.blocks = sorted(set(int(b) for b in blocks))
        bad = [b for b in self.blocks if not 0 <= b < n]
        if bad or not self.blocks:
            raise InputError(f"block indices {bad or '(none)'} are not blocks of this DiT (0…{n - 1}).")
        self.model, self.capture, self.detach = model, capture, detach
        self.outputs: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = []

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach() if self.detach else t

    def _hook(self, index: int):
        def hook(module, args, kwargs, output):
            if self.capture in ("input", "both"):
                x = args[0] if args else kwargs["x"]
                context = args[1] if len(args) > 1 else kwargs["context"]
                self.inputs[index] = (self._keep(x), self._keep(context))
            if self.capture in ("output", "both"):
                self.outputs[index] = self._keep(output)
        return hook

    def __enter__(self) -> "CrossAttentionTap":
        self.outputs.clear()
        self.inputs.clear()
        for i in self.blocks:
            self.handles.append(self.model.blocks[i].cross_attn.register_forward_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float = 0.07, max_positions: int | None = 1024,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between features a, b [B, N, D] over token positions; scalar.

    Per sample, n = min(N, max_positions) positions are drawn (the same ones for a and b) — the
    cap bounds the n×n logits (a 480p Wan video has ~30k tokens; 1024 is our choice). Features are
    L2-normalised; logits = a·bᵀ/τ; the positive of position i is position i of the other branch;
    the loss is ½(CE(a→b) + CE(b→a)) averaged over samples. ``b`` (the reference branch) is
    detached: the gradient reaches only ``a``.
    """
    if a.ndim != 3 or a.shape != b.shape:
        raise InputError(f"InfoNCE features must both be [B, N, D] of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}.")
    if tau <= 0:
        raise InputError(f"temperature tau must be > 0, got {tau}.")
    batch, n, _ = a.shape
    if n < 2:
        raise InputError("InfoNCE needs at least 2 positions (negatives are the other positions).")
    b = b.detach()
    if max_positions is not None:
        if max_positions < 2:
            raise InputError(f"max_positions must be ≥ 2 or None, got {max_positions}.")
        if n > max_positions:
            idx = torch.stack([torch.randperm(n, generator=generator)[:max_positions] for _ in range(batch)])
            idx = idx.to(a.device).unsqueeze(-1)
            a = a.gather(1, idx.expand(-1, -1, a.shape[-1]))
            b = b.gather(1, idx.expand(-1, -1, b.shape[-1]))
            n = max_positions
    za, zb = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = za @ zb.transpose(1, 2) / tau                                   # [B, n, n]
    labels = torch.arange(n, device=a.device).expand(batch, n)
    forward = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    backward = F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), labels.flatten())
    return 0.5 * (forward + backward)


@dataclass
class AlignmentConfig:
    """Reference-anchored alignment settings.

    ``loss_weight`` λ in L = L_FM + λ·L_align: 0.75, the value of RVEDiT's main text and tables
    (the default); 0.1 appears once in its appendix and was never evaluated — the documented
    alternative, ``AlignmentConfig.appendix()``. τ = 0.07 and a block drawn uniformly at random each
    step are from RVEDiT; ``max_positions`` and ``blocks`` (the range the block is drawn from,
    default all) are ours.
    """

    loss_weight: float = 0.75
    tau: float = 0.07
    max_positions: int | None = 1024
    blocks: tuple[int, ...] | None = None

    LAMBDA_VALUES = (0.75, 0.1)           # main text / appendix

    def __post_init__(self):
        if self.loss_weight < 0 or self.tau <= 0:
            raise InputError("AlignmentConfig needs loss_weight ≥ 0 and tau > 0, "
                             f"got {self.loss_weight}, {self.tau}.")
        if self.max_positions is not None and self.max_positions < 2:
            raise InputError(f"AlignmentConfig.max_positions must be ≥ 2 or None, got {self.max_positions}.")

    @classmethod
    def appendix(cls, **kw) -> "AlignmentConfig":
        """λ = 0.1, the appendix's value (the alternative to the main text's 0.75)."""
        return cls(loss_weight=0.1, **kw)

    def pick_block(self, num_blocks: int, rng: random.Random | None = None) -> int:
        """The block to align this step: uniform over ``blocks`` (default: every block)."""
        choices = list(self.blocks) if self.blocks else list(range(num_blocks))
        if not choices or any(not 0 <= c < num_blocks for c in choices):
            raise InputError(f"alignment blocks {choices} are not blocks of a {num_blocks}-block DiT.")
        return (rng or random).choice(choices)
