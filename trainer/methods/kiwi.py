"""Kiwi-Edit / InstructX training: MLLM encoder (Qwen2.5-VL + learnable queries + connectors + LoRA) and
a Wan DiT with σ-scaled source latents and reference tokens, trained with the released numerics.

Source scale: the release's fixed σ by default; ``source_scale = "gamma"`` trains the paper's γ(t)
(``comfy_kiwi.models.conditioning.SourceGamma``, saved as ``vae_condition.gamma.table``).

Numerics (comfy_kiwi.training_lib.kiwi_numerics): timestep id uniform over the 1000-step shifted schedule,
t rounded to bf16 and σ the schedule entry nearest to it, x_t = (1−σ)x0 + σε, target ε − x0, loss
mse · w(t) with the Gaussian weights. Reference augmentation: each step the reference is shrunk by a
scale drawn from ``reference_scale`` (U(0.7, 1.0)), padded onto a white canvas of the video's size and
VAE-encoded; the MLLM sees the unpadded reference.

What is cached per item: target/source latents always; the MLLM context when no MLLM part trains (the
frozen MLLM never runs during training); otherwise the source frames the MLLM sees (uint8, already
reduced to ``max_frames``) and, for reference data, the reference pixels (uint8) and the canvas size.

``[method.options] trainable`` names exactly the parameter groups that train (see kiwi_module.py);
everything else stays bit-identical. Outputs (``save_final``): ``kiwi.safetensors`` under the Kiwi
training-checkpoint names (what comfy_kiwi's loaders and the released Kiwi tools read) and, with a DiT
LoRA, ``kiwi-dit-lora.safetensors`` under ComfyUI LoraLoader keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from comfy_kiwi.dtypes import parse_dtype
from comfy_kiwi.errors import InputError
from comfy_kiwi.training_lib import kiwi_numerics as kn
from comfy_kiwi.training_lib.dit_lora_train import DEFAULT_TARGETS

from .base import TrainingMethod
from .kiwi_module import DIT_LORA_PREFIX, GROUPS, MLLM_GROUPS, KiwiModule, kiwi_state, load_kiwi_state

STORAGES = ("model", "fp8")
SOURCE_SCALES = ("sigma", "gamma")


@dataclass
class KiwiOptions:
    trainable: list = field(default_factory=lambda: ["image_queries", "connector", "mllm_lora"])
    source_input: bool = False             # add source latents · σ after patch embedding (stages 2, 3)
    source_scale: str = "sigma"            # "sigma": the release's fixed σ (its weights use it); "gamma": the
                                           # paper's learnable γ(t) (Eq. 1), trained with the source_embedder group
    reference_first: bool = False          # ref_pad_first: reference tokens before the video tokens
    reference_scale: list = field(default_factory=lambda: [0.7, 1.0])   # shrink range of the VAE reference
    mllm_lora_rank: int = 64
    mllm_lora_alpha: float = 0.0           # 0 = rank (scale 1, as released)
    mllm_max_pixels_per_frame: int = 0     # 0 = the processor's own cap (602112), as the 5B stages trained
    dit_lora_rank: int = 32
    dit_lora_alpha: float = 32.0
    dit_lora_targets: list = field(default_factory=lambda: list(DEFAULT_TARGETS))
    dit_storage: str = "model"             # "model": model.dtype; "fp8": block linears in fp8 (frozen DiT)
    block_swap: int = 0                    # DiT blocks kept in CPU RAM (frozen DiT, gradient checkpointing)
    loss_weighting: str = "kiwi"           # "kiwi": the release's Gaussian in t; "uniform": 1 (the toy presets)
    # > 0: latent cells the edit changes (any channel of |target − source| > the threshold) weigh 1 + this;
    # not in the papers; the toy presets use 30
    edit_region_weight: float = 0.0
    edit_region_threshold: float = kn.EDIT_REGION_THRESHOLD
    # > 0: cap the changed cells' weight per sample so the unchanged ones keep at least this share of it
    edit_region_keep_share: float = 0.0


class KiwiMethod(TrainingMethod):
    name = "kiwi"
    Options = KiwiOptions
    required_models = ("dit", "vae", "mllm")
    context_encoder = None                 # the MLLM context is this method's own (cache_item)
    # an image micro-step gives the video/reference queries no gradient: DDP must tolerate unused weights
    find_unused_parameters = True

    @classmethod
    def parse_options(cls, table):
        o = super().parse_options(table)
        unknown = [g for g in o.trainable if g not in GROUPS]
        if unknown or not o.trainable:
            raise InputError(f"method.options.trainable: unknown or no group(s) {unknown}; choose from "
                             f"{', '.join(GROUPS)}.")
        lo_hi = o.reference_scale
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise InputError(f"method.options.reference_scale must be [low, high] with 0 < low ≤ high ≤ 1, got "
                             f"{lo_hi!r} (the release draws from [0.7, 1.0]).")
        if o.source_scale not in SOURCE_SCALES:
            raise InputError(f"method.options.source_scale is {o.source_scale!r}; choose \"sigma\" (the release's "
                             "fixed σ) or \"gamma\" (the paper's learnable γ(t)).")
        if o.loss_weighting not in kn.LOSS_WEIGHTINGS:
            raise InputError(f"method.options.loss_weighting is {o.loss_weighting!r}; choose \"kiwi\" (the release's "
                             "Gaussian timestep weights) or \"uniform\".")
        if o.edit_region_weight < 0 or o.edit_region_threshold <= 0:
            raise InputError(f"method.options.edit_region_weight must be ≥ 0 (0 = the papers' plain mean) and "
                             f"edit_region_threshold > 0, got {o.edit_region_weight!r}, {o.edit_region_threshold!r}.")
        if not 0 <= o.edit_region_keep_share < 1:
            raise InputError(f"method.options.edit_region_keep_share must be in [0, 1) (0 = no cap), got "
                             f"{o.edit_region_keep_share!r}.")
        if o.source_scale == "gamma" and not o.source_input:
            raise InputError("method.options.source_scale = \"gamma\" scales the source latents: it needs "
                             "source_input = true.")
        if o.dit_storage not in STORAGES:
            raise InputError(f"method.options.dit_storage is {o.dit_storage!r}; choose one of {', '.join(STORAGES)}.")
        if "dit" in o.trainable and (o.dit_storage == "fp8" or o.block_swap):
            raise InputError("method.options: the full DiT cannot train with dit_storage = \"fp8\" or block_swap; "
                             "train a DiT LoRA (\"dit_lora\") for those.")
        if "mllm_model" in o.trainable and "mllm_lora" in o.trainable:
            raise InputError("method.options.trainable: train either the whole language model (\"mllm_model\") or a "
                             "LoRA on it (\"mllm_lora\"), not both.")
        if o.mllm_lora_rank < 1 or o.dit_lora_rank < 1 or o.block_swap < 0:
            raise InputError("method.options: LoRA ranks must be ≥ 1 and block_swap ≥ 0.")
        return o

    def __init__(self, cfg):
        super().__init__(cfg)
        self.trainable = list(self.options.trainable)
        self.mllm_trains = any(g in MLLM_GROUPS for g in self.trainable)

    # --- data -------------------------------------------------------------------------------------------
    def cache_signature(self) -> dict:
        sig = {"mllm": "pixels" if self.mllm_trains else "context", "preset": self.cfg.model.mllm_preset}
        if not self.mllm_trains:
            sig["max_pixels_per_frame"] = self.options.mllm_max_pixels_per_frame
        elif self._mllm_frames() != self._mllm_config().max_frames:     # a release folder's own frame count
            sig["mllm_frames"] = self._mllm_frames()
        return sig

    def cache_model_files(self) -> list[str]:
        # a cached context depends on the MLLM files and on the stage it was initialised from
        return [] if self.mllm_trains else [self.cfg.model.mllm, self.cfg.checkpoint.init_from]

    def cache_item(self, record, pixels, size, encoders) -> dict:
        from comfy_kiwi.frames import kiwi_target_size, load_image, resize_cover_crop
        from comfy_kiwi.mllm.preprocess import select_frame_indices
        frames = (pixels["source"][0].permute(1, 2, 3, 0).float() + 1) / 2             # [F, H, W, 3]
        out, ref = {}, None
        if record.reference:
            image = load_image(record.reference)
            w, h = kiwi_target_size(image.shape[2], image.shape[1], size[0] * size[1], self.cfg.data.multiple)
            ref = resize_cover_crop(image, w, h)                                         # the loader's resize
            out["reference_pixels"] = _uint8(ref)[None]                                  # [1, 1, h, w, 3]
            out["canvas"] = torch.tensor([list(size)])                                   # (W, H) of the video
        if self.mllm_trains:
            idx = select_frame_indices(frames.shape[0], self._mllm_frames())
            out["mllm_frames"] = _uint8(frames[idx])[None]                               # [1, F', H, W, 3]
        else:
            mllm = encoders.get("mllm", lambda: self.load_mllm(self.device, self._dit_dim(), trainable=False))
            with torch.no_grad():
                out["context"] = mllm.encode(record.prompt, frames, ref).float().cpu()     # [1, L, dim]
        return out

    def collate(self, items):
        from ..data.cache import collate
        try:
            return collate(items, self.cfg.data.text_len, padded=())
        except RuntimeError as e:
            raise InputError(f"items of one batch do not fit together ({e}); use schedule.batch_size = 1 with "
                             "references or differently sized items.") from None

    def draws(self, batch, generator) -> dict:
        shift = self.cfg.schedule.timestep_shift
        x0 = batch["target"]
        ids = kn.sample_timestep_ids(x0.shape[0], generator)
        t, sigma = kn.timestep_and_sigma(ids, shift)
        lo, hi = self.options.reference_scale
        return {"t": t, "sigma": sigma, "weight": kn.timestep_loss_weight(t, shift, self.options.loss_weighting),
                "noise": torch.randn(x0.shape, generator=generator, dtype=torch.float32),
                "reference_scale": lo + (hi - lo) * torch.rand(x0.shape[0], generator=generator)}

    # --- models -----------------------------------------------------------------------------------------
    def _mllm_config(self):
        from comfy_kiwi.mllm.config import get_preset
        cap = self.options.mllm_max_pixels_per_frame
        return get_preset(self.cfg.model.mllm_preset).replace(max_pixels_per_frame=cap or None)

    def mllm_metadata(self) -> dict:
        """The encoder setting a training checkpoint records for the MLLM loader (InstructX: where a reference goes)."""
        from comfy_kiwi.mllm.loader import encoder_config_of
        return encoder_config_of(self.cfg.model.mllm, self._mllm_config()).reference_setting()

    def _mllm_frames(self) -> int:
        """Frames the MLLM sees: a release folder's own setting, else the preset's."""
        from comfy_kiwi.mllm.loader import encoder_config_of
        return encoder_config_of(self.cfg.model.mllm, self._mllm_config()).max_frames

    def _dit_dim(self) -> int:
        from comfy_kiwi.loading.dit_loader import describe_dit
        info = describe_dit(self.cfg.model.dit)
        if info is None or info.get("kind") != "dit":
            raise InputError(f"model.dit {self.cfg.model.dit} holds no Wan DiT.")
        return int(info["config"]["dim"])

    def _init_parts(self) -> tuple[dict, dict]:
        """(Kiwi parts, DiT LoRA tensors) of ``checkpoint.init_from`` (empty without one)."""
        from comfy_kiwi.training_lib.checkpoint_export import PARTS, from_kiwi_training_keys
        if not self.cfg.checkpoint.init_from:
            return {p: {} for p in PARTS}, {}

        from ..checkpoint import load_init_state
        state = load_init_state(self.cfg.checkpoint.init_from)
        lora = {k[len(DIT_LORA_PREFIX):]: v for k, v in state.items() if k.startswith(DIT_LORA_PREFIX)}
        return from_kiwi_training_keys({k: v for k, v in state.items() if not k.startswith(DIT_LORA_PREFIX)}), lora

    def load_mllm(self, device, dit_dim: int, trainable: bool):
        """The MLLM encoder from model.mllm, initialised from ``init_from``; with ``trainable`` and the
        mllm_lora group, a fresh LoRA is injected first (so a previous stage's LoRA continues training)."""
        from comfy_kiwi.mllm.loader import load_mllm_encoder
        from comfy_kiwi.mllm.lora import add_lora, merge_lora_tensors
        cfg = self._mllm_config().replace(dit_dim=dit_dim)
        enc = load_mllm_encoder(self.cfg.model.mllm, dtype=parse_dtype(self.cfg.model.dtype), device=device,
                                preset=cfg)
        parts, _ = self._init_parts()
        if parts["mllm"]:
            enc.load_extras(parts["mllm"], source=self.cfg.checkpoint.init_from, strict=False)
        if parts["mllm_model"]:
            _copy_into(enc, parts["mllm_model"], "MLLM weights")
        lora_trains = trainable and "mllm_lora" in self.trainable
        if lora_trains:
            o = self.options
            add_lora(enc, rank=o.mllm_lora_rank, alpha=o.mllm_lora_alpha or o.mllm_lora_rank)
        if parts["mllm_lora"]:
            if lora_trains:
                own = {k: v for k, v in enc.state_dict().items() if ".lora_" in k}
                wrong = sorted(set(parts["mllm_lora"]) - set(own))
                if wrong:
                    raise InputError(f"checkpoint.init_from: MLLM LoRA keys {wrong[:3]} do not fit this model.")
                with torch.no_grad():
                    for k, v in parts["mllm_lora"].items():
                        own[k].copy_(v.to(own[k].dtype))
            else:
                merge_lora_tensors(enc, parts["mllm_lora"], source=self.cfg.checkpoint.init_from)
        return enc.to(device)

    def _has_reference(self) -> bool:
        from ..data.datasets import read_records
        return any(r.reference for s in self.cfg.dataset_specs() for r in read_records(s.dataset, s.format, s.base_path))

    def load_models(self, cfg, device) -> dict:
        from comfy_kiwi.loading.dit_loader import load_dit
        from comfy_kiwi.loading.vae_loader import load_vae
        o = self.options
        # with block swap the DiT is read into CPU RAM (fp8 quantisation happens there too); place() then
        # brings only the resident parts to the device, so the whole model never has to fit on it
        dit = load_dit(cfg.model.dit, dtype=parse_dtype(cfg.model.dtype),
                       device="cpu" if o.block_swap else device, attention=cfg.model.attention)
        dit.context_embedding = "none"           # the MLLM context is DiT-wide; text_embedding is unused
        reference = self._has_reference()
        dit.attach_condition_embedders(source=o.source_input or "source_embedder" in self.trainable,
                                       reference=reference or "ref_embedder" in self.trainable,
                                       reference_first=o.reference_first)
        if o.source_scale == "gamma":     # before init_from, so a previous stage's γ(t) loads into it
            dit.source_embedder.attach_gamma()
        parts, _ = self._init_parts()
        if parts["dit"]:
            _copy_into(dit, parts["dit"], "DiT tensors")
        mllm = self.load_mllm(device, dit.config.dim, trainable=True) if self.mllm_trains else None
        vae = load_vae(cfg.model.vae, dtype=parse_dtype(cfg.model.dtype), device=device) if reference else None
        return {"dit": dit, "mllm": mllm, "vae": vae}

    def build(self, models: dict) -> KiwiModule:
        from comfy_kiwi.training_lib.dit_lora_train import DiTLoraAdapter
        o, dit, mllm = self.options, models["dit"], models.get("mllm")
        dit.requires_grad_(False)
        if mllm is not None:
            mllm.requires_grad_(False)
        if o.dit_storage == "fp8":
            from comfy_kiwi.memory.fp8 import quantize_dit_fp8
            quantize_dit_fp8(dit)
        adapter = None
        if "dit_lora" in self.trainable:
            adapter = DiTLoraAdapter(dit, o.dit_lora_rank, o.dit_lora_alpha, o.dit_lora_targets,
                                     dtype=parse_dtype(self.cfg.precision.adapter_dtype), seed=self.cfg.schedule.seed)
        module = KiwiModule(dit, mllm, adapter, models.get("vae"), o.source_input,
                            (float(o.edit_region_weight), float(o.edit_region_threshold),
                             float(o.edit_region_keep_share)))
        groups = module.named_groups()
        master = parse_dtype(self.cfg.precision.adapter_dtype)
        for g in self.trainable:
            if not groups[g]:
                raise InputError(f"method.options.trainable names {g!r}, but this model has no such weights "
                                 f"(e.g. ref_queries with the instructx preset, or no {g} attached).")
            for name, p in groups[g]:
                # text_embedding is unused on the MLLM path (no gradient ever): kept, saved, not optimised
                p.requires_grad_(not name.startswith("dit.text_embedding."))
                if g in MLLM_GROUPS:
                    # a bf16 Qwen's trainable extras would lose 1e-5 updates to bf16 rounding: keep them in
                    # precision.adapter_dtype (fp32), like a mixed-precision master copy
                    p.data = p.data.to(master)
        dit.gradient_checkpointing = self.cfg.precision.gradient_checkpointing
        dit.train(self.cfg.precision.gradient_checkpointing)   # the flag acts in training mode; no dropout
        if mllm is not None:
            mllm.train(self.mllm_trains)
        return module

    def place(self, module, device):
        if not self.options.block_swap:
            return module.to(device)
        from comfy_kiwi.training_lib.block_swap_training import TrainingBlockSwap
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # DDP broadcasts every module tensor from rank 0 at start, swapped CPU copies included
            raise InputError("method.options.block_swap is for one process (one GPU); set it to 0 for multi-GPU runs.")
        for name, child in module.named_children():
            if name != "dit":
                child.to(device)
        module._block_swap = [TrainingBlockSwap(module.dit, self.options.block_swap, compute_device=device).install()]
        return module

    # --- state ------------------------------------------------------------------------------------------
    def trainable_state_dict(self, module) -> dict[str, torch.Tensor]:
        return kiwi_state(module, self.trainable)

    def load_trainable_state_dict(self, module, state) -> None:
        load_kiwi_state(module, self.trainable, state)

    def load_init_state(self, module, state) -> None:
        """The Kiwi parts of ``init_from`` were applied while loading (load_models / load_mllm, so a cached
        frozen-MLLM context sees them too); here only a previous DiT LoRA remains."""
        _, lora = self._init_parts()
        if lora and module.adapter is not None:
            module.adapter.load_lora_state_dict(lora, strict=False)

    def save_final(self, module, output_dir) -> list:
        from safetensors.torch import save_file
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict(module).items()}
        kiwi = {k: v for k, v in state.items() if not k.startswith(DIT_LORA_PREFIX)}
        out = []
        if kiwi:
            out.append(Path(output_dir) / "kiwi.safetensors")
            # num_heads: the DiT loader cannot always infer it from the width (custom widths)
            meta = {"format": "pt", "kiwi_trainable": ",".join(self.trainable),
                    "num_heads": str(module.dit.config.num_heads), **self.mllm_metadata()}
            save_file(kiwi, str(out[-1]), metadata=meta)
        if module.adapter is not None:
            out.append(Path(output_dir) / "kiwi-dit-lora.safetensors")
            save_file({k: v.contiguous() for k, v in module.adapter.comfyui_state_dict().items()}, str(out[-1]))
        return out

    # --- sampling ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, module, batch, steps, shift, seed):
        """The batch's first item through ``methods.kiwi_edit.sample``, the sampler of the nodes and the command line
        (InstructX runs too: their MLLM preset only changes the context)."""
        from comfy_kiwi.methods import kiwi_edit
        from comfy_kiwi.pipeline import EditConditioning, EditSettings, SourceConditioning
        batch = {k: v[:1] for k, v in batch.items()}
        ref = module.reference_latents(batch, torch.ones(1))          # no shrink at inference
        source = SourceConditioning(batch["source"], ref, feed_dit=module.source_input)
        settings = EditSettings(steps=steps, shift=shift, seed=seed, progress=False)
        return kiwi_edit.sample(module.dit, EditConditioning(module.context(batch)), source, settings,
                                device=batch["source"].device).float()


def _copy_into(module, tensors: dict, what: str) -> None:
    """Copy ``checkpoint.init_from`` tensors into ``module`` (names and shapes must fit)."""
    own = module.state_dict()
    wrong = sorted(k for k, v in tensors.items() if k not in own or own[k].shape != v.shape)
    if wrong:
        raise InputError(f"checkpoint.init_from: {what} {wrong[:3]} do not fit the configured model.")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))


def _uint8(frames: torch.Tensor) -> torch.Tensor:
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
