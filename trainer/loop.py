"""The training loop: accelerate (CPU, one GPU, DDP; FSDP/DeepSpeed through ``accelerate config``),
gradient accumulation, AdamW with linear warm-up then constant (or Kiwi's ConstantLR), several datasets
mixed round robin (or by weights), initial weights from a previous stage, metrics, atomic checkpoints,
exact resume, sample edits, an optional EMA of the trained weights (trainer/ema.py).

Exactness of resume: data order is a pure function of (seed, position) (trainer/data/order.py), and the
random draws of a sample (noise level, noise, reference scale, …) come from a generator seeded with
(seed, global sample index) — the sample's place in the stream of global batches, the same whichever rank
holds it — so 2 processes × batch 1 train exactly as 1 process × batch 2; optimiser, scheduler and RNG states
are restored from the checkpoint.

Run length: ``schedule.max_steps`` is the schedule (LR tail, final export); ``schedule.stop_at`` (the CLI's
``--max-steps``) ends a run earlier with a resumable checkpoint and leaves the schedule as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

import torch

from comfy_kiwi.errors import InputError

from .checkpoint import find_checkpoint, load_checkpoint, load_init_state, save_checkpoint, set_rng_states
from .data.cache import CachedDataset, build_cache, to_device
from .data.datasets import read_records
from .data.order import BatchOrder, MixedOrder
from .ema import WeightEMA
from .methods import get_method
from .metrics import MetricsLog


def warmup_then_constant(warmup_steps: int):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def lr_lambda(schedule):
    """The LR multiplier per optimiser step for ``schedule.lr_schedule`` (× the ``decay_share`` tail)."""
    from comfy_kiwi.training_lib.kiwi_numerics import constant_lr_warmup, linear_tail
    # kiwi_constant: torch ConstantLR defaults, 1/3 for steps 0..4, then 1
    head = constant_lr_warmup if schedule.lr_schedule == "kiwi_constant" else warmup_then_constant(schedule.warmup_steps)
    if not schedule.decay_share:
        return head
    return lambda step: head(step) * linear_tail(step, schedule.max_steps, schedule.decay_share)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of global sample ``index``'s draws (a hash, so nearby seeds and indices do not overlap)."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_indices(position: int, rank: int, batch_size: int, world: int) -> list[int]:
    """Global indices of the samples rank ``rank`` holds in micro-batch ``position``: global batch p is
    samples p·B·W … p·B·W + B·W − 1 and rank r holds slice r of it (trainer/data/order.py)."""
    first = (position * world + rank) * batch_size
    return list(range(first, first + batch_size))


def _averaged(ema: WeightEMA | None):
    """The EMA weights swapped in for the block (raw weights after), or nothing without an EMA."""
    return contextlib.nullcontext() if ema is None else ema.swapped_in()


def _loaders(cfg, device):
    def vae():
        from comfy_kiwi.loading.vae_loader import load_vae
        return load_vae(cfg.model.vae, dtype=torch.float32, device=device)

    def text():
        from comfy_kiwi.text_encoders.umt5 import UMT5TextEncoder
        return UMT5TextEncoder(cfg.model.text_encoder, device=device, max_length=cfg.data.text_len)
    return vae, text


def _save_samples(cfg, method, module, dataset, step, vae_loader, device) -> list[Path]:
    from comfy_kiwi.frames import tensor_to_pil, vae_to_frames
    vae = vae_loader()
    out = []
    for i in range(min(cfg.sampling.count, len(dataset))):
        batch = to_device(method.collate([dataset[i]]), device)
        latents = method.sample(module, batch, cfg.sampling.steps, cfg.sampling.shift, cfg.sampling.seed)
        frames = vae_to_frames(vae.decode(latents.float()).cpu())
        path = cfg.output_dir / "samples" / f"step-{step:08d}-item{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor_to_pil(frames[0]).save(path)
        out.append(path)
    return out


def train(cfg, resume: str | None = None, stop_after: int | None = None, log=print) -> dict:
    """Run (or continue) training. ``stop_after`` ends the run after that many optimiser steps without a final
    checkpoint (tests use it to play a killed run). Returns {"step", "losses", "output_dir"}."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    method_cls = get_method(cfg.method.name)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=method_cls.find_unused_parameters)
    acc = Accelerator(mixed_precision=cfg.precision.mixed, kwargs_handlers=[ddp])
    say = log if acc.is_main_process else (lambda *a, **k: None)
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    torch.manual_seed(cfg.schedule.seed)

    method = method_cls(cfg)
    method.device = device                   # where cache_item's encoders run
    vae_loader, text_loader = _loaders(cfg, device)
    datasets, orders = [], []
    for i, spec in enumerate(cfg.dataset_specs()):
        records = read_records(spec.dataset, spec.format, spec.base_path)
        with acc.main_process_first():
            cache = build_cache(records, cfg, vae_loader, text_loader, log=say, method=method, spec=spec)
        datasets.append(CachedDataset(cache))
        # each dataset its own seed stream, so adding a dataset does not reorder the others
        orders.append(BatchOrder(datasets[-1].buckets, cfg.schedule.batch_size, world, cfg.schedule.seed + 7919 * i))
    order = MixedOrder(orders, cfg.data.mix_weights or None)
    dataset = datasets[0]

    module = method.place(method.build(method.load_models(cfg, device)), device)
    if cfg.checkpoint.init_from:
        method.load_init_state(module, {k: v.to(device) for k, v in load_init_state(cfg.checkpoint.init_from).items()})
        say(f"initialised trainable weights from {cfg.checkpoint.init_from}")
    params = method.trainable_parameters(module)
    if not params:
        raise InputError(f"method {cfg.method.name} has no trainable parameters.")
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                                  weight_decay=opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule))
    ema = WeightEMA(params, opt.ema_decay) if opt.ema_decay else None

    step, position = 0, 0
    ckpt_path = find_checkpoint(cfg.output_dir, resume)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if ema is not None and ckpt["ema"] is not None:      # the saved average, then the raw weights on top
            method.load_trainable_state_dict(module, {k: v.to(device) for k, v in ckpt["ema"].items()})
            ema.reset_from_params()
            ema.updates = ckpt["state"]["step"]
        method.load_trainable_state_dict(module, {k: v.to(device) for k, v in ckpt["trainable"].items()})
        if ema is not None and ckpt["ema"] is None:          # EMA switched on for a run saved without one
            ema.reset_from_params()
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_states(ckpt["rng"])
        step, position = ckpt["state"]["step"], ckpt["state"]["position"]
        say(f"resumed from {ckpt_path} at step {step}")
    wrapped, optimizer = acc.prepare(module, optimizer)

    metrics = MetricsLog(cfg.output_dir / "metrics.jsonl", cfg.logging.tensorboard,
                         resume_step=step if ckpt_path is not None else None) if acc.is_main_process else None
    bar = None
    if cfg.logging.progress and acc.is_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.schedule.max_steps, initial=step, desc="training", dynamic_ncols=True)

    losses, accum, last = [], cfg.schedule.grad_accum or len(datasets), stop_after
    end = min(cfg.schedule.stop_at, cfg.schedule.max_steps) if cfg.schedule.stop_at else cfg.schedule.max_steps
    t0 = time.time()
    while step < end:
        total = torch.zeros((), device=device)
        for micro in range(accum):
            d, indices = order.batch(position, rank)
            items = [datasets[d][i] for i in indices]
            generators = [sample_generator(cfg.schedule.seed, g)
                          for g in sample_indices(position, rank, cfg.schedule.batch_size, world)]
            position += 1
            batch = to_device(method.collate(items), device)
            draws = method.sample_draws(items, generators)
            sync = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(wrapped)
            with sync, acc.autocast():
                loss = wrapped(batch, draws)
                acc.backward(loss / accum)
            total += loss.detach().float() / accum
        if opt.max_grad_norm:
            acc.clip_grad_norm_(params, opt.max_grad_norm)
        lr = scheduler.get_last_lr()[0]          # the rate this step used
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        mean_loss = acc.reduce(total, "mean").item()
        losses.append(mean_loss)
        extra = method.step_metrics(acc.unwrap_model(wrapped))      # read every step: numbers of this step only
        if metrics is not None and step % cfg.logging.every == 0:
            metrics.log(step, {"loss": mean_loss, "lr": lr,
                               "seconds": round(time.time() - t0, 3), **extra})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if step % cfg.checkpoint.every == 0 or step == end:
            acc.wait_for_everyone()
            if acc.is_main_process:
                unwrapped = acc.unwrap_model(wrapped)
                save_checkpoint(cfg.output_dir, step, method.trainable_state_dict(unwrapped),
                                optimizer, scheduler, {"position": position, "config": cfg.source},
                                keep=cfg.checkpoint.keep, ema=None if ema is None else ema.state(method, unwrapped))
        if cfg.sampling.every and step % cfg.sampling.every == 0 and acc.is_main_process:
            with _averaged(ema):
                _save_samples(cfg, method, acc.unwrap_model(wrapped), dataset, step, vae_loader, device)
        if last is not None and step >= last:
            break
    if bar is not None:
        bar.close()
    if metrics is not None:
        metrics.close()
    acc.wait_for_everyone()
    if step >= cfg.schedule.max_steps and acc.is_main_process:
        with _averaged(ema):                                 # the final file holds the EMA weights when kept
            for path in method.save_final(acc.unwrap_model(wrapped), cfg.output_dir):
                say(f"saved {path}")
    elif step >= end:
        say(f"stopped at step {step} of {cfg.schedule.max_steps} (schedule.stop_at); resume with --resume auto")
    return {"step": step, "losses": losses, "output_dir": cfg.output_dir, "module": acc.unwrap_model(wrapped)}
