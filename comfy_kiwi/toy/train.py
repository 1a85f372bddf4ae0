"""An in-memory driver of the toy Kiwi training: the Kiwi-Edit curriculum and numerics at toy size, without
files, caches or a process per stage — fast enough for the benchmark's ablations. The shipped model is
trained by the project's trainer (``trainer/presets/toy-kiwi-stage{1,2,3,4}.toml``); tests/test_toy_trainer.py
checks that this driver's loss and gradients equal the trainer's on the same batch and draws.

Numerics are the project's Kiwi-Edit training functions (``comfy_kiwi.training_lib.kiwi_numerics``):
timestep ids uniform over the shifted 1000-step schedule, bf16-rounded t and its σ, x_t = (1−σ)x0 + σε,
target ε − x0, Gaussian loss weights, AdamW (wd 0.01), ConstantLR warm-up; datasets interleaved by
``MixSchedule`` with gradient accumulation = number of datasets (one micro-batch per dataset per step,
the release's round robin; weights give the paper's ratios).

The curriculum keeps Kiwi's data stages — 1) image pairs, 2) image + video 1:1, 3) image + video +
reference 2:1:1 — with one deviation the toy needs: nothing here is pretrained, so the DiT and the
whole small language model train from stage 1 on (Kiwi freezes a pretrained DiT in stage 1 and trains
a LoRA on a pretrained Qwen). The learning rate decays linearly over the last ``decay`` share of steps.
A settling stage follows (not in Kiwi): stage 3's data at the final lr, with the edit-region weight capped so
that edits keep what they must not paint over (docs/TOY_BENCHMARK.md, rounds 5 and 6).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from ..errors import InputError
from ..training_lib.kiwi_numerics import (LOSS_WEIGHTINGS, MixSchedule, constant_lr_warmup, edit_region_weight,
                                          kiwi_loss, linear_tail, noisy_and_target, sample_timestep_ids,
                                          timestep_and_sigma, timestep_loss_weight)
from .data import DATASETS, dataset_examples, encode_contexts, prepare_samples, stack
from .models import ToyModelConfig, build_toy_dit, build_toy_mllm
from .source_modes import check_source_mode, dit_velocity, prepare_dit

KIWI_STAGES = ((("image",), None), (("image", "video"), (1, 1)), (("image", "video", "reference"), (2, 1, 1)))


class ToyStage(NamedTuple):
    datasets: tuple[str, ...]
    weights: tuple | None               # mix ratios (None: one dataset)
    steps: int
    keep_share: float = 0.0             # edit-region cap: unchanged cells keep ≥ this share of each sample's loss
    settle: bool = False                # the settling stage: constant lr, the curriculum's final one


@dataclass
class ToyTrainConfig:
    steps: int = 3000                   # optimizer steps of the three curriculum stages (the toy presets)
    stage_shares: tuple = (0.15, 0.35, 0.5)
    batch: int = 8                      # samples per micro-batch
    lr: float = 2e-3
    weight_decay: float = 0.01
    decay: float = 0.3                  # share of the last steps over which the lr falls linearly to 5 %
    source_mode: str = "sigma_add"
    datasets: tuple = ("image", "video", "reference")   # drop "image" for the no-co-training ablation
    pool: int = 1000                    # training examples per dataset (seed split "train")
    shift: float = 5.0
    loss_weighting: str = "uniform"     # "kiwi" (Gaussian in t, the release) or "uniform" (the toy presets)
    edit_region_weight: float = 30.0    # changed latent cells weigh 1 + this (the toy presets; 0 = the papers' mean)
    settle_share: float = 0.2           # settling stage after the curriculum: this share of ``steps`` more (0: none)
    settle_keep_share: float = 0.8      # ... its edit-region cap: unchanged cells keep ≥ this share of a sample's loss
    embedder_init: str = "random"       # source/reference embedders and connector outputs: "zero" (Kiwi) or "random"
    seed: int = 0
    threads: int = 2
    model: ToyModelConfig = field(default_factory=ToyModelConfig)

    def __post_init__(self):
        check_source_mode(self.source_mode)
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown or not self.datasets:
            raise InputError(f"toy training datasets must be a non-empty subset of {list(DATASETS)}, got "
                             f"{list(self.datasets)}.")
        if self.loss_weighting not in LOSS_WEIGHTINGS or self.embedder_init not in ("zero", "random"):
            raise InputError(f"loss_weighting must be kiwi/uniform and embedder_init zero/random, got "
                             f"{self.loss_weighting!r}, {self.embedder_init!r}.")
        if self.edit_region_weight < 0 or not 0 <= self.settle_keep_share < 1 or self.settle_share < 0:
            raise InputError(f"edit_region_weight and settle_share must be ≥ 0 (0 = the papers' plain mean; no "
                             f"settling stage) and settle_keep_share in [0, 1), got {self.edit_region_weight!r}, "
                             f"{self.settle_share!r}, {self.settle_keep_share!r}.")
        if len(self.stage_shares) != 3 or abs(sum(self.stage_shares) - 1) > 1e-6:
            raise InputError(f"stage_shares needs three shares summing to 1, got {self.stage_shares}.")

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages())

    def stages(self) -> list[ToyStage]:
        """The curriculum's stages restricted to ``datasets`` (stages left without data give their steps to
        the next stage), then the settling stage on the last stage's data."""
        out, carry = [], 0
        for (names, weights), share in zip(KIWI_STAGES, self.stage_shares):
            keep = [i for i, n in enumerate(names) if n in self.datasets]
            steps = int(round(share * self.steps)) + carry
            if not keep:
                carry = steps
                continue
            carry = 0
            w = None if weights is None else tuple(weights[i] for i in keep)
            out.append(ToyStage(tuple(names[i] for i in keep), w, steps))
        if carry:       # datasets only of earlier stages (e.g. image only): they take the rest
            out[-1] = out[-1]._replace(steps=out[-1].steps + carry)
        settle = int(round(self.settle_share * self.steps))
        if settle:
            out.append(out[-1]._replace(steps=settle, keep_share=self.settle_keep_share, settle=True))
        return out


@dataclass
class ToyModels:
    dit: torch.nn.Module
    encoder: torch.nn.Module
    source_mode: str = "sigma_add"


def build_models(cfg: ToyTrainConfig) -> ToyModels:
    dit = build_toy_dit(cfg.model, cfg.seed)
    encoder = build_toy_mllm(cfg.model, cfg.seed)
    prepare_dit(dit, cfg.source_mode)
    if cfg.embedder_init == "random":
        # Kiwi zero-initialises the embedders and the connectors' last layers so a pretrained DiT starts
        # unchanged; toy models trained from scratch have nothing to keep, and live source and
        # instruction paths from step 0 learn much sooner (zero paths left the DiT hedging for hundreds
        # of steps between "copy the source" and the average edit).
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(cfg.seed + 1)
            layers = [dit.source_embedder.patch_embedding, dit.ref_embedder.patch_embedding, encoder.connector[2]]
            if encoder.ref_connector is not None:
                layers.append(encoder.ref_connector[2])
            for layer in layers:
                layer.weight.copy_(torch.randn_like(layer.weight) / layer.weight[0].numel() ** 0.5)
            if dit.source_mixer is not None:    # VIVA's P = [I | 0] likewise starts the source path closed
                right = dit.source_mixer.projector.weight[:, dit.config.dim:]
                right.copy_(torch.randn_like(right) / dit.config.dim ** 0.5)
    return ToyModels(dit, encoder, cfg.source_mode)


def _lr_factor(step: int, total: int, decay: float) -> float:
    return constant_lr_warmup(step) * linear_tail(step, total, decay)


def training_loss(models: ToyModels, samples, generator: torch.Generator, shift: float,
                  weighting: str = "kiwi", edit_region: float = 0.0, keep_share: float = 0.0) -> torch.Tensor:
    """Kiwi flow-matching loss of one micro-batch (samples of one dataset); ``edit_region`` > 0 weighs the
    latent cells the edit changes 1 + that (``edit_region_weight``, capped by ``keep_share``)."""
    x0 = stack(samples, "target")
    source = stack(samples, "source")
    ids = sample_timestep_ids(x0.shape[0], generator)
    t, sigma = timestep_and_sigma(ids, shift)
    noise = torch.randn(x0.shape, generator=generator)
    x_t, target = noisy_and_target(x0, noise, sigma)
    ctx = encode_contexts(models.encoder, samples)
    pred = dit_velocity(models.dit, x_t, t, sigma, ctx, source, stack(samples, "reference"), models.source_mode)
    region = edit_region_weight(x0, source, edit_region, keep_share=keep_share) if edit_region else None
    return kiwi_loss(pred, target, timestep_loss_weight(t, shift, weighting), region)


def train(cfg: ToyTrainConfig, log=print, on_eval=None, eval_every: int = 0, models: ToyModels | None = None):
    """Train toy models; returns (models, history). ``on_eval(step, models)`` runs every ``eval_every``
    optimizer steps and after the last (its return values are kept in the history)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    models = models or build_models(cfg)
    dit, enc = models.dit, models.encoder
    dit.train()
    enc.train()
    enc.model.requires_grad_(True)       # no pretrained language model to keep: train it whole
    params = [p for p in list(dit.parameters()) + list(enc.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    pools = {name: prepare_samples(dataset_examples(name, "train", cfg.pool), enc) for name in cfg.datasets}
    g = torch.Generator().manual_seed(cfg.seed)
    history, step, t0 = [], 0, time.time()
    if on_eval is not None and eval_every:
        history.append({"step": 0, "seconds": 0.0, "eval": on_eval(0, models)})
    total = cfg.total_steps
    for stage in cfg.stages():
        names = stage.datasets
        mix = MixSchedule([cfg.pool * 1000] * len(names), stage.weights)
        picks = iter(mix)
        for _ in range(stage.steps):
            lr_step = cfg.steps if stage.settle else step         # settling keeps the curriculum's final lr
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(lr_step, cfg.steps, cfg.decay)
            opt.zero_grad(set_to_none=True)
            losses = {}
            for _ in range(mix.grad_accumulation):
                d, _item = next(picks)
                pool = pools[names[d]]
                idx = torch.randint(len(pool), (cfg.batch,), generator=g).tolist()
                loss = training_loss(models, [pool[i] for i in idx], g, cfg.shift, cfg.loss_weighting,
                                     cfg.edit_region_weight, stage.keep_share)
                (loss / mix.grad_accumulation).backward()
                losses[names[d]] = float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % 50 == 0 or step == 1:
                log(f"step {step}/{total} stage {'+'.join(names)} loss "
                    + " ".join(f"{k} {v:.4f}" for k, v in losses.items()) + f" ({time.time() - t0:.0f}s)")
            if on_eval is not None and eval_every and (step % eval_every == 0 or step == total):
                history.append({"step": step, "seconds": time.time() - t0, "eval": on_eval(step, models)})
    dit.eval()
    enc.eval()
    enc.model.requires_grad_(False)
    return models, {"config": _config_dict(cfg), "seconds": time.time() - t0, "history": history}


def _config_dict(cfg: ToyTrainConfig) -> dict:
    d = asdict(cfg)
    d["stages"] = [stage._asdict() for stage in cfg.stages()]
    return d
