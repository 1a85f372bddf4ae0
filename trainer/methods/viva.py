"""VIVA supervised training: VLM instructor (frozen Qwen2.5-VL, last hidden states, cached) → trainable token
refiner (timestep-aware, runs every step) → Wan DiT cross-attention; channel-concat source conditioning
(VIVA eq. 2); the reference image's VAE latents as extra tokens beside the noisy ones (Fig. 2; rows with a
``ref_image``); masked flow-matching loss (1 + w_m·M)·L with the dataset's ``mask`` column (none → plain loss).

Condition dropout: with probability ``condition_dropout`` a sample's instructor hidden states are replaced by
the encoding of the *empty* instruction with the same first frame and reference (cached beside the real one),
so the negative branch of VIVA's instruction-only CFG 2.0 at inference is a trained condition.

The model side lives in comfy_kiwi.methods (viva, viva_refiner, viva_source, viva_loss) and
comfy_kiwi.mllm.instructor; this class wires it to the loop. Output: ``viva.safetensors`` (``refiner.*``,
``source_mixer.*``; what ``comfy_kiwi.methods.viva.load_viva`` and the Kiwi VIVA Loader node read) and, with
``train_dit``, ``viva-dit.safetensors`` (the fine-tuned DiT in the original key layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from comfy_kiwi.dtypes import parse_dtype
from comfy_kiwi.errors import InputError
from comfy_kiwi.methods import viva
from comfy_kiwi.methods.viva_loss import POOLS, masked_flow_matching_loss
from comfy_kiwi.sampling import sigma_to_timestep

from .base import TrainingMethod, TrainModule, noised
from .dit_state import load_dit_entries, save_dit

SOURCE_MODES = ("concat", "none")


@dataclass
class VivaOptions:
    refiner_depth: int = 2                 # HunyuanVideo's refiner depth (VIVA's refiner design)
    refiner_heads: int = 0                 # 0 = the DiT's head count
    source_conditioning: str = "concat"    # "concat": VIVA eq. 2; "none": no source latents (ablation)
    mask_weight: float = 1.0               # w_m of (1 + w_m·M)·L (value ours; see docs/METHODS.md)
    mask_pool: str = "max"                 # how the cached mask is pooled if it is not on the latent grid
    train_dit: bool = True                 # fine-tune the whole DiT with the refiner and projector (VIVA)
    reference_tokens: bool = True          # rows with a ref_image: its VAE latents join the noisy tokens (Fig. 2)
    condition_dropout: float = 0.1         # P(empty instruction) per sample, trains the CFG negative (rate ours)
    system_prompt: str = ""                # "" = comfy_kiwi.mllm.instructor.VIVA_SYSTEM_PROMPT


class VivaModule(TrainModule):
    def __init__(self, dit, refiner, options: VivaOptions):
        super().__init__()
        self.dit, self.refiner, self.options = dit, refiner, options

    def context(self, batch: dict, t: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The refined context at the batch's timesteps t = 1000σ: the refiner runs with each step's t. Samples
        with ``drop`` True read the empty instruction's hidden states instead (condition dropout)."""
        hidden, mask = dropped_condition(batch, drop)
        return self.refiner.refine(hidden, t, mask)

    def predict(self, x_t, t, context, batch) -> torch.Tensor:
        dtype = self.dit.dtype
        src = batch["source"].to(dtype) if self.options.source_conditioning == "concat" else None
        ref = batch.get("reference_latents") if self.dit.ref_embedder is not None else None
        return self.dit(x_t.to(dtype), t, context.to(dtype), source_latents=src,
                        reference_latents=None if ref is None else ref.to(dtype))

    def forward(self, batch: dict, draws: dict) -> torch.Tensor:
        x0 = batch["target"].float()
        noise, sigma = draws["noise"].to(x0.device), draws["sigma"].to(x0.device)
        t = sigma_to_timestep(sigma, dtype=self.dit.dtype)
        pred = self.predict(noised(x0, noise, sigma), t, self.context(batch, t, draws.get("drop")), batch)
        return masked_flow_matching_loss(pred, noise - x0, batch.get("mask"), self.options.mask_weight,
                                         self.options.mask_pool)


def dropped_condition(batch: dict, drop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, mask) of the batch with the rows where ``drop`` is True taken from the empty instruction."""
    hidden, mask = batch["vlm_hidden"], batch["vlm_mask"]
    if drop is None or not bool(drop.any()):
        return hidden, mask
    d = drop.to(hidden.device).bool()
    return (torch.where(d[:, None, None], batch["vlm_hidden_null"], hidden),
            torch.where(d[:, None], batch["vlm_mask_null"], mask))


def pad_hidden(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Instructor hidden states of different lengths [1, L_i, C] → ([B, L, C] zero-padded, mask [B, L])."""
    n = max(r.shape[1] for r in rows)
    out = rows[0].new_zeros(len(rows), n, rows[0].shape[-1])
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, :r.shape[1]] = r[0]
        mask[i, :r.shape[1]] = True
    return out, mask


class VivaMethod(TrainingMethod):
    name = "viva"
    Options = VivaOptions
    required_models = ("dit", "vae", "mllm")
    context_encoder = None                 # the instructor's hidden states are cached by cache_item

    @classmethod
    def parse_options(cls, table):
        o = super().parse_options(table)
        if o.source_conditioning not in SOURCE_MODES:
            raise InputError(f"method.options.source_conditioning is {o.source_conditioning!r}; choose one of "
                             f"{', '.join(SOURCE_MODES)}.")
        if o.mask_pool not in POOLS:
            raise InputError(f"method.options.mask_pool is {o.mask_pool!r}; choose one of {', '.join(POOLS)}.")
        if o.mask_weight < 0 or o.refiner_depth < 1 or o.refiner_heads < 0:
            raise InputError("method.options: mask_weight ≥ 0, refiner_depth ≥ 1 and refiner_heads ≥ 0 are required.")
        if not 0 <= o.condition_dropout < 1:
            raise InputError(f"method.options.condition_dropout is {o.condition_dropout}; give a probability in [0, 1).")
        return o

    # --- data -------------------------------------------------------------------------------------------
    def cache_signature(self) -> dict:
        return {"instructor": "qwen-last-hidden+empty", "preset": self.cfg.model.mllm_preset,
                "system_prompt": self.options.system_prompt, "reference_tokens": self.options.reference_tokens}

    def cache_model_files(self) -> list[str]:
        return [self.cfg.model.mllm]

    def instructor(self, device):
        from comfy_kiwi.mllm.instructor import VIVA_SYSTEM_PROMPT, VivaInstructor
        from comfy_kiwi.mllm.loader import load_mllm_encoder
        enc = load_mllm_encoder(self.cfg.model.mllm, dtype=parse_dtype(self.cfg.model.dtype), device=device,
                                preset=self.cfg.model.mllm_preset)
        return VivaInstructor(enc, self.options.system_prompt or VIVA_SYSTEM_PROMPT)

    def cache_item(self, record, pixels, size, encoders) -> dict:
        from comfy_kiwi.frames import frames_to_vae, load_image, pad_reference
        frames = (pixels["source"][0].permute(1, 2, 3, 0).float() + 1) / 2            # [F, H, W, 3]
        ref = load_image(record.reference) if record.reference else None
        inst = encoders.get("viva_instructor", lambda: self.instructor(getattr(self, "device", "cpu")))
        out = {}
        with torch.no_grad():
            (hidden, _), (null, _) = inst.encode_pair(record.prompt, frames, ref)
            if ref is not None and self.options.reference_tokens:
                # as Kiwi Encode Source does at inference: the reference fitted onto a white canvas of the video size
                vae = encoders.get("vae")
                pixels = frames_to_vae(pad_reference(ref, size[0], size[1])).to(vae.device, vae.dtype)
                out["reference_latents"] = vae.encode(pixels).float().cpu()          # [1, C, 1, h, w]
        return {**out, "vlm_hidden": hidden.float().cpu(), "vlm_hidden_null": null.float().cpu()}   # [1, L, C]

    def collate(self, items):
        from ..data.cache import collate
        refs = sum("reference_latents" in it for it in items)
        if refs not in (0, len(items)):
            raise InputError("a batch mixes items with and without a reference image; use schedule.batch_size = 1 "
                             "or a dataset whose rows all have (or all lack) ref_image.")
        n = len(items)
        # condition and empty instruction padded to one length, so dropout can swap rows
        hidden, mask = pad_hidden([it["vlm_hidden"] for it in items] + [it["vlm_hidden_null"] for it in items])
        own = ("vlm_hidden", "vlm_hidden_null")
        batch = collate([{k: v for k, v in it.items() if k not in own} for it in items], self.cfg.data.text_len)
        batch["vlm_hidden"], batch["vlm_mask"] = hidden[:n], mask[:n]
        batch["vlm_hidden_null"], batch["vlm_mask_null"] = hidden[n:], mask[n:]
        return batch

    def draws(self, batch, generator) -> dict:
        out = super().draws(batch, generator)
        out["drop"] = torch.rand(batch["target"].shape[0], generator=generator) < self.options.condition_dropout
        return out

    # --- model ------------------------------------------------------------------------------------------
    def instructor_width(self) -> int:
        from comfy_kiwi.mllm.loader import describe_mllm
        info = describe_mllm(self.cfg.model.mllm) or {}
        width = (info.get("qwen") or {}).get("hidden_size")
        if not width:
            raise InputError(f"model.mllm {self.cfg.model.mllm}: no Qwen2.5-VL config with a hidden_size found.")
        return int(width)

    def load_models(self, cfg, device) -> dict:
        models = super().load_models(cfg, device)
        models["in_dim"] = self.instructor_width()
        return models

    def _has_reference(self) -> bool:
        from ..data.datasets import read_records
        return any(r.reference for s in self.cfg.dataset_specs() for r in read_records(s.dataset, s.format, s.base_path))

    def build(self, models: dict) -> VivaModule:
        o, dit = self.options, models["dit"]
        dit.requires_grad_(o.train_dit)
        refiner = viva.attach_viva(dit, models["in_dim"], o.refiner_heads or None, o.refiner_depth,
                                   concat_source=o.source_conditioning == "concat",
                                   reference=o.reference_tokens and self._has_reference())
        master = parse_dtype(self.cfg.precision.adapter_dtype)
        refiner.to(master).requires_grad_(True).train()
        for part in (dit.source_mixer, dit.ref_embedder):
            if part is not None:
                part.to(master).requires_grad_(True)
        if o.train_dit:
            dit.text_embedding.requires_grad_(False)        # unused on the refined-context path
        dit.gradient_checkpointing = self.cfg.precision.gradient_checkpointing
        dit.train(self.cfg.precision.gradient_checkpointing or o.train_dit)
        return VivaModule(dit, refiner, o)

    # --- state ------------------------------------------------------------------------------------------
    def trainable_state_dict(self, module) -> dict[str, torch.Tensor]:
        out = viva.viva_state_dict(module.dit, module.refiner)
        if self.options.train_dit:
            out.update({"dit." + k: v for k, v in module.dit.state_dict().items()
                        if not k.startswith((viva.MIXER_PREFIX, viva.REF_PREFIX))})
        return out

    def load_trainable_state_dict(self, module, state) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("dit.")}
        viva.load_viva_state(module.dit, module.refiner, own, "checkpoint")
        load_dit_entries(module.dit, state)

    def save_final(self, module, output_dir) -> list:
        out = [viva.save_viva(Path(output_dir) / "viva.safetensors", module.dit, module.refiner)]
        if self.options.train_dit:
            # the reference embedder travels in viva.safetensors (Kiwi DiT Loader reads plain Wan + source_mixer keys)
            out.append(save_dit(Path(output_dir) / "viva-dit.safetensors", module.dit, exclude=(viva.REF_PREFIX,)))
        return out

    # --- sampling ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, module, batch, steps, shift, seed):
        """``methods.viva.sample`` (the refiner turns the hidden states into the context at every step) with VIVA's
        CFG 2.0 on the instruction only: the negative is the cached empty-instruction encoding, the condition dropout
        trained."""
        return viva_sample(module.dit, module.refiner, batch, steps, shift, seed,
                           self.options.source_conditioning == "concat", cfg=viva.VIVA_CFG)


def viva_sample(dit, refiner, batch, steps, shift, seed, concat: bool = True, cfg: float = viva.VIVA_CFG):
    """Edited latents of the batch's first item through ``methods.viva.sample`` (the nodes' entry point too)."""
    from comfy_kiwi.pipeline import SourceConditioning
    b = {k: v[:1] for k, v in batch.items() if torch.is_tensor(v)}
    neg = cfg != 1.0
    cond = viva.conditioning(refiner, b["vlm_hidden"], b["vlm_mask"], b["vlm_hidden_null"] if neg else None,
                             b["vlm_mask_null"] if neg else None)
    weights = viva.VivaWeights(refiner, dit.source_mixer, dit.ref_embedder)     # attached to the DiT already
    ref = b.get("reference_latents") if dit.ref_embedder is not None else None
    settings = viva.viva_settings(steps=steps, shift=shift, seed=seed, cfg=cfg, progress=False)
    return viva.sample(dit, weights, cond, SourceConditioning(b["source"], ref, feed_dit=concat), settings)
