"""Building blocks of the Wan video VAE (2.1 and 2.2), in the original Wan parameter layout.

The VAE is causal in time and runs as a stream: the encoder sees frame 0 alone, then groups of 4
frames; the decoder sees one latent frame at a time. A :class:`StreamCache` carries, for every
causal layer, the last input frames of the previous chunk, so a 3-frame temporal kernel at the
start of a chunk still sees the frames that came before it (zeros before the first frame).

Parameter names follow the original files (``residual.{0,2,3,6}``, ``shortcut``, ``resample.1``,
``time_conv``, ``norm``/``to_qkv``/``proj``, RMSNorm ``gamma``), so checkpoints load without renaming.
Layouts: video tensors are ``[B, C, T, H, W]`` everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention

# A temporal kernel of 3 needs the 2 previous frames.
HISTORY_FRAMES = 2


class StreamCache:
    """Per-call memory of the causal layers.

    Layers claim slots in call order; the order is the same for every chunk, so slot ``i`` always
    belongs to the same layer. ``start_chunk()`` rewinds the cursor before each chunk.
    """

    # Marks a temporal upsampler that has seen the first chunk (which it passes through unchanged).
    STARTED = object()

    def __init__(self) -> None:
        self._slots: list = []
        self._cursor = 0

    def start_chunk(self) -> None:
        self._cursor = 0

    def next_slot(self) -> int:
        if self._cursor == len(self._slots):
            self._slots.append(None)
        self._cursor += 1
        return self._cursor - 1

    def __getitem__(self, i: int):
        return self._slots[i]

    def __setitem__(self, i: int, value) -> None:
        self._slots[i] = value


def _last_frames(past: torch.Tensor | None, x: torch.Tensor, n: int) -> torch.Tensor:
    """The last ``n`` frames of the stream ``past ++ x`` (copied, so ``x`` itself can be freed)."""
    if x.shape[2] < n and past is not None:
        return torch.cat([past[:, :, -(n - x.shape[2]):], x], dim=2)
    return x[:, :, -n:].clone()


class CausalConv3d(nn.Conv3d):
    """3D convolution padded only on the past side in time (and symmetrically in space).

    ``forward(x, past)`` prepends ``past`` (frames of the stream before ``x``) and zero-pads the
    remaining history, so chunked calls give the same result as one call over the whole stream.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, padding=0) -> None:
        kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        padding = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        # Space is padded by the convolution itself; time is padded by hand on the past side only.
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=(0, padding[1], padding[2]))
        self.history = 2 * padding[0]

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        if self.history:
            parts = [x]
            missing = self.history
            if past is not None:
                parts.insert(0, past.to(x.dtype))
                missing -= past.shape[2]
            if missing > 0:
                b, c, _, h, w = x.shape
                parts.insert(0, x.new_zeros(b, c, missing, h, w))
            x = torch.cat(parts, dim=2) if len(parts) > 1 else x
        return super().forward(x)

    def stream(self, x: torch.Tensor, cache: StreamCache | None) -> torch.Tensor:
        """Run on one chunk of a stream, remembering the chunk's last frames for the next one."""
        if cache is None or not self.history:
            return self(x)
        slot = cache.next_slot()
        past = cache[slot]
        cache[slot] = _last_frames(past, x, HISTORY_FRAMES)
        return self(x, past)


class RMSNorm(nn.Module):
    """Channel RMS norm: ``x / ||x||_2 · sqrt(C) · gamma`` over dim 1 (no bias in Wan's VAE).

    ``gamma`` is stored as ``[C,1,1,1]`` (video blocks) or ``[C,1,1]`` (attention), as in the files.
    """

    def __init__(self, dim: int, image: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if image else torch.ones(dim, 1, 1, 1))
        self.scale = dim ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for half-precision inputs: the squared sum overflows/loses bits in fp16/bf16.
        low = x.dtype in (torch.float16, torch.bfloat16)
        y = F.normalize(x.float() if low else x, dim=1).to(x.dtype)
        gamma = self.gamma.view(-1, *([1] * (x.ndim - 2)))
        if _can_overwrite():
            return y.mul_(self.scale).mul_(gamma)    # y is our own temporary: save a full-size copy
        return y * self.scale * gamma


def _can_overwrite() -> bool:
    """In-place updates of our own temporaries are safe when no autograd graph is being built."""
    return not torch.is_grad_enabled()


class ResidualBlock(nn.Module):
    """norm → SiLU → conv3 → norm → SiLU → (dropout) → conv3, plus a 1×1×1 shortcut when dims differ."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Indices 0..6 are the original Sequential's; 1, 4, 5 hold no parameters.
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        r = self.residual
        inplace = _can_overwrite()   # activations are the block's own temporaries
        h = r[2].stream(F.silu(r[0](x), inplace=inplace), cache)
        h = r[6].stream(F.silu(r[3](h), inplace=inplace), cache)
        return h.add_(self.shortcut(x)) if inplace else h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, image=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)      # [BT, C, H, W]
        qkv = self.to_qkv(y).view(b * t, 3, c, h * w).transpose(2, 3)        # [BT, 3, HW, C]
        q, k, v = (qkv[:, i].unsqueeze(2) for i in range(3))                 # [BT, HW, 1, C]
        y = attention(q, k, v, backend="sdpa").squeeze(2)                     # [BT, HW, C]
        y = self.proj(y.transpose(1, 2).reshape(b * t, c, h, w))
        return x + y.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _per_frame_conv2d(conv: nn.Conv2d, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Apply a Conv2d to every frame of ``[B,C,T,H,W]`` as a (1,k,k) Conv3d, avoiding a (B·T) reshape."""
    pad = conv.padding
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, stride, stride),
                    padding=(0, pad[0], pad[1]))


class Resample(nn.Module):
    """×2 spatial down/upsampling, optionally with ×2 temporal down/upsampling (``time_conv``).

    Modes: ``downsample2d``, ``downsample3d`` (encoder), ``upsample2d``, ``upsample3d`` (decoder).
    ``out_dim`` is the channel count after an upsample conv (Wan2.1 halves it, Wan2.2 keeps it).
    """

    def __init__(self, dim: int, mode: str, out_dim: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            # resample.0 is the (parameter-free) nearest upsample of the original layout.
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim or dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode.startswith("down"):
            # resample.0 is the original's ZeroPad2d((0,1,0,1)), applied in forward.
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_upsample(x, cache)
        if self.mode.startswith("up"):
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")   # [B,C,T,2H,2W]
            return _per_frame_conv2d(self.resample[1], x)
        x = _per_frame_conv2d(self.resample[1], F.pad(x, (0, 1, 0, 1)), stride=2)  # [B,C,T,H/2,W/2]
        if self.mode == "downsample3d":
            x = self._time_downsample(x, cache)
        return x

    def _time_upsample(self, x: torch.Tensor, cache: StreamCache | None) -> torch.Tensor:
        # The first chunk (latent frame 0 → pixel frame 0) passes through unchanged; every later
        # frame becomes two: time_conv doubles the channels and the halves are interleaved in time.
        if cache is None:
            return x
        slot = cache.next_slot()
        state = cache[slot]
        if state is None:
            cache[slot] = StreamCache.STARTED
            return x
        past = None if state is StreamCache.STARTED else state
        cache[slot] = _last_frames(past, x, HISTORY_FRAMES)
        y = self.time_conv(x, past)                                           # [B, 2C, T, H, W]
        b, c2, t, h, w = y.shape
        # channel half s of frame i becomes frame 2i+s
        return y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def _time_downsample(self, x: torch.Tensor, cache: StreamCache | None) -> torch.Tensor:
        # Frame 0 passes through; later chunks of 2n frames become n frames, the stride-2 kernel
        # reaching back one frame into the previous chunk.
        if cache is None:
            return x
        slot = cache.next_slot()
        past = cache[slot]
        cache[slot] = x[:, :, -1:].clone()
        if past is None:
            return x
        return self.time_conv(torch.cat([past, x], dim=2))


class AvgDown3D(nn.Module):
    """Parameter-free shortcut of the Wan2.2 encoder blocks: space/time-to-channels, then group means.

    Input ``[B, C, T, H, W]`` → ``[B, out_dim, T/ft, H/fs, W/fs]``; T is first zero-padded on the past
    side to a multiple of ``ft``.
    """

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int) -> None:
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.group = in_dim * ft * fs * fs // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        # channel index = c·(ft·fs·fs) + (dt·fs + dy)·fs + dx
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut of the Wan2.2 decoder blocks: repeat channels, then channels-to-space/time.

    Input ``[B, C, T, H, W]`` → ``[B, out_dim, T·ft, H·fs, W·fs]``; on the first chunk the first
    ``ft − 1`` frames are dropped (the causal stream starts with a single frame).
    """

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int) -> None:
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.repeats = out_dim * ft * fs * fs // in_dim

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1).view(b, self.out_dim, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


class DownBlock22(nn.Module):
    """Wan2.2 encoder stage: residual blocks (+ downsample) with an AvgDown3D shortcut around them."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, down_time: bool, down_space: bool):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if down_time else 1, 2 if down_space else 1)
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down_space:
            layers.append(Resample(out_dim, "downsample3d" if down_time else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        h = x
        for layer in self.downsamples:
            h = layer(h, cache)
        shortcut = self.avg_shortcut(x)
        return h.add_(shortcut) if _can_overwrite() else h + shortcut


class UpBlock22(nn.Module):
    """Wan2.2 decoder stage: residual blocks (+ upsample) with a DupUp3D shortcut around them."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, up_time: bool, up_space: bool):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if up_time else 1, 2) if up_space else None
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks + 1):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up_space:
            layers.append(Resample(out_dim, "upsample3d" if up_time else "upsample2d", out_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None, first_chunk: bool = False):
        h = x
        for layer in self.upsamples:
            h = layer(h, cache)
        if self.avg_shortcut is not None:
            shortcut = self.avg_shortcut(x, first_chunk)
            h = h.add_(shortcut) if _can_overwrite() else h + shortcut
        return h
