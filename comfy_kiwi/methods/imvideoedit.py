"""ImVideoEdit: a Predict-Update spatial-difference module beside every self-attention of a frozen Wan DiT.

Source and target latents travel as one 2B batch ``[source; target]`` (the source clean, at t = 0).
For each block, with X the self-attention's input (the modulated hidden state) and H_3D its output,
every one of the 2B rows goes through (the paper's equation numbers):

    Φ(·)      the joint 2D operator: frames folded into the batch, source and target of one frame side by
              side (h × 2w); Φ⁻¹ splits it back into the 2B rows
    (4) H_2D⁽¹⁾  = Φ⁻¹(Attn2D₁(LN₁(Φ(X))))
    (5) H_pred   = H_3D + ZeroLinear₁(H_2D⁽¹⁾)
    (6) H_res    = H_pred − H_2D⁽¹⁾
    (7) H_diff   = Φ⁻¹(Attn2D₂(LN₂(Φ(H_res))))
    (8) C        = CrossAttn(LN₃(H_diff), text)
    (9) G        = sigmoid(MLP₂(C))
    (10) H_update = H_pred + G ⊙ ZeroLinear₂(H_diff)                      (all 2B rows)

Both zero linears start at 0, so an attached model equals the base model exactly until training moves
them. Attn2D₁/₂ and CrossAttn start as copies of the block's own self-/cross-attention; the 2D RoPE uses
frame index 0 and the (y, x) grid of the joint layout (x over 2w).

Nothing is registered inside the DiT: hooks on ``dit``, each block and each ``self_attn`` read and
rewrite activations, so the DiT's state-dict keys stay those of the base model. The adapter's own
weights are saved as ``imvideoedit.blocks.N.*`` (safetensors). See docs/METHODS.md.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..models.wan_dit import CastLinear, WanDiT, layer_norm, rope_tables
from ..sampling import flow_sigmas, noise_like, sample_euler, sigma_to_timestep
from ..sampling.step_cache import step_cache as cached_steps

PREFIX = "imvideoedit."


class PredictUpdate(nn.Module):
    """The spatial-difference module of one block (see the module docstring for the equations)."""

    def __init__(self, block, dtype: torch.dtype = torch.float32):
        super().__init__()
        dim = block.norm3.normalized_shape[0]
        self.eps = block.eps
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(dim, eps=block.eps) for _ in range(3))
        self.attn2d_1 = copy.deepcopy(block.self_attn)
        self.attn2d_2 = copy.deepcopy(block.self_attn)
        self.cross_attn = copy.deepcopy(block.cross_attn)
        # CastLinear computes in the activations' dtype, so fp32 modules run beside a bf16 base without autocast
        self.gate_mlp = nn.Sequential(CastLinear(dim, dim), nn.GELU(approximate="tanh"), CastLinear(dim, dim))
        self.zero_1, self.zero_2 = CastLinear(dim, dim), CastLinear(dim, dim)
        for z in (self.zero_1, self.zero_2):
            nn.init.zeros_(z.weight)
            nn.init.zeros_(z.bias)
        self.to(dtype=dtype)
        self.context: torch.Tensor | None = None      # set by the block pre-hook on every call
        self.trace: dict | None = None                # a dict here collects Eqs. 4–9 (tests)

    def _norm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.eps, norm).to(x.dtype)          # fp32 statistics, weights of any dtype

    def forward(self, x: torch.Tensor, h3d: torch.Tensor, grid, cfg) -> torch.Tensor:
        """x, h3d [2B, f·h·w, dim] → H_update [2B, f·h·w, dim] (Eqs. 4–10 on every row).

        When ``self.trace`` is a dict, the intermediates of Eqs. 4–9 are stored in it (for tests)."""
        f, h, w = grid
        dtype = h3d.dtype
        rope = rope_tables(cfg, 1, h, 2 * w, x.device)
        h2d_1 = phi_inv(self.attn2d_1(self._norm(self.ln1, phi(x, grid)), rope), grid)          # (4)
        h_pred = h3d + self.zero_1(h2d_1)                                                    # (5)
        h_res = h_pred - h2d_1                                                               # (6)
        h_diff = phi_inv(self.attn2d_2(self._norm(self.ln2, phi(h_res, grid)), rope), grid)     # (7)
        ctx = self.context if self.context.shape[0] == x.shape[0] else self.context.expand(x.shape[0], -1, -1)
        c = self.cross_attn(self._norm(self.ln3, h_diff), ctx.to(dtype))                     # (8)
        gate = torch.sigmoid(self.gate_mlp(c))                                               # (9)
        if self.trace is not None:
            self.trace.update(x=x, h3d=h3d, h2d_1=h2d_1, h_pred=h_pred, h_res=h_res, h_diff=h_diff, c=c,
                              gate=gate, context=ctx)
        return (h_pred + gate * self.zero_2(h_diff)).to(dtype)                                # (10)


def phi(t: torch.Tensor, grid) -> torch.Tensor:
    """Φ: [2B, f·h·w, d] (rows [source; target]) → [B·f, h·2w, d], source | target of each frame side by side."""
    f, h, w = grid
    b, d = t.shape[0] // 2, t.shape[-1]
    s, g = t[:b].reshape(b * f, h, w, d), t[b:].reshape(b * f, h, w, d)
    return torch.cat([s, g], dim=2).reshape(b * f, h * 2 * w, d)


def phi_inv(t: torch.Tensor, grid) -> torch.Tensor:
    """Φ⁻¹: [B·f, h·2w, d] → [2B, f·h·w, d] (left halves = source rows, right halves = target rows)."""
    f, h, w = grid
    bf, d = t.shape[0], t.shape[-1]
    t = t.reshape(bf, h, 2 * w, d)
    b = bf // f
    return torch.cat([t[:, :, :w].reshape(b, f * h * w, d), t[:, :, w:].reshape(b, f * h * w, d)])


class ImVideoEditAdapter(nn.Module):
    """The Predict-Update modules of every block; ``attach`` hooks them into a DiT.

    After ``attach`` every call of the DiT must pass a paired batch ``[source; target]`` (2B samples,
    same size); set ``enabled = False`` to run the plain base model, ``detach()`` to remove the hooks.
    """

    def __init__(self, dit: WanDiT, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.blocks = nn.ModuleList(PredictUpdate(block, dtype) for block in dit.blocks)
        self.enabled = True
        self._grid = None
        self._cfg = dit.config
        self._handles: list = []

    # --- hooks ------------------------------------------------------------------------------------------
    def attach(self, dit: WanDiT) -> "ImVideoEditAdapter":
        if len(dit.blocks) != len(self.blocks):
            raise InputError(f"this ImVideoEdit adapter has {len(self.blocks)} blocks but the DiT has "
                             f"{len(dit.blocks)}; it was trained for a different model.")
        self.detach()
        self._cfg = dit.config
        self._handles.append(dit.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
        for block, module in zip(dit.blocks, self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._context_hook(module)))
            self._handles.append(block.self_attn.register_forward_hook(self._attn_hook(module)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _model_pre_hook(self, dit, args, kwargs):
        if not self.enabled:
            return None
        latents = args[0] if args else kwargs.get("latents")
        if latents.shape[0] % 2:
            raise InputError(f"a DiT with ImVideoEdit attached takes a paired batch [source; target] (2B samples); "
                             f"got {latents.shape[0]}. Use comfy_kiwi.methods.imvideoedit.paired_velocity or set "
                             "adapter.enabled = False for the plain model.")
        reference = args[5] if len(args) > 5 else kwargs.get("reference_latents")
        if reference is not None:
            raise InputError("ImVideoEdit does not take reference latents.")
        # kept after the call: gradient checkpointing re-runs the blocks during backward
        self._grid = tuple(n // p for n, p in zip(latents.shape[2:], dit.config.patch_size))
        return None

    def _context_hook(self, module: PredictUpdate):
        def hook(block, args):
            module.context = args[2]
        return hook

    def _attn_hook(self, module: PredictUpdate):
        def hook(attn, args, output):
            if not self.enabled:
                return output
            return module(args[0], output, self._grid, self._cfg)
        return hook

    # --- weights ----------------------------------------------------------------------------------------
    def prefixed_state_dict(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def save(self, path) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.cpu() for k, v in self.prefixed_state_dict().items()}, str(tmp),
                  metadata={"method": "imvideoedit", "num_blocks": str(len(self.blocks))})
        tmp.replace(path)
        return path


def _read_weights(weights) -> dict[str, torch.Tensor]:
    if isinstance(weights, dict):
        return weights
    from ..loading.files import open_state_dict
    state = open_state_dict(weights)
    return {k: state[k] for k in state}


def attach(dit: WanDiT, weights=None, dtype: torch.dtype | None = None) -> ImVideoEditAdapter:
    """Add ImVideoEdit to ``dit`` (hooks; the DiT's own weights and keys are untouched).

    ``weights``: a safetensors path or a state dict with ``imvideoedit.blocks.N.*`` keys (the prefix may
    be absent); None = fresh modules (copies of the base attention, zero linears). Returns the adapter,
    on the DiT's device, in ``dtype`` (default: the DiT's compute dtype).
    """
    adapter = ImVideoEditAdapter(dit, dtype or dit.dtype).to(dit.device)
    if weights is not None:
        state = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in _read_weights(weights).items()}
        own = adapter.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or wrong:
            raise CheckpointError(f"ImVideoEdit weights {weights if not isinstance(weights, dict) else '(dict)'} "
                                  f"do not fit this DiT ({len(dit.blocks)} blocks, dim {dit.config.dim}): "
                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}.")
        adapter.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return adapter.attach(dit)


def paired_velocity(dit: WanDiT, source: torch.Tensor, noisy: torch.Tensor, timestep, context: torch.Tensor):
    """The target velocity of an attached DiT: source [B,C,F,H,W] clean at t = 0, noisy target at ``timestep``."""
    if source.shape != noisy.shape:
        raise InputError(f"source latents {tuple(source.shape)} and target latents {tuple(noisy.shape)} must have "
                         "the same shape (the source video feeds the source half frame by frame).")
    b = noisy.shape[0]
    t = torch.as_tensor(timestep, dtype=torch.float32, device=noisy.device).reshape(-1).expand(b)
    out = dit(torch.cat([source, noisy]), torch.cat([torch.zeros_like(t), t]), torch.cat([context, context])
              if context.shape[0] == b else context)
    return out[b:]


@torch.no_grad()
def sample(dit: WanDiT, source_latents: torch.Tensor, context: torch.Tensor, steps: int = 50, shift: float = 5.0,
           seed: int = 0, schedule: str = "kiwi", progress: bool = True, step_cache: float = 0.0) -> torch.Tensor:
    """Edit: Euler sampling of the target latents with the source video in the source half.
    ``step_cache`` > 0 skips the blocks (with the hooks in them) at steps that change little."""
    dtype = dit.dtype
    src = source_latents.to(dit.device, dtype)
    ctx = context.to(dit.device)
    x = noise_like(src.shape, seed, dtype=dtype, device=dit.device)
    sigmas = flow_sigmas(steps, shift, schedule)
    with cached_steps(dit, step_cache) as cache:
        return sample_euler(lambda x, s, i: paired_velocity(dit, src, x, sigma_to_timestep(s, x.shape[0], dtype, x.device), ctx), x, sigmas,
                            progress=progress, desc="ImVideoEdit", step_cache=cache)


@contextmanager
def applied(dit: WanDiT, weights):
    """``with applied(dit, weights) as adapter:`` — ImVideoEdit on a shared DiT only inside the block."""
    adapter = attach(dit, weights)
    try:
        yield adapter
    finally:
        adapter.detach()


def read_weights(path) -> dict[str, torch.Tensor]:
    """The ``imvideoedit.*`` tensors of a file; a clear error when the file holds something else."""
    state = _read_weights(path)
    if not state or not all(k.startswith(PREFIX + "blocks.") for k in state):
        other = next((k for k in state if not k.startswith(PREFIX)), None)
        raise CheckpointError(f"{path} is not an ImVideoEdit weights file (keys imvideoedit.blocks.N.*); "
                              f"found e.g. {other!r}.")
    return state
