"""The parts of ``bench/gpu_check.py``. Each takes a :class:`Run` and records rows with ``run.row(...)``;
``run.tick(what)`` between sub-steps raises :class:`OutOfTime` when the part's deadline has passed, so a part
that runs long stops between steps with what it has measured so far."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import gpu_check_models as M

ROOT = Path(__file__).resolve().parent.parent
GiB = 1024 ** 3
WHEELS = "carry it as a wheel: on a machine with the same Python/torch/CUDA, `pip download {pkg} -d wheels/`, " \
         "then on the GPU machine `pip install --no-index --find-links wheels/ {pkg}`"


PIP_NAMES = {"xformers": "xformers", "flash": "flash-attn", "sage": "sageattention"}


class OutOfTime(Exception):
    pass


class Skipped(Exception):
    pass


def cuda(run) -> bool:
    return run.device.type == "cuda"


def sync(run):
    if cuda(run):
        torch.cuda.synchronize()


def timed(run, fn):
    sync(run)
    t = time.perf_counter()
    out = fn()
    sync(run)
    return out, time.perf_counter() - t


def warm_timed(run, fn):
    """``timed`` after one untimed call on a GPU (kernel selection, cuBLAS handles, the allocator's first growth)."""
    if cuda(run):
        fn()
    return timed(run, fn)


def kiwi_dit_forward(run):
    """The 5B (or tiny) Kiwi DiT on the device and a no-grad forward at the edit size: source, one reference
    frame, the Kiwi context. Returns (dit, forward, tokens)."""
    dit = M.build_dit(run.scale, run.device)
    lat, src, ref, ctx = M.latent_inputs(dit.config, run.scale.edit_size, run.scale.context, run.device)
    t = torch.full((1,), 500.0, device=run.device)

    def forward():
        with torch.no_grad():
            return dit(lat, t, ctx, source_latents=src, source_scale=0.5, reference_latents=ref)
    return dit, forward, _tokens(dit.config, lat, ref)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


class Peak:
    """Peak bytes of a stage: CUDA allocator peak (allocated and reserved) on a GPU, else live tensors
    (``comfy_kiwi.testing.memory_probe.LivePeak``: what the stage adds, weights excluded)."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        if cuda(self.run):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._probe = None
        else:
            from comfy_kiwi.testing.memory_probe import LivePeak
            self._probe = LivePeak().__enter__()
        return self

    def __exit__(self, *exc):
        if self._probe is not None:
            self._probe.__exit__(*exc)
            self.allocated, self.reserved = self._probe.peak, None
        else:
            self.allocated, self.reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()

    def fields(self, predicted: int | None = None, reserve: int = 0) -> dict:
        if self.run.scale.tiny:
            return {"measured_MiB": round(self.allocated / 2 ** 20, 3)}
        out = {"measured_GiB": round(self.allocated / GiB, 3)}
        if self.reserved is not None:
            out["reserved_GiB"] = round(self.reserved / GiB, 3)
        if predicted is not None and self.reserved is not None:
            # the planner's stage peak includes a fixed reserve for the CUDA context and allocator slack
            out["predicted_GiB"] = round(predicted / GiB, 3)
            out["measured/predicted"] = round(self.allocated / max(predicted - reserve, 1), 3)
            out["reserved/predicted"] = round(self.reserved / predicted, 3)
        return out


def cap(run, gib: float) -> None:
    """Limit this process's CUDA allocations to ``gib`` GiB (a no-op on the CPU)."""
    if cuda(run):
        total = torch.cuda.get_device_properties(run.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GiB / total), run.device)


# --------------------------------------------------------------------------------------------------
def cuda_tests(run):
    """``pytest -m cuda``; names every skipped test and its reason."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text(encoding="utf-8"))
    import importlib.util
    if importlib.util.find_spec("pytest") is None:
        raise Skipped(f"pytest is not installed; {WHEELS.format(pkg='pytest')}")
    # the project's addopts need pytest-timeout, which a bare GPU machine may lack: this run sets its own
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "cuda", "-rsfE", "-p", "no:cacheprovider", *files]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(5, run.left() - 5))
    out = proc.stdout + proc.stderr
    for m in re.finditer(r"^SKIPPED \[\d+\] (\S+?): (.*)$", out, re.M):
        run.row(test=m.group(1), result="skipped", reason=m.group(2).strip())
    for m in re.finditer(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", out, re.M):
        run.row(test=m.group(2), result=m.group(1).lower(), reason=(m.group(3) or "").strip()[:300])
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected)", line)]
    run.row(test="pytest -m cuda " + " ".join(files), result=summary[-1].strip("= ") if summary else
            f"exit {proc.returncode}", reason="" if proc.returncode in (0, 5) else out[-400:])


def dit_backends(run):
    """One 5B DiT forward at the edit size per attention backend; max difference against sdpa; ours vs diffusers."""
    from comfy_kiwi.attention import _INSTALL, available_backends
    dit, forward, tokens = kiwi_dit_forward(run)
    run.tick("built the DiT")
    variants = [("sdpa", "sdpa", None)]
    if cuda(run):
        from torch.nn.attention import SDPBackend
        variants += [("sdpa (flash kernel)", "sdpa", SDPBackend.FLASH_ATTENTION),
                     ("sdpa (memory-efficient kernel)", "sdpa", SDPBackend.EFFICIENT_ATTENTION)]
    avail = available_backends(run.device)
    for name in ("xformers", "flash", "sage"):
        if name in avail:
            variants.append((name, name, None))
        else:
            why = "needs a CUDA device" if not cuda(run) else \
                f"not installed ({_INSTALL[name]}; or {WHEELS.format(pkg=PIP_NAMES[name])})"
            run.row(backend=name, status="skipped", reason=why)
    reference = None
    for label, backend, kernel in variants:
        dit.attention_backend = backend
        ctxm = nullcontext()
        if kernel is not None:
            from torch.nn.attention import sdpa_kernel
            ctxm = sdpa_kernel(kernel)
        try:
            with ctxm:
                if cuda(run):
                    forward()
                with Peak(run) as pk:
                    out, sec = timed(run, forward)
        except Exception as e:  # noqa: BLE001 - a backend that fails is a result, not the end of the check
            run.row(backend=label, status="failed", reason=f"{type(e).__name__}: {str(e)[:200]}")
            continue
        reference = out if reference is None else reference
        run.row(backend=label, status="ok", seconds=round(sec, 3), tokens=tokens,
                max_abs_diff_vs_sdpa=float((out.float() - reference.float()).abs().max()),
                rel_l2_vs_sdpa=round(rel_l2(out, reference), 5), **pk.fields())
        run.tick(label)
    del reference
    _ours_vs_diffusers(run, dit)


def _tokens(cfg, lat, ref) -> int:
    n = lat.shape[2] + (0 if ref is None else ref.shape[2])
    return n * (lat.shape[3] // cfg.patch_size[1]) * (lat.shape[4] // cfg.patch_size[2])


def _ours_vs_diffusers(run, dit):
    try:
        from diffusers import WanTransformer3DModel
    except ImportError as e:
        run.row(backend="diffusers WanTransformer3DModel", status="skipped",
                reason=f"diffusers not importable ({e}); {WHEELS.format(pkg='diffusers')}")
        return
    from comfy_kiwi.testing.tiny_dit import diffusers_kwargs, diffusers_state_dict
    with M.building(run.device):
        ref_model = WanTransformer3DModel(**diffusers_kwargs(dit.config))
    ref_model.load_state_dict(diffusers_state_dict(dit), strict=True)
    ref_model.eval().requires_grad_(False)
    run.tick("built the diffusers twin")
    cfg = dit.config
    lat, _, _, text = M.latent_inputs(cfg, run.scale.edit_size, run.scale.context, run.device, reference=False,
                                      context_width=cfg.text_dim)
    t = torch.full((1,), 500.0, device=run.device)
    dit.attention_backend = "sdpa"
    dit.context_embedding, dit.sinusoid_dtype = "text", torch.float32      # the umT5 path diffusers takes

    def ours():
        with torch.no_grad():
            return dit(lat, t, text)

    def theirs():
        with torch.no_grad():
            return ref_model(lat, t, text, return_dict=False)[0]
    a, ta = warm_timed(run, ours)
    b, tb = warm_timed(run, theirs)
    run.row(backend="ours / diffusers (umT5 path, sdpa)", status="ok", seconds=round(ta, 3),
            diffusers_seconds=round(tb, 3), ratio=round(ta / tb, 3),
            max_abs_diff_vs_diffusers=float((a.float() - b.float()).abs().max()), rel_l2=round(rel_l2(a, b), 5))


# --------------------------------------------------------------------------------------------------
def _plan(model: str, gib: float, reference: bool = True):
    """The planner's plan for the full-size run of ``model`` (the tiny run applies the same settings)."""
    from comfy_kiwi.memory.planner import plan
    w, h, f = M.FULL.edit_size if model == "wan2.2-ti2v-5b" else M.FULL.wan14b_size
    return plan(model, w, h, f, gib, reference=reference)


def _swap_count(run, n: int, dit) -> int:
    """The planner's count for the full model; at the tiny scale the same share of the tiny DiT's blocks."""
    if not run.scale.tiny:
        return n
    full = M.dit_config(M.FULL).num_layers
    return min(len(dit.blocks), -(-n * len(dit.blocks) // full)) if n else 0


def edit_under_cap(run, gib: float):
    """The whole edit, stage by stage (each stage's model on the GPU only for its stage, as the planner
    assumes), for 2 sampling steps with the settings ``plan`` picks for ``gib`` GiB; peak per stage vs plan."""
    from comfy_kiwi.memory.fp8 import quantize_dit_fp8
    from comfy_kiwi.memory.planner import RESERVE
    from comfy_kiwi.pipeline import EditPipeline, EditSettings, sample_edit
    p = _plan("wan2.2-ti2v-5b", gib)
    st = p.settings
    run.row(stage="plan", settings=f"fp8 {st['fp8']}, block swap {st['block_swap']}, VAE tiling {st['vae_tiling']}, "
            f"encoder on {st['encoder_device']}", predicted_GiB=round(p.peak / GiB, 3), fits=p.fits,
            cap_GiB=gib if cuda(run) else "none (CPU)")
    if not p.fits:
        raise Skipped(f"plan says the edit does not fit {gib} GiB")
    cpu = torch.device("cpu")
    mllm = M.build_mllm(run.scale, run.device).to(cpu)
    vae = M.build_vae(run.scale, run.device).to(cpu)        # random init is quicker on the GPU
    dit = M.build_dit(run.scale, run.device)
    if st["fp8"]:
        quantize_dit_fp8(dit)
    n_swap = _swap_count(run, st["block_swap"], dit)
    dit.to(cpu)
    torch.cuda.empty_cache() if cuda(run) else None
    run.tick("built the models")
    cap(run, gib)
    pipe = EditPipeline(dit, vae, mllm, device=run.device, offload_mllm=True)
    frames = M.video(run.scale.edit_size)
    reference = frames[0]
    predicted = {s.name.split(" (")[0]: s.peak for s in p.stages}
    enc_device = st["encoder_device"] if cuda(run) else "cpu"
    pipe.offload_mllm = enc_device == "cuda" and cuda(run)
    with Peak(run) as pk:
        cond, sec = timed(run, lambda: pipe.encode_instruction("make the sky purple", frames, reference))
    run.row(stage="MLLM encode", seconds=round(sec, 2), **pk.fields(predicted["encode"], RESERVE))
    run.tick("MLLM")
    vae.to(run.device)
    with Peak(run) as pk:
        source, sec = timed(run, lambda: pipe.encode_source(frames, reference, tiled=st["vae_tiling"]))
    run.row(stage="VAE encode", seconds=round(sec, 2), **pk.fields(predicted["VAE encode"], RESERVE))
    vae.to(cpu)
    run.tick("VAE encode")
    settings = EditSettings(steps=2, block_swap=n_swap, progress=False, kv_cache=True)
    if not n_swap:
        dit.to(run.device)
    with Peak(run) as pk:
        latents, sec = timed(run, lambda: sample_edit(dit, cond, source, settings, device=run.device))
    run.row(stage=f"DiT 2 steps (block swap {n_swap})", seconds=round(sec, 2), seconds_per_step=round(sec / 2, 2),
            **pk.fields(predicted["DiT sampling"], RESERVE))
    dit.to(cpu)
    run.tick("DiT")
    vae.to(run.device)
    with Peak(run) as pk:
        _, sec = timed(run, lambda: pipe.decode(latents, tiled=st["vae_tiling"]))
    run.row(stage="VAE decode", seconds=round(sec, 2), **pk.fields(predicted["VAE decode"], RESERVE))
    run.tick("VAE decode")
    latents = source = cond = None       # free them before the whole edit (no del: the lambdas above read them)
    _whole_edit(run, pipe, frames, reference, settings, st["vae_tiling"], p.peak)


def _whole_edit(run, pipe, frames, reference, settings, tiled: bool, predicted: int) -> None:
    """``EditPipeline.edit`` in one call, placed as ``from_pretrained`` places a release (DiT and VAE on the GPU,
    the DiT in RAM when block-swapped, the MLLM visiting the GPU to encode): is the planner's per-stage
    assumption (one stage's model at a time) what the pipeline does?"""
    from comfy_kiwi.memory.planner import RESERVE
    if run.left() < 40:
        run.row(stage="EditPipeline.edit (one call)", status="not run: too little time left in this part's box")
        return
    pipe.vae.to(run.device)
    if not settings.block_swap:
        pipe.dit.to(run.device)
    try:
        with Peak(run) as pk:
            _, sec = timed(run, lambda: pipe.edit(frames, "make the sky purple", reference,
                                                  settings.replace(vae_tiled=tiled)))
        run.row(stage="EditPipeline.edit (one call)", status="ok", seconds=round(sec, 2),
                **pk.fields(predicted, RESERVE))
    except torch.cuda.OutOfMemoryError as e:
        run.row(stage="EditPipeline.edit (one call)", status="out of memory",
                reason=str(e).splitlines()[0][:200] + " (DiT and VAE stay on the GPU while the MLLM encodes)")


def edit_24gb(run):
    edit_under_cap(run, 24)


def edit_12gb(run):
    edit_under_cap(run, 12)


def block_swap(run):
    """DiT forward time: the planner's block-swap count for 12 GiB against none, prefetch on and off."""
    from comfy_kiwi.memory.block_swap import BlockSwap
    n_plan = _plan("wan2.2-ti2v-5b", 12).settings["block_swap"] or 8
    dit, forward, _ = kiwi_dit_forward(run)
    n = _swap_count(run, n_plan, dit)
    base, t0 = warm_timed(run, forward)
    run.row(swapped=0, prefetch="-", seconds=round(t0, 3), vs_no_swap=1.0)
    run.tick("no swap")
    for prefetch in (True, False):
        swap = BlockSwap(dit, n, compute_device=run.device, prefetch=prefetch).install()
        try:
            out, sec = timed(run, forward)
        finally:
            swap.remove()
            dit.to(run.device)
        run.row(swapped=n, prefetch=prefetch, seconds=round(sec, 3), vs_no_swap=round(sec / t0, 3),
                peak_resident_GiB=round(swap.peak_resident_bytes / GiB, 3),
                uploaded_GiB=round(swap.bytes_uploaded / GiB, 3), exact=bool(torch.equal(out, base)))
        run.tick(f"prefetch {prefetch}")


def fp8(run):
    """fp8 (e4m3, per-tensor scale) block linears against bf16: velocity error and forward time."""
    from comfy_kiwi.memory.fp8 import quantize_dit_fp8
    dit, forward, _ = kiwi_dit_forward(run)
    v16, t16 = warm_timed(run, forward)
    run.row(storage="bf16", seconds=round(t16, 3))
    run.tick("bf16")
    quantize_dit_fp8(dit, "tensor")
    v8, t8 = warm_timed(run, forward)
    run.row(storage="fp8 (per-tensor scale)", seconds=round(t8, 3), vs_bf16_time=round(t8 / t16, 3),
            velocity_rel_l2_vs_bf16=round(rel_l2(v8, v16), 5))


def lora_train(run):
    """One 5B DiT-LoRA training step (480p, 81 frames, gradient checkpointing, cached context, bf16 autocast,
    reference encoded by the resident VAE) under a 24 GiB cap, against ``python -m trainer memory``."""
    from comfy_kiwi.training_lib.dit_lora_train import DiTLoraAdapter
    from trainer.memory import CUDA_OVERHEAD_GIB, estimate_kiwi_lora
    w, h, f = M.FULL.train_size
    est = estimate_kiwi_lora("wan2.2-ti2v-5b", h, w, f)
    dit = M.build_dit(run.scale, run.device)
    vae = M.build_vae(run.scale, run.device)
    adapter = DiTLoraAdapter(dit, rank=32)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    dit.gradient_checkpointing = True
    dit.train(True)
    cap(run, 24)
    cfg = dit.config
    lat, src, _, ctx = M.latent_inputs(cfg, run.scale.train_size, 1280 if not run.scale.tiny else 32, run.device)
    image = M.video(run.scale.train_size, run.device)[:1]                      # the reference image
    run.tick("built")

    def step():
        with torch.autocast(run.device.type, dtype=torch.bfloat16):
            with torch.no_grad():
                ref = vae.encode(image.permute(3, 0, 1, 2)[None].to(vae.dtype) * 2 - 1).to(torch.bfloat16)
            pred = dit(lat, torch.full((1,), 500.0, device=run.device), ctx, source_latents=src,
                       source_scale=0.5, reference_latents=ref)
        loss = (pred.float() - lat.float()).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for i in range(2):
        with Peak(run) as pk:
            _, sec = timed(run, step)
        fields = pk.fields()
        if cuda(run):
            predicted = (est.total_gib - CUDA_OVERHEAD_GIB) * GiB
            fields.update(predicted_GiB=round(est.total_gib, 3),
                          **{"measured/predicted": round(pk.allocated / predicted, 3)},
                          activations_predicted_GiB=round(est.parts["activations"], 3))
        run.row(step=i + 1, seconds=round(sec, 2), tokens=_tokens(cfg, lat, lat[:, :, :1]), **fields)
        run.tick(f"step {i + 1}")


def wan14b(run):
    """Wan2.1-T2V-14B at 832×480×81, one DiT forward in a 24 GiB cap with the planner's block swap / fp8."""
    from comfy_kiwi.memory.block_swap import BlockSwap
    from comfy_kiwi.memory.fp8 import quantize_dit_fp8
    from comfy_kiwi.memory.planner import RESERVE
    p = _plan("wan2.1-t2v-14b", 24, reference=False)
    st = p.settings
    dit = M.build_dit(run.scale, run.device, "wan2.1-t2v-14b", embedders=False)
    if st["fp8"]:
        quantize_dit_fp8(dit)
    n = _swap_count(run, st["block_swap"], dit)
    swap = BlockSwap(dit, n, compute_device=run.device).install()
    if cuda(run):
        torch.cuda.empty_cache()
    run.tick("built")
    cap(run, 24)
    cfg = dit.config
    lat, _, _, text = M.latent_inputs(cfg, run.scale.wan14b_size, 512 if not run.scale.tiny else 16, run.device,
                                      reference=False, context_width=cfg.text_dim)
    stage = next(s for s in p.stages if s.name.startswith("DiT"))
    with Peak(run) as pk, torch.no_grad():
        _, sec = timed(run, lambda: dit(lat, torch.full((1,), 500.0, device=run.device), text))
    swap.remove()
    run.row(settings=f"fp8 {st['fp8']}, block swap {n}", seconds_per_step=round(sec, 2),
            tokens=_tokens(cfg, lat, None), **pk.fields(stage.peak, RESERVE))


PARTS = {  # name: (function, its time box in seconds on the GPU; the boxes add up to the default 480 s budget)
    "cuda_tests": (cuda_tests, 40),
    "dit_backends": (dit_backends, 80),
    "edit_24gb": (edit_24gb, 100),
    "edit_12gb": (edit_12gb, 100),
    "block_swap": (block_swap, 40),
    "fp8": (fp8, 30),
    "lora_train": (lora_train, 50),
    "wan14b": (wan14b, 40),
}
