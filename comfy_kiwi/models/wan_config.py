"""Architecture of a Wan video DiT: ``WanDiTConfig``, the released presets, and inference from keys.

``infer_dit_config`` reads only key names and shapes of an original-layout state dict (no tensor
is read). The number of heads is not visible in any shape (the q/k norms span the whole width), so
it comes from a hint, a preset of the same width, or Wan's fixed head width of 128.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from ..errors import CheckpointError, InputError

WAN_HEAD_DIM = 128  # every released Wan DiT uses 128-wide heads


@dataclass(frozen=True)
class WanDiTConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise InputError(f"patch_size must be three positive ints (t, h, w), got {self.patch_size}.")
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"WanDiTConfig.{name} must be a positive int, got {getattr(self, name)!r}.")
        if self.dim % self.num_heads:
            raise InputError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}.")
        if self.head_dim % 2 or self.head_dim < 6:
            raise InputError(f"head width {self.head_dim} (dim/num_heads) must be even and ≥ 6 for the 3D RoPE.")
        if self.freq_dim % 2:
            raise InputError(f"freq_dim must be even (cos and sin halves), got {self.freq_dim}.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Channels of each head given to the frame / height / width rotary axes (44/42/42 for 128)."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "WanDiTConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "patch_size" else v) for k, v in d.items() if k in names})


PRESETS: dict[str, WanDiTConfig] = {
    "wan2.1-t2v-1.3b": WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanDiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.2-ti2v-5b": WanDiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48),
    # Tiny shapes for tests: head widths 32 (RoPE split 12/10/10) and 128 (44/42/42).
    "tiny-wan2.1": WanDiTConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, text_dim=32, freq_dim=32),
    "tiny-wan2.2": WanDiTConfig(dim=256, ffn_dim=192, num_heads=2, num_layers=2, in_dim=48, out_dim=48,
                                text_dim=48),
}
RELEASED = ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-ti2v-5b")


def preset(name: str) -> WanDiTConfig:
    if name not in PRESETS:
        raise InputError(f"unknown Wan DiT preset {name!r}; known: {', '.join(PRESETS)}.")
    return PRESETS[name]


def preset_name(cfg: WanDiTConfig) -> str:
    """The preset with exactly this architecture, or "custom"."""
    return next((n for n, p in PRESETS.items() if p == cfg), "custom")


# --------------------------------------------------------------------------------------------------
# inference from an original-layout state dict
# --------------------------------------------------------------------------------------------------

def _shape(state, key: str, where: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{where}: does not fit a Wan DiT: missing key {key!r} (needed to read the "
                              "architecture from the weights).")
    return tuple(state.shape(key))


def default_heads(dim: int) -> int | None:
    """Heads of a width-``dim`` DiT when nothing else says: a preset of that width, else 128-wide heads."""
    for p in PRESETS.values():
        if p.dim == dim:
            return p.num_heads
    return dim // WAN_HEAD_DIM if dim % WAN_HEAD_DIM == 0 else None


def _heads_for(dim: int, hint: int | None, where: str) -> int:
    heads = int(hint) if hint else default_heads(dim)
    if heads:
        return heads
    raise CheckpointError(f"{where}: cannot tell the number of attention heads of a width-{dim} DiT (not a "
                          f"multiple of Wan's head width {WAN_HEAD_DIM} and no preset has this width); "
                          "pass num_heads, or use a diffusers folder whose config.json names it.")


def infer_dit_config(state, num_heads: int | None = None, where: str | None = None) -> WanDiTConfig:
    """The architecture of an original-layout Wan DiT state dict, from key names and shapes only."""
    where = where or (state.describe_source() if hasattr(state, "describe_source") else "state dict")
    pe = _shape(state, "patch_embedding.weight", where)        # [dim, in, pt, ph, pw]
    if len(pe) != 5:
        raise CheckpointError(f"{where}: patch_embedding.weight has shape {list(pe)}; a Wan DiT has a Conv3d "
                              "weight [dim, in_channels, pt, ph, pw].")
    dim, in_dim, patch = pe[0], pe[1], pe[2:]
    freq_dim = _shape(state, "time_embedding.0.weight", where)[1]
    text_dim = _shape(state, "text_embedding.0.weight", where)[1]
    ffn_dim = _shape(state, "blocks.0.ffn.0.weight", where)[0]
    head_out = _shape(state, "head.head.weight", where)[0]
    n_patch = patch[0] * patch[1] * patch[2]
    if head_out % n_patch:
        raise CheckpointError(f"{where}: head.head.weight has {head_out} outputs, not a multiple of the patch "
                              f"volume {n_patch}; the file mixes layouts.")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if layers != set(range(len(layers))):
        raise CheckpointError(f"{where}: transformer blocks are not numbered 0..N-1 (found "
                              f"{sorted(layers)[:8]}...); the checkpoint is incomplete.")
    try:
        return WanDiTConfig(dim=dim, ffn_dim=ffn_dim, num_heads=_heads_for(dim, num_heads, where),
                            num_layers=len(layers), in_dim=in_dim, out_dim=head_out // n_patch,
                            text_dim=text_dim, freq_dim=freq_dim, patch_size=patch)
    except InputError as e:
        raise CheckpointError(f"{where}: not a loadable Wan DiT architecture: {e}") from None
