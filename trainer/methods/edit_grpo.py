"""Edit-GRPO (VIVA's RL stage): Flow-SDE rollouts of the VIVA policy, CLIP / PickScore rewards, group-relative
advantages, the clipped-ratio loss on a fraction of the steps and a KL term to the reference policy; only a
LoRA (r 64, α 128, self- and cross-attention) trains.

Per micro-step and prompt (``TrainModule.forward``): G rollouts without gradients
(``comfy_kiwi.methods.edit_grpo.rollout``: x, x_next, log π_old per step) → VAE decode → rewards
r = w_IF·R_IF + w_SP·R_SP + w_PS·R_PS (``comfy_kiwi.judging.rewards`` through ``flow_grpo.combined_reward``) →
``group_advantages`` (clipped) → ``policy_loss``: log π_θ recomputed with gradients on the drawn steps, the
reference mean with the LoRA hooks removed (same network), loss = clipped ratio + β·KL. One policy update per
rollout batch, so π_old = π_θ at the update and the ratio starts at 1 (Flow-GRPO's on-policy setting).

The policy is the VIVA model: instructor hidden states (cached, as the ``viva`` method), the refiner and the
channel-concat embedder from ``viva_weights`` (a ``viva`` run's ``viva.safetensors``; frozen here). Output:
``edit-grpo-lora.safetensors`` under ComfyUI LoraLoader keys (the Kiwi LoRA Loader node reads it). Inference:
VIVA's preset, CFG 2.0 on the instruction only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from comfy_kiwi.dtypes import parse_dtype
from comfy_kiwi.errors import InputError
from comfy_kiwi.methods import edit_grpo as eg
from comfy_kiwi.methods import flow_grpo as fg
from comfy_kiwi.methods import viva
from comfy_kiwi.sampling import sigma_to_timestep

from .base import TrainModule
from .viva import VivaMethod

_GRPO_FIELDS = {f.name for f in fields(fg.EditGRPOConfig)}


@dataclass
class EditGRPOOptions:
    viva_weights: str = ""             # viva.safetensors of the SFT stage; "" = a fresh refiner + mixer (frozen)
    clip_model: str = ""               # CLIP folder (R_IF, R_SP); required unless a reward is injected (tests)
    pickscore_model: str = ""          # PickScore folder (R_PS); "" needs w_ps = 0
    system_prompt: str = ""            # the instructor's (as the viva method)
    lora_rank: int = 64                # VIVA
    lora_alpha: float = 128.0          # VIVA
    group_size: int = 8
    sampling_steps: int = 10
    noise_level: float = 0.7
    sde_method: str = "sde"
    timestep_fraction: float = 0.6
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    global_std: bool = False
    kl_beta: float = 0.04
    w_if: float = 1.0
    w_sp: float = 1.0
    w_ps: float = 1.0
    shift: float = 5.0
    reward_max_frames: int = 8         # frames per video the CLIP rewards read
    reference_tokens: bool = True      # reference latents reach the policy when the VIVA weights have them

    def grpo(self) -> fg.EditGRPOConfig:
        return fg.EditGRPOConfig(**{k: v for k, v in vars(self).items() if k in _GRPO_FIELDS})


class ClipReward:
    """VIVA's rewards from the judging functions, one number per rollout and term (Eqs. 4–7):

    R_IF = C(V, t_edited) − C(V, t_source) (CLIP; the edited- and source-video descriptions),
    R_SP = C(V_src, V) (CLIP image features), R_PS = PickScore(V, t_edited) / exp(logit_scale), i.e. the
    PickScore model's cosine: its logit scale (≈100) would otherwise swamp the two CLIP cosines in the group
    advantage. All three are cosines or a difference of cosines, so w_IF = w_SP = w_PS = 1 weighs them alike.
    ``__call__`` returns {"R_IF", "R_SP", "R_PS", "reward"} ([G] each; "reward" = the weighted sum)."""

    def __init__(self, clip, pickscore, config: fg.EditGRPOConfig, max_frames: int):
        from comfy_kiwi.judging.rewards import ClipRewards, RewardSettings
        weights = {"instruction_following": 1.0, "source_preservation": 1.0,
                   "pickscore": 1.0 if pickscore is not None else 0.0}
        self.rewards = ClipRewards(clip, pickscore, RewardSettings(max_frames=max_frames), weights)
        self.pickscore_scale = 1.0 / pickscore.logit_scale if pickscore is not None else 0.0
        self.config = config

    def __call__(self, source_frames, edited_frames, edited_caption: str, source_caption: str) -> dict:
        out = self.rewards.compute(source_frames, edited_frames, edited_caption, source_caption)
        terms = {"R_IF": out["instruction_following"], "R_SP": out["source_preservation"],
                 "R_PS": out.get("pickscore", torch.zeros_like(out["source_preservation"])) * self.pickscore_scale}
        terms = {k: torch.as_tensor(v, dtype=torch.float32).reshape(-1) for k, v in terms.items()}
        return {**terms, "reward": fg.combined_reward(terms["R_IF"], terms["R_SP"], terms["R_PS"], self.config)}


def check_captions(records, path, fmt: str) -> None:
    """Edit-GRPO's R_IF needs both descriptions of every item: a clear error naming the columns otherwise."""
    from ..data.datasets import COLUMNS
    cols = COLUMNS[fmt]
    for n, r in enumerate(records, 1):
        missing = [cols[k] for k in ("target_caption", "source_prompt") if not getattr(r, k)]
        if missing:
            raise InputError(f"{path} row {n}: edit-grpo needs the edited-video description ({cols['target_caption']}) "
                             f"and the source-video description ({cols['source_prompt']}) of every item for "
                             f"R_IF = C(V, edited) − C(V, source) and PickScore(V, edited); missing "
                             f"{', '.join(missing)}.")


class EditGRPOModule(TrainModule):
    def __init__(self, dit, refiner, adapter, vae, reward, config: fg.EditGRPOConfig):
        super().__init__()
        self.dit, self.refiner, self.adapter = dit, refiner, adapter
        self._frozen = [vae, reward]          # outside the module's parameters and state
        self.config = config
        self.last_rewards: torch.Tensor | None = None     # [B, G] of the latest micro-step (tests)
        self.last_videos: torch.Tensor | None = None      # decoded rollouts of the latest group (tests)
        self.logged: list[dict] = []                      # per-group reward means since the last step_metrics

    @property
    def vae(self):
        return self._frozen[0]

    @property
    def reward(self):
        return self._frozen[1]

    def velocity_fn(self, hidden, mask, source, reference=None):
        """v(x, σ) of the VIVA policy for a group: the refiner runs at the step's t (VIVA's per-step context,
        ``viva.RefinedContext``, as the sampler runs it), then the DiT."""
        dtype = self.dit.dtype
        ref = None if reference is None or self.dit.ref_embedder is None else reference.to(dtype)

        def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
            g = x.shape[0]
            t = sigma_to_timestep(sigma, g, dtype, x.device)
            ctx = viva.RefinedContext(self.refiner, hidden.expand(g, -1, -1), mask.expand(g, -1))(t, negative=False)
            src = None if self.dit.source_mixer is None else source.expand(g, -1, -1, -1, -1).to(dtype)
            return self.dit(x.to(dtype), t, ctx.to(dtype), source_latents=src, reference_latents=ref)
        return velocity

    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [G, C, f, h, w] → frames [G, F, H, W, 3] in 0..1 (no grad)."""
        from comfy_kiwi.frames import vae_to_frames
        with torch.no_grad():
            out = [vae_to_frames(self.vae.decode(latents[i:i + 1].to(self.vae.dtype)).float().cpu())
                   for i in range(latents.shape[0])]
        return torch.stack(out)

    def forward(self, batch: dict, draws: dict) -> torch.Tensor:
        cfg, n = self.config, batch["source"].shape[0]
        gen = torch.Generator().manual_seed(int(draws["rollout_seed"]))
        total, rewards, ref = 0.0, [], batch.get("reference_latents")
        for i in range(n):
            velocity = self.velocity_fn(batch["vlm_hidden"][i:i + 1], batch["vlm_mask"][i:i + 1],
                                        batch["source"][i:i + 1], None if ref is None else ref[i:i + 1])
            noise = draws["noise"][i].to(batch["source"].device)                      # [G, C, f, h, w]
            r = eg.rollout(velocity, noise, cfg, gen)
            src_frames = self.frames(batch["source"][i:i + 1])[0]
            self.last_videos = self.frames(r.final)                                   # [G, F, H, W, 3]
            terms = self.reward(src_frames, self.last_videos, batch["target_caption"][i], batch["source_prompt"][i])
            rewards.append(terms["reward"])
            adv = fg.group_advantages(terms["reward"], cfg.adv_clip, global_std=cfg.global_std)
            steps = eg.trainable_steps(r, cfg, torch.Generator().manual_seed(int(draws["steps_seed"]) + i))
            policy = eg.policy_loss(velocity, r, adv, steps, cfg, self.adapter)
            total = total + policy.loss
            # per-group means of each reward term (and the policy's KL / ratio), averaged over the step's groups
            self.logged.append({**{f"reward/{k}": float(v.mean()) for k, v in terms.items()},
                                "kl": float(policy.kl), "ratio": float(policy.ratio)})
        self.last_rewards = torch.stack(rewards)
        return total / n

    def step_metrics(self) -> dict:
        """The means over this optimiser step's groups of what ``forward`` logged; cleared after reading."""
        logged, self.logged = self.logged, []
        return {k: sum(d[k] for d in logged) / len(logged) for k in logged[0]} if logged else {}


class EditGRPOMethod(VivaMethod):
    """Reuses the ``viva`` method's instructor cache and collate; trains only the DiT LoRA."""

    name = "edit-grpo"
    Options = EditGRPOOptions
    find_unused_parameters = True      # LoRA pairs of steps' blocks always run; kept for safety under DDP

    def __init__(self, cfg):
        super().__init__(cfg)
        from ..data.datasets import read_records
        for spec in cfg.dataset_specs():
            check_captions(read_records(spec.dataset, spec.format, spec.base_path), spec.dataset, spec.format)

    @classmethod
    def parse_options(cls, table):
        o = super(VivaMethod, cls).parse_options(table)          # the base parser (not viva's option checks)
        o.grpo()                                    # EditGRPOConfig validates the numbers
        if o.w_ps and not o.pickscore_model and o.clip_model:
            raise InputError("method.options.w_ps is not 0 but no pickscore_model is given; set one or w_ps = 0.")
        if o.reward_max_frames < 1:
            raise InputError("method.options.reward_max_frames must be ≥ 1.")
        return o

    def draws(self, batch, generator) -> dict:
        o, x0 = self.options, batch["target"]
        noise = torch.randn((x0.shape[0], o.group_size, *x0.shape[1:]), generator=generator, dtype=torch.float32)
        seeds = torch.randint(0, 2**31 - 1, (2,), generator=generator)
        return {"noise": noise, "rollout_seed": int(seeds[0]), "steps_seed": int(seeds[1])}

    def reward_fn(self, device):
        from comfy_kiwi.judging.clip_models import load_clip
        o = self.options
        if not o.clip_model:
            raise InputError("method.options.clip_model is required (a CLIP folder for R_IF and R_SP).")
        pick = load_clip(o.pickscore_model, device=device) if o.pickscore_model else None
        return ClipReward(load_clip(o.clip_model, device=device), pick, o.grpo(), o.reward_max_frames)

    def load_models(self, cfg, device) -> dict:
        from comfy_kiwi.loading.vae_loader import load_vae
        models = super().load_models(cfg, device)
        models["vae"] = load_vae(cfg.model.vae, dtype=torch.float32, device=device)
        models["reward"] = self.reward_fn(device)
        return models

    def build(self, models: dict) -> EditGRPOModule:
        from comfy_kiwi.training_lib.dit_lora_train import DiTLoraAdapter
        o, dit = self.options, models["dit"]
        if o.viva_weights:
            refiner = viva.load_viva(o.viva_weights, dit)
        else:
            refiner = viva.attach_viva(dit, models["in_dim"])
        dit.requires_grad_(False)            # after attaching: the channel-concat mixer is frozen too (no grads)
        refiner.requires_grad_(False).eval()
        cfg = o.grpo()
        adapter = DiTLoraAdapter(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets,
                                 dtype=parse_dtype(self.cfg.precision.adapter_dtype), seed=self.cfg.schedule.seed)
        dit.gradient_checkpointing = self.cfg.precision.gradient_checkpointing
        dit.train(self.cfg.precision.gradient_checkpointing)
        return EditGRPOModule(dit, refiner, adapter, models["vae"], models["reward"], cfg)

    def trainable_parameters(self, module):
        return list(module.adapter.parameters())

    def step_metrics(self, module) -> dict:
        return module.step_metrics()

    def trainable_state_dict(self, module) -> dict[str, torch.Tensor]:
        return module.adapter.lora_state_dict()

    def load_trainable_state_dict(self, module, state) -> None:
        module.adapter.load_lora_state_dict(state)

    def save_final(self, module, output_dir) -> list:
        from safetensors.torch import save_file
        path = Path(output_dir) / "edit-grpo-lora.safetensors"
        save_file({k: v.contiguous() for k, v in module.adapter.comfyui_state_dict().items()}, str(path))
        return [path]

    @torch.no_grad()
    def sample(self, module, batch, steps, shift, seed):
        """VIVA's inference preset (CFG 2.0 on the instruction only) with the trained LoRA in place."""
        from .viva import viva_sample
        return viva_sample(module.dit, module.refiner, batch, steps, shift, seed, module.dit.source_mixer is not None)
