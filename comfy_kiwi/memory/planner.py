"""Memory planner: the estimated peak memory of each stage of an edit, and settings that fit a GPU.

Estimates, not measurements: weights are counted exactly (the models are built on the meta device
and their parameters counted); activations use per-token / per-pixel byte counts of this code's
forward passes (listed in each stage's lines, so the arithmetic can be checked). Attention never
builds the L×L matrix (sdpa / flash / xformers kernels work in tiles); the size it *would* have is
shown for contrast. A fixed reserve covers the CUDA context and allocator slack.

Search order for the DiT stage (first that fits wins): bf16 → bf16 + block swap of up to half
the blocks → fp8 → fp8 + block swap of any count. VAE stages switch to tiling when untiled does not
fit; the encoder (MLLM / umT5) is offloaded to the CPU after encoding, or run on the CPU when even
its weights do not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..models.wan_config import preset

GiB = 1024 ** 3
RESERVE = int(0.75 * GiB)          # CUDA context + allocator fragmentation
BF16 = 2
MODELS = {
    # DiT preset, VAE ("2.1" ×8 / "2.2" ×16), text-side encoder, its parameter count, context tokens
    "wan2.2-ti2v-5b": dict(dit="wan2.2-ti2v-5b", vae="2.2", encoder="MLLM (Qwen2.5-VL-3B, Kiwi-Edit)",
                           encoder_params=3.75e9, context=512, ref_context=768),
    "wan2.1-t2v-1.3b": dict(dit="wan2.1-t2v-1.3b", vae="2.1", encoder="umT5-XXL text encoder",
                            encoder_params=5.68e9, context=512, ref_context=0),
    "wan2.1-t2v-14b": dict(dit="wan2.1-t2v-14b", vae="2.1", encoder="umT5-XXL text encoder",
                           encoder_params=5.68e9, context=512, ref_context=0),
}


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


@dataclass
class Stage:
    name: str
    peak: int                       # bytes on the compute device
    lines: list[str] = field(default_factory=list)


@dataclass
class Plan:
    model: str
    width: int
    height: int
    frames: int
    vram: int                       # bytes
    tokens: int
    stages: list[Stage]
    settings: dict                  # dtype, fp8, block_swap, vae_tiling, offload_encoder, encoder_device
    fits: bool
    time: list[str] = field(default_factory=list)     # DiT forwards per edit (with the step cache)

    @property
    def peak(self) -> int:
        return max(s.peak for s in self.stages)


# --- model sizes (exact, from the architectures) ----------------------------------------------------------
def dit_sizes(name: str) -> dict:
    """Parameter counts of a DiT preset: per block, its fp8-eligible linears, and the rest."""
    import torch

    from ..models.wan_dit import WanDiT
    from .fp8 import fp8_linears
    with torch.device("meta"):
        dit = WanDiT(preset(name))
    block = sum(p.numel() for p in dit.blocks[0].parameters())
    linear = sum(m.weight.numel() for n, m in fp8_linears(dit) if n.startswith("blocks.0."))
    total = sum(p.numel() for p in dit.parameters())
    return dict(block=block, block_linear=linear, rest=total - block * len(dit.blocks), layers=len(dit.blocks))


def vae_params(version: str) -> int:
    import torch

    from ..models.wan_vae import WAN21_VAE, WAN22_VAE, WanVAE
    with torch.device("meta"):
        return sum(p.numel() for p in WanVAE(WAN22_VAE if version == "2.2" else WAN21_VAE).parameters())


# --- stages ---------------------------------------------------------------------------------------------
def _encoder_stage(m: dict, vram: int, frames: int) -> tuple[Stage, str]:
    w = int(m["encoder_params"] * BF16)
    if "Qwen" in m["encoder"]:
        tokens = 8 * 334 + m["context"] + m["ref_context"] + 256   # 16 frames /2 temporal × 334 patches + queries
        # 84 B per token and hidden unit: measured (live tensors, bf16, real widths) on 16 frames of 1280×704 plus a
        # reference, 0.67 GiB; frames are capped at 262,144 px, so larger videos do not add to it
        act = tokens * 2048 * 84
        what = f"{tokens} tokens × 2048 hidden × 84 B (measured)"
    else:
        tokens, act = 512, 512 * 4096 * 40
        what = "512 tokens × 4096 hidden × 40 B"
    device = "cuda" if w + act + RESERVE <= vram else "cpu"
    peak = w + act + RESERVE if device == "cuda" else 0
    lines = [f"weights {m['encoder_params'] / 1e9:.2f}e9 params × 2 B (bf16) = {gib(w)}",
             f"activations {what} = {gib(act)}", f"reserve {gib(RESERVE)}",
             "runs on the GPU, then offloaded to the CPU before the DiT loads" if device == "cuda"
             else "does not fit: runs on the CPU (slow, once per edit)"]
    return Stage(f"encode ({m['encoder']})", peak, lines), device


# Peak bytes per video pixel inside the VAE while it works on one causal chunk (steady state, bf16 weights and
# activations, released widths), measured with ``comfy_kiwi.testing.memory_probe`` (tests/test_memory_estimates.py).
VAE_ACT_PER_PX = {("encode", "2.1"): 7450, ("decode", "2.1"): 9400, ("encode", "2.2"): 3450, ("decode", "2.2"): 8750}


def vae_video_bytes_per_px(kind: str, version: str, frames: int) -> tuple[int, int]:
    """(bytes per pixel held beside the VAE's own activations, bytes per pixel after it): the video on the
    device — encode: the bf16 input (and Wan2.2's patchified copy); decode: the fp32 output, then it and the two
    fp32 copies alive at once while ``frames.vae_to_frames`` turns it into 0..1 frames (all measured)."""
    if kind == "encode":
        return 2 * 3 * frames * (2 if version == "2.2" else 1), 0
    return 4 * 3 * frames, 3 * 4 * 3 * frames


def _vae_stage(kind: str, version: str, width: int, height: int, frames: int, vram: int) -> tuple[Stage, bool]:
    w = vae_params(version) * BF16
    act_px = VAE_ACT_PER_PX[(kind, version)]
    held_px, after_px = vae_video_bytes_per_px(kind, version, frames)
    tile_px = 480 * 832
    lines = [f"weights {vae_params(version) / 1e6:.0f}e6 params × 2 B = {gib(w)}",
             f"video on the device {held_px} B/px × {width * height} px = {gib(held_px * width * height)}"
             + (f"; converting to frames {after_px} B/px = {gib(after_px * width * height)}" if after_px else "")]
    for tiled in (False, True):
        px = min(width * height, tile_px) if tiled else width * height
        act = act_px * px
        peak = w + max(held_px * width * height + act, after_px * width * height) + RESERVE
        if peak <= vram or tiled:
            tile = " (tile 480×832)" if tiled else ""
            lines.append(f"activations of one causal chunk {act_px} B/px × {px} px{tile} = {gib(act)}")
            lines.append(f"reserve {gib(RESERVE)}; tiling {'on' if tiled else 'off'}")
            return Stage(f"VAE {kind} (Wan{version})", peak, lines), tiled
    raise AssertionError("unreachable")


def dit_activation_bytes_per_token(c) -> int:
    """Peak bytes per token of a no-grad DiT forward (bf16), as measured by
    ``comfy_kiwi.testing.memory_probe.dit_inference_peak`` (tests/test_memory_estimates.py):
    held across the blocks: the embedded tokens and the running block's input (2 × dim bf16) and the
    RoPE cos/sin tables (2 × head_dim/2 fp32); inside a block the larger of the attention phase
    (bf16 q/k/v/out plus the fp32 copies of norms, RoPE and the gated residual: ~20 × dim bytes) and
    the FFN phase (input, modulated input, hidden before and after GELU: 6 × dim + 4 × ffn bytes)."""
    held = 2 * c.dim * BF16 + 4 * c.head_dim
    return held + max(20 * c.dim, 6 * c.dim + 4 * c.ffn_dim)


def _dit_arith(c, sizes: dict, tokens: int, ctx: int, batch: int) -> dict:
    act_tok = dit_activation_bytes_per_token(c)
    return dict(
        act=batch * tokens * act_tok, act_tok=act_tok,
        kv=c.num_layers * 2 * batch * ctx * c.dim * BF16,
        lxl=batch * c.num_heads * tokens * tokens * 4)


def _dit_weights(sizes: dict, fp8: bool, swapped: int) -> tuple[int, str]:
    per_block = sizes["block"] * BF16 - (sizes["block_linear"] if fp8 else 0)
    resident = sizes["layers"] - swapped + (2 if swapped else 0)   # + running + prefetched
    resident = min(resident, sizes["layers"])
    w = sizes["rest"] * BF16 + resident * per_block
    text = (f"{resident} resident blocks × {per_block / 1e6:.1f} MB ({'fp8 linears + bf16 rest' if fp8 else 'bf16'})"
            f" + embeddings/head {sizes['rest'] * BF16 / 1e6:.1f} MB = {gib(w)}")
    return w, text


def _dit_stage(name: str, m: dict, tokens: int, vram: int, cfg: bool, reference: bool,
               block_swap: int | None, fp8: bool | None) -> tuple[Stage, dict]:
    c, sizes = preset(m["dit"]), dit_sizes(m["dit"])
    batch = 2 if cfg else 1
    ctx = m["context"] + (m["ref_context"] if reference else 0)
    a = _dit_arith(c, sizes, tokens, ctx, batch)
    candidates = []
    for use_fp8 in ((False, True) if fp8 is None else (fp8,)):
        limit = sizes["layers"] if (use_fp8 or fp8 is not None) else sizes["layers"] // 2
        swaps = range(0, limit + 1) if block_swap is None else (block_swap,)
        candidates += [(use_fp8, n) for n in swaps]
    choice = None
    for use_fp8, n in candidates:
        w, _ = _dit_weights(sizes, use_fp8, n)
        if w + a["act"] + a["kv"] + RESERVE <= vram:
            choice = (use_fp8, n)
            break
    fits = choice is not None
    use_fp8, n = choice or candidates[-1]
    w, wtext = _dit_weights(sizes, use_fp8, n)
    peak = w + a["act"] + a["kv"] + RESERVE
    lines = [f"weights: {wtext}",
             f"tokens L = {tokens} (batch {batch}{', CFG' if cfg else ''})",
             f"activations {batch} × {tokens} tokens × {a['act_tok']} B/token "
             f"[4·dim + 4·head_dim + max(20·dim, 6·dim + 4·ffn) = {4 * c.dim} + {4 * c.head_dim} + "
             f"max({20 * c.dim}, {6 * c.dim + 4 * c.ffn_dim})] = {gib(a['act'])}",
             f"attention: q,k,v,out tiles only (counted above); the L×L matrix would be "
             f"{batch}×{c.num_heads}×{tokens}² × 4 B = {gib(a['lxl'])} — never built",
             f"K/V cache {c.num_layers} layers × 2 × {batch} × {ctx} ctx × {c.dim} × 2 B = {gib(a['kv'])}",
             f"reserve {gib(RESERVE)}"]
    if n:
        lines.append(f"block swap {n} of {sizes['layers']} blocks: "
                     f"{n * (sizes['block'] * BF16 - (sizes['block_linear'] if use_fp8 else 0)) / GiB:.2f} GiB "
                     "moved over PCIe per step (in pinned RAM)")
    return Stage(f"DiT sampling ({name})", peak, lines), dict(fp8=use_fp8, block_swap=n, fits=fits)


def latent_tokens(model: str, width: int, height: int, frames: int, reference: bool = False) -> int:
    m = _model(model)
    factor = (16 if m["vae"] == "2.2" else 8) * 2      # VAE stride × patch 2
    if width % factor or height % factor or width <= 0 or height <= 0:
        raise InputError(f"{model}: width and height must be positive multiples of {factor} (VAE ×{factor // 2}, "
                         f"patch 2), got {width}x{height}.")
    if frames < 1 or (frames - 1) % 4:
        raise InputError(f"frames must be 4k+1 (1, 5, 9, …, 81), got {frames}.")
    per_frame = (width // factor) * (height // factor)
    return per_frame * ((frames - 1) // 4 + 1 + (1 if reference else 0))


def _model(name: str) -> dict:
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; the planner knows {', '.join(MODELS)}.")
    return MODELS[name]


def plan(model: str, width: int, height: int, frames: int, vram_gb: float, *, cfg: bool = False,
         reference: bool = False, block_swap: int | None = None, fp8: bool | None = None,
         steps: int = 50, step_cache: float = 0.0) -> Plan:
    """Estimate each stage's peak and pick settings that fit ``vram_gb``. ``block_swap``/``fp8``
    fix those choices instead of searching; ``steps``/``step_cache`` set the time lines."""
    m = _model(model)
    if not vram_gb > 0:
        raise InputError(f"vram must be a positive number of GB, got {vram_gb!r}.")
    if reference and not m["ref_context"]:
        raise InputError(f"{model} takes no reference image (only the Kiwi-Edit 5B models do).")
    vram = int(vram_gb * GiB)
    tokens = latent_tokens(model, width, height, frames, reference)
    enc, enc_device = _encoder_stage(m, vram, frames)
    venc, enc_tiled = _vae_stage("encode", m["vae"], width, height, frames, vram)
    dit, choice = _dit_stage(model, m, tokens, vram, cfg, reference, block_swap, fp8)
    vdec, dec_tiled = _vae_stage("decode", m["vae"], width, height, frames, vram)
    stages = [enc, venc, dit, vdec]
    settings = dict(dtype="bfloat16", fp8=choice["fp8"], block_swap=choice["block_swap"],
                    vae_tiling=enc_tiled or dec_tiled, offload_encoder=True, encoder_device=enc_device,
                    kv_cache=True)
    time = dit_forward_lines(preset(m["dit"]), tokens, steps, cfg, step_cache, dit)
    fits = choice["fits"] and all(s.peak <= vram for s in stages)
    return Plan(model, width, height, frames, vram, tokens, stages, settings, fits, time)


def dit_forward_lines(c, tokens: int, steps: int, cfg: bool, step_cache: float, dit: Stage) -> list[str]:
    """Sampling time in DiT forwards; with the step cache, what it may skip and what it holds
    (added to the DiT stage's peak)."""
    from ..sampling.step_cache import check_threshold
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}.")
    lines = [f"{steps} DiT forwards per edit{' (batch 2: both CFG branches in one forward)' if cfg else ''}"]
    if check_threshold(step_cache) == 0:
        return lines + ["step cache off: every step runs the blocks"]
    batch = 2 if cfg else 1
    held = 2 * batch * tokens * c.dim * BF16
    dit.peak += held
    dit.lines.append(f"step cache: residual + proxy 2 × {batch} × {tokens} tokens × {c.dim} × 2 B = {gib(held)}")
    return lines + [f"step cache {step_cache:g}: the blocks run in {min(steps, 3)} to {steps} of them (never skipped: "
                    "the first two and the last),",
                    "  decided while sampling from how fast the model's residual changes; a skipped step costs "
                    "the embeddings + head only",
                    "  measured share skipped per threshold: docs/PERFORMANCE.md, \"Step cache\""]


def format_plan(p: Plan) -> str:
    out = [f"{p.model}, {p.width}x{p.height}, {p.frames} frames, {p.vram / GiB:g} GiB VRAM "
           f"→ {p.tokens} DiT tokens"]
    for s in p.stages:
        flag = "" if s.peak <= p.vram else "   ← over budget"
        out.append(f"\n{s.name}: peak ≈ {gib(s.peak)}{flag}")
        out += [f"  {line}" for line in s.lines]
    st = p.settings
    out.append("\nsettings that fit:" if p.fits else "\nDOES NOT FIT even with every saving; closest settings:")
    out.append(f"  dtype {st['dtype']}, fp8 {'on (e4m3fn, per-tensor scale)' if st['fp8'] else 'off'}, "
               f"block swap {st['block_swap']}, VAE tiling {'on' if st['vae_tiling'] else 'off'}, "
               f"encoder {'offloaded after use' if st['encoder_device'] == 'cuda' else 'on the CPU'}, K/V cache on")
    if not p.fits:
        out.append("  try fewer frames or a smaller size, or more VRAM")
    if p.time:
        out.append("\ntime:")
        out += [f"  {line}" for line in p.time]
    return "\n".join(out)


def settings_for_vram(model: str, width: int, height: int, frames: int, vram_gb: float, *,
                      cfg: bool = False, reference: bool = False) -> dict:
    """The ``auto`` memory mode: the settings dict of :func:`plan` (+ ``fits`` and ``peak_gb``)."""
    p = plan(model, width, height, frames, vram_gb, cfg=cfg, reference=reference)
    return {**p.settings, "fits": p.fits, "peak_gb": round(p.peak / GiB, 2)}


def block_swap_for(config, latent_shape, vram_gb: float, *, cfg: bool = False, reference: bool = False) -> int:
    """Blocks to swap for a loaded DiT (``WanDiTConfig``) and its latents [B, C, f, h, w] on a GPU
    with ``vram_gb`` free: the planner's DiT-stage choice (0 when everything fits)."""
    from ..models.wan_config import preset_name
    name = preset_name(config)
    if name not in MODELS:
        raise InputError(f"the planner only knows the released models ({', '.join(MODELS)}); this DiT is "
                         f"{name!r}: set the block swap count by hand.")
    f, h, w = latent_shape[-3:]
    factor = 16 if MODELS[name]["vae"] == "2.2" else 8
    p = plan(name, w * factor, h * factor, (f - 1) * 4 + 1, vram_gb, cfg=cfg, reference=reference, fp8=False)
    return int(p.settings["block_swap"])
