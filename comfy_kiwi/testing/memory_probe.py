"""Measured activation memory of a Wan DiT on any device (the CPU included), for checking the estimates.

``LivePeak`` is a dispatch mode that sees every tensor an aten op returns while it is active and keeps a
running sum of the bytes of their (distinct) storages, minus those freed: the same accounting a
caching allocator does, without its rounding and without kernels' private workspaces. Tensors that
existed before (weights, inputs) are not counted, so the peak is what a forward / training step adds.

``dit_inference_peak`` and ``lora_training_peak`` run the real ``WanDiT`` (and the trainer's
``DiTLoraAdapter``) at a chosen width and token count; ``comfy_kiwi.memory.planner`` and
``trainer.memory`` are tested against them (tests/test_memory_estimates.py).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LivePeak(TorchDispatchMode):
    """``with LivePeak() as m: work()`` → ``m.peak`` (bytes), ``m.live`` (bytes still held at the end)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size == 0 or key in self._sizes or key in inputs:     # a view, or an in-place result
                    continue
                self._sizes[key] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def _dit(config, dtype, device, seed: int = 0):
    from ..models.wan_dit import WanDiT
    torch.manual_seed(seed)
    dit = WanDiT(config).attach_condition_embedders(zero_init=False).to(device, dtype)
    dit.context_embedding = "none"
    return dit.requires_grad_(False)


def _inputs(config, frames: int, height: int, width: int, context: int, dtype, device, batch: int = 1):
    """Latents, source, one reference frame and a DiT-wide context (the Kiwi MLLM path)."""
    g = torch.Generator().manual_seed(1)
    shape = (batch, config.in_dim, frames, height, width)
    lat, src = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(2))
    ref = torch.randn((batch, config.in_dim, 1, height, width), generator=g).to(device, dtype)
    ctx = torch.randn((batch, context, config.dim), generator=g).to(device, dtype)
    return lat, src, ref, ctx


def tokens_of(config, frames: int, height: int, width: int, reference: bool = True) -> int:
    pt, ph, pw = config.patch_size
    return (frames // pt + (1 if reference else 0)) * (height // ph) * (width // pw)


def dit_inference_peak(config, frames: int, height: int, width: int, context: int = 64,
                       dtype=torch.bfloat16, device="cpu", batch: int = 1) -> int:
    """Peak bytes one ``torch.no_grad`` DiT forward adds (latent grid ``frames × height × width``, one
    reference frame, ``context`` context tokens), measured with :class:`LivePeak`."""
    dit = _dit(config, dtype, device)
    lat, src, ref, ctx = _inputs(config, frames, height, width, context, dtype, device, batch)
    with torch.no_grad(), LivePeak() as m:
        out = dit(lat, torch.full((batch,), 500.0, device=device), ctx, source_latents=src, source_scale=0.5,
                  reference_latents=ref)
    del out
    return m.peak


def lora_training_peak(config, frames: int, height: int, width: int, context: int = 64, rank: int | None = 8,
                       device="cpu", checkpointing: bool = True) -> int:
    """Peak bytes of one LoRA training step on a frozen bf16 DiT (bf16 autocast, fp32 LoRA, gradient
    checkpointing as the kiwi-lora preset), forward + backward, measured with :class:`LivePeak`. The LoRA
    gradients are included (they are counted apart in the estimate; at test widths they are tiny).
    ``rank=None``: no LoRA; the patch embedding trains instead, so the gradient crosses every frozen block
    (the blocks' own backward sets, as under a method that trains modules beside the DiT)."""
    from ..training_lib.dit_lora_train import DiTLoraAdapter
    dit = _dit(config, torch.bfloat16, device)
    adapter = None
    if rank is None:
        dit.patch_embedding.requires_grad_(True)
    else:
        adapter = DiTLoraAdapter(dit, rank=rank)
        with torch.no_grad():
            for pair in adapter.pairs:             # B = 0 at init would leave some gradients trivially zero
                pair.lora_B.normal_(0, 0.01)
    dit.gradient_checkpointing = checkpointing
    dit.train(True)
    lat, src, ref, ctx = _inputs(config, frames, height, width, context, torch.bfloat16, device)
    with LivePeak() as m:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            pred = dit(lat, torch.full((1,), 500.0, device=device), ctx, source_latents=src, source_scale=0.5,
                       reference_latents=ref)
        loss = (pred.float() - lat.float()).pow(2).mean()
        loss.backward()
        del pred, loss
    if adapter is not None:
        adapter.detach()
    return m.peak


def vae_peaks(config, frames: int, height: int, width: int) -> tuple[int, int]:
    """(encode, decode) peak bytes of a bf16 VAE with ``config`` on the CPU, measured with :class:`LivePeak`;
    the encode's count includes the bf16 input video, made inside (as the pipeline puts it on the device)."""
    from ..models.wan_vae import WanVAE
    with torch.device("meta"):                 # values do not change memory: skip the slow random init
        vae = WanVAE(config)
    vae = vae.to_empty(device="cpu").to(torch.bfloat16).eval().requires_grad_(False)
    with torch.no_grad():
        for t in (*vae.parameters(), *vae.buffers()):
            t.fill_(0.01)
    g = torch.Generator().manual_seed(1)
    video = torch.rand((1, 3, frames, height, width), generator=g)
    with torch.no_grad(), LivePeak() as enc:
        z = vae.encode(video.to(torch.bfloat16) * 2 - 1)
    with torch.no_grad(), LivePeak() as dec:
        out = vae.decode(z)
    del out
    return enc.peak, dec.peak
