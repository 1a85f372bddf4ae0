"""RVEDiT training: granularity-routed conditioning + reference-anchored attention alignment on a Wan DiT.

Streams (comfy_kiwi.methods.rvedit_streams): X_e = the MLLM encoder's editing tokens on the instruction and the
source video, computed every step (the MLLM-to-DiT connector and an MLLM LoRA train jointly with the DiT, RVEDiT
§5 / Alg. 1 line 13; nothing of X_e is cached), X_v = source latents through the trainable ``video_embedder``,
X_ℓ = the instruction's umT5 rows (the core's cached ``context``) through the DiT's ``text_embedding``.
Blocks < L_s see X_e, deeper blocks [X_e; X_v; X_ℓ].

Alignment (λ > 0, default 0.75): each step one block k is drawn uniformly; a no-grad reference pass of the same
DiT on the same x_t, t is conditioned on the *target*: X_e* = the MLLM on the target video and its caption
(Alg. 1 line 4), X_v* = X_v(target latents), X_ℓ* = X_ℓ(target caption) (the ``target_caption`` column, required).
Cross-attention outputs of block k in both passes enter a symmetric InfoNCE (τ 0.07, positions capped); the
reference branch is detached, so the gradient flows only through the editing branch. L = L_fm + λ·L_align.

The routing hooks stay installed for the module's life (``RoutedContext.set_streams`` per pass), so gradient
checkpointing's recomputation in backward sees the editing pass's routing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from comfy_kiwi.dtypes import parse_dtype
from comfy_kiwi.errors import InputError
from comfy_kiwi.methods.rvedit import AlignmentConfig, CrossAttentionTap, RoutedContext, symmetric_info_nce
from comfy_kiwi.methods.rvedit_streams import RVEDiTStreams
from comfy_kiwi.sampling import sigma_to_timestep

from .base import TrainingMethod, TrainModule, flow_match_loss, noised
from .dit_state import load_dit_entries, save_dit

DIT_TRAINING = ("full", "lora", "frozen")


@dataclass
class RVEDiTOptions:
    split: int = -1                        # L_s: blocks [0, L_s) see X_e only; -1 = half the depth (RVEDiT)
    video_pool: list = field(default_factory=lambda: [1, 1, 1])   # X_v token pooling (pt, ph, pw)
    align_weight: float = 0.75             # λ: RVEDiT's main text and tables (0.1: an appendix value, never evaluated)
    align_tau: float = 0.07                # RVEDiT
    align_max_positions: int = 1024        # positions per sample in the InfoNCE (memory cap, ours)
    dit_training: str = "full"             # full | lora | frozen (the video embedder always trains)
    lora_rank: int = 64
    lora_alpha: float = 64.0
    mllm_lora_rank: int = 64               # the MLLM LoRA trained with the connector (rank as Kiwi-Edit's)
    mllm_lora_alpha: float = 0.0           # 0 = rank
    source_input: bool = True              # keep a Kiwi DiT's own σ-scaled source addition when it has one


def mllm_tokens(mllm, texts, frames_uint8: torch.Tensor) -> torch.Tensor:
    """MLLM editing tokens [B, L, dim] of one text per item on its cached frames [B, F', H, W, 3] (uint8)."""
    rows = [mllm.encode_batch([t], frames_uint8[i].float() / 255.0) for i, t in enumerate(texts)]
    if len({r.shape[1] for r in rows}) > 1:
        raise InputError(f"MLLM tokens of one batch have different lengths {[r.shape[1] for r in rows]}; use "
                         "schedule.batch_size = 1.")
    return torch.cat(rows)


def mllm_parts(mllm) -> dict[str, torch.Tensor]:
    """The MLLM tensors RVEDiT trains, under the Kiwi training-checkpoint names (``mllm.connetor.*`` [sic] and the
    language model's ``…lora_{A,B}.default.weight``), sharing storage with the parameters."""
    from comfy_kiwi.mllm.lora import lora_state_dict
    from comfy_kiwi.training_lib.checkpoint_export import to_kiwi_training_keys
    connector = {"connector." + k: v for k, v in mllm.connector.state_dict().items()}
    return to_kiwi_training_keys({"mllm": connector, "mllm_lora": lora_state_dict(mllm)})


class RVEDiTModule(TrainModule):
    def __init__(self, dit, streams: RVEDiTStreams, adapter, mllm, options: RVEDiTOptions):
        super().__init__()
        self.dit, self.streams, self.adapter, self.mllm, self.options = dit, streams, adapter, mllm, options
        self.align = AlignmentConfig(options.align_weight, options.align_tau, options.align_max_positions)
        self.routing = RoutedContext(dit, streams.split, torch.zeros(1, 1, dit.config.dim))
        self.routing.install()             # for good; the streams are swapped per pass

    def _source(self, batch):
        if self.options.source_input and self.dit.source_embedder is not None:
            return batch["source"].to(self.dit.dtype)
        return None

    def editing_tokens(self, batch) -> torch.Tensor:
        """X_e: the (training) MLLM on the instruction and the source frames, with gradients."""
        return mllm_tokens(self.mllm, batch["prompt"], batch["mllm_frames"])

    def predict(self, x_t, t, sigma, batch) -> torch.Tensor:
        """The editing pass (routing set here; the caller holds the hooks)."""
        dtype = self.dit.dtype
        x_e = self.editing_tokens(batch).to(dtype)
        s = self.streams.streams(self.dit, batch["source"], batch["context"])
        self.routing.set_streams(x_e, s.x_v.to(dtype), s.x_l.to(dtype))
        return self.dit(x_t.to(dtype), t, x_e, source_latents=self._source(batch), source_scale=sigma)

    @torch.no_grad()
    def reference_features(self, x_t, t, sigma, batch, block: int) -> torch.Tensor:
        """Cross-attention output of ``block`` in the no-grad pass conditioned on the target video + caption:
        X_e* = MLLM(target caption, target frames), X_v* = X_v(target latents), X_ℓ* = X_ℓ(target caption)."""
        dtype = self.dit.dtype
        x_e = self.reference_tokens(batch).to(dtype)
        s = self.streams.streams(self.dit, batch["target"], batch["target_context"])
        self.routing.set_streams(x_e, s.x_v.to(dtype), s.x_l.to(dtype))
        with CrossAttentionTap(self.dit, [block], detach=True) as tap:
            self.dit(x_t.to(dtype), t, x_e, source_latents=self._source(batch), source_scale=sigma)
        return tap.outputs[block]

    @torch.no_grad()
    def reference_tokens(self, batch) -> torch.Tensor:
        """X_e*: the MLLM on the target video and its caption (RVEDiT Alg. 1 line 4)."""
        return mllm_tokens(self.mllm, batch["target_caption"], batch["mllm_target_frames"])

    def forward(self, batch: dict, draws: dict) -> torch.Tensor:
        x0 = batch["target"].float()
        noise, sigma = draws["noise"].to(x0.device), draws["sigma"].to(x0.device)
        x_t, t = noised(x0, noise, sigma), sigma_to_timestep(sigma, dtype=self.dit.dtype)
        if not self.align.loss_weight:
            return flow_match_loss(self.predict(x_t, t, sigma, batch), x0, noise)
        block = int(draws["align_block"])
        b = self.reference_features(x_t, t, sigma, batch, block)
        with CrossAttentionTap(self.dit, [block]) as tap:
            pred = self.predict(x_t, t, sigma, batch)
        gen = torch.Generator().manual_seed(int(draws["align_seed"]))
        align = symmetric_info_nce(tap.outputs[block], b, self.align.tau, self.align.max_positions, gen)
        return flow_match_loss(pred, x0, noise) + self.align.loss_weight * align


class RVEDiTMethod(TrainingMethod):
    name = "rvedit"
    Options = RVEDiTOptions
    required_models = ("dit", "vae", "text_encoder", "mllm")
    context_encoder = "umt5"               # X_ℓ: the instruction's umT5 rows (cached by the core)
    encode_target_caption = True           # the alignment pass's caption
    find_unused_parameters = True          # with λ = 0 the tap-free pass still uses every weight; safe default

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.options.align_weight:
            from ..data.datasets import COLUMNS, read_records
            for spec in cfg.dataset_specs():
                rows = [n for n, r in enumerate(read_records(spec.dataset, spec.format, spec.base_path), 1)
                        if not r.target_caption]
                if rows:
                    raise InputError(f"{spec.dataset}: rows {rows[:5]} have no {COLUMNS[spec.format]['target_caption']}"
                                     f" column value; RVEDiT's alignment pass (align_weight > 0) conditions on the "
                                     "target video and its caption. Add the column, or set align_weight = 0.")

    @classmethod
    def parse_options(cls, table):
        o = super().parse_options(table)
        if o.dit_training not in DIT_TRAINING:
            raise InputError(f"method.options.dit_training is {o.dit_training!r}; choose one of "
                             f"{', '.join(DIT_TRAINING)}.")
        AlignmentConfig(o.align_weight, o.align_tau, o.align_max_positions)     # validates
        if len(o.video_pool) != 3 or min(o.video_pool) < 1 or o.lora_rank < 1 or o.mllm_lora_rank < 1:
            raise InputError("method.options: video_pool must be three whole numbers ≥ 1 and lora_rank, "
                             "mllm_lora_rank ≥ 1.")
        return o

    # --- data -------------------------------------------------------------------------------------------
    def cache_signature(self) -> dict:
        return {"x_e": "mllm-frames", "preset": self.cfg.model.mllm_preset, "frames": self._mllm_frames()}

    def _mllm_frames(self) -> int:
        from comfy_kiwi.mllm.config import get_preset
        from comfy_kiwi.mllm.loader import encoder_config_of
        return encoder_config_of(self.cfg.model.mllm, get_preset(self.cfg.model.mllm_preset)).max_frames

    def _mllm(self):
        from comfy_kiwi.loading.dit_loader import describe_dit
        from comfy_kiwi.mllm.config import get_preset
        from comfy_kiwi.mllm.loader import load_mllm_encoder
        dim = int(describe_dit(self.cfg.model.dit)["config"]["dim"])
        preset = get_preset(self.cfg.model.mllm_preset).replace(dit_dim=dim)
        return load_mllm_encoder(self.cfg.model.mllm, dtype=parse_dtype(self.cfg.model.dtype),
                                 device=getattr(self, "device", "cpu"), preset=preset)

    def cache_item(self, record, pixels, size, encoders) -> dict:
        """The frames the MLLM reads (uint8; it trains, so its tokens are computed each step): the source video
        for X_e, the target video for the alignment pass's X_e*."""
        from comfy_kiwi.mllm.preprocess import select_frame_indices
        out = {}
        for key, name in (("source", "mllm_frames"), ("target", "mllm_target_frames")):
            frames = (pixels[key][0].permute(1, 2, 3, 0).float() + 1) / 2                # [F, H, W, 3]
            idx = select_frame_indices(frames.shape[0], self._mllm_frames())
            out[name] = (frames[idx].clamp(0, 1) * 255).round().to(torch.uint8)[None]      # [1, F', H, W, 3]
        return out

    def draws(self, batch, generator) -> dict:
        out = super().draws(batch, generator)
        n = getattr(self, "num_blocks", 1)                                         # set by build()
        out["align_block"] = int(torch.randint(0, n, (1,), generator=generator))        # uniform over blocks
        out["align_seed"] = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return out

    # --- model ------------------------------------------------------------------------------------------
    def load_models(self, cfg, device) -> dict:
        from comfy_kiwi.mllm.lora import add_lora
        models = super().load_models(cfg, device)
        models["dit"].context_embedding = "none"          # X_e and X_ℓ arrive DiT-wide
        o = self.options
        models["mllm"] = add_lora(self._mllm(), rank=o.mllm_lora_rank, alpha=o.mllm_lora_alpha or o.mllm_lora_rank)
        return models

    def build(self, models: dict) -> RVEDiTModule:
        from comfy_kiwi.training_lib.dit_lora_train import DiTLoraAdapter
        o, dit = self.options, models["dit"]
        self.num_blocks = len(dit.blocks)
        dit.requires_grad_(o.dit_training == "full")
        dit.text_embedding.requires_grad_(False)          # X_ℓ's projection stays Wan's own
        if dit.ref_embedder is not None:                   # a release's reference tokens: RVEDiT feeds none
            dit.ref_embedder.requires_grad_(False)
        master = parse_dtype(self.cfg.precision.adapter_dtype)
        streams = RVEDiTStreams.for_dit(dit, None if o.split < 0 else o.split, o.video_pool)
        streams.to(dtype=master).requires_grad_(True)
        adapter = None
        if o.dit_training == "lora":
            adapter = DiTLoraAdapter(dit, o.lora_rank, o.lora_alpha, dtype=master, seed=self.cfg.schedule.seed)
        mllm = models["mllm"]
        mllm.requires_grad_(False)
        for name, p in mllm.named_parameters():          # the MLLM-to-DiT connector and the MLLM LoRA train
            if name.startswith("connector.") or ".lora_A." in name or ".lora_B." in name:
                p.data = p.data.to(master)                 # fp32 master copies, as the Kiwi method keeps them
                p.requires_grad_(True)
        mllm.train()
        dit.gradient_checkpointing = self.cfg.precision.gradient_checkpointing
        dit.train(self.cfg.precision.gradient_checkpointing or o.dit_training == "full")
        return RVEDiTModule(dit, streams, adapter, mllm, o)

    # --- state ------------------------------------------------------------------------------------------
    def trainable_state_dict(self, module) -> dict[str, torch.Tensor]:
        out = dict(module.streams.prefixed_state_dict())
        if module.adapter is not None:
            out.update({"dit_lora." + k: v for k, v in module.adapter.lora_state_dict().items()})
        if self.options.dit_training == "full":
            out.update({"dit." + k: v for k, v in module.dit.state_dict().items()})
        out.update(mllm_parts(module.mllm))
        return out

    def load_trainable_state_dict(self, module, state) -> None:
        own = mllm_parts(module.mllm)
        missing = sorted(set(own) - set(state))
        if missing:
            from comfy_kiwi.errors import CheckpointError
            raise CheckpointError(f"the checkpoint has no trained MLLM tensors {missing[:3]} (written by an older "
                                  "rvedit run with a frozen MLLM?).")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k].to(v.device, v.dtype))
        module.streams.load_prefixed({k: v for k, v in state.items() if k.startswith("rvedit.")}, "checkpoint")
        lora = {k[len("dit_lora."):]: v for k, v in state.items() if k.startswith("dit_lora.")}
        if lora and module.adapter is not None:
            module.adapter.load_lora_state_dict(lora)
        load_dit_entries(module.dit, state)

    def save_final(self, module, output_dir) -> list:
        from safetensors.torch import save_file
        # rvedit.safetensors: the X_v embedder + L_s, and the MLLM's trained connector + LoRA (Kiwi training keys)
        out = [Path(output_dir) / "rvedit.safetensors"]
        tensors = {**module.streams.prefixed_state_dict(), **mllm_parts(module.mllm)}
        alpha = self.options.mllm_lora_alpha or self.options.mllm_lora_rank
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out[0]),
                  metadata={**module.streams.metadata(), "mllm_lora_alpha": str(alpha)})
        if module.adapter is not None:
            out.append(Path(output_dir) / "rvedit-dit-lora.safetensors")
            save_file({k: v.contiguous() for k, v in module.adapter.comfyui_state_dict().items()}, str(out[-1]))
        if self.options.dit_training == "full":
            out.append(save_dit(Path(output_dir) / "rvedit-dit.safetensors", module.dit))
        return out

    # --- sampling ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, module, batch, steps, shift, seed):
        """``rvedit_streams.sample`` (the nodes' entry point) with the training streams; the trainer's routing
        hooks step aside for the run (the sampler installs its own)."""
        from comfy_kiwi.methods.rvedit_streams import sample
        from comfy_kiwi.pipeline import EditConditioning, EditSettings, SourceConditioning
        b = {k: v[:1] for k, v in batch.items()}
        cond = EditConditioning(module.editing_tokens(b))
        settings = EditSettings(steps=steps, shift=shift, seed=seed, progress=False)
        with module.routing.suspended():
            source = SourceConditioning(b["source"], feed_dit=module._source(b) is not None)
            return sample(module.dit, module.streams, cond, source, b["context"], settings)
