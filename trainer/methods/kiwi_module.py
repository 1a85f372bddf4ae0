"""The Kiwi-Edit training module: MLLM encoder (queries, connectors, LoRA) + Wan DiT with source and
reference embedders (+ an optional DiT LoRA), its parameter groups, and its Kiwi-named state.

Parameter groups (``[method.options] trainable``), by the name of each parameter in the module:

| group | parameters | Kiwi checkpoint keys |
|---|---|---|
| image_queries / video_queries / ref_queries | ``mllm.<group>`` | ``mllm.<group>.q`` |
| connector / ref_connector | ``mllm.connector.*`` / ``mllm.ref_connector.*`` | ``mllm.connetor.*`` [sic] / ``mllm.ref_connector.*`` |
| mllm_lora | LoRA A/B of the language model's q/k/v/o | ``mllm.model.model.language_model.…lora_A.default.weight`` |
| mllm_model | the whole Qwen2.5-VL (language model + vision tower; not the unused tied ``lm_head``), for a model trained from scratch (the toy world) | ``mllm.model.model.…`` |
| dit | every DiT weight except the embedders | ``dit.*`` |
| source_embedder / ref_embedder | ``dit.source_embedder.*`` (with ``gamma.table`` under ``source_scale = "gamma"``) / ``dit.ref_embedder.*`` | ``vae_condition.*`` / ``ref_vae_condition.*`` |
| dit_lora | the DiT LoRA adapter | ``dit_lora.blocks.N.<linear>.lora_{A,B}.weight`` (ours) |
"""

from __future__ import annotations

import torch
from torch import nn

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.training_lib.checkpoint_export import PARTS, to_kiwi_training_keys
from comfy_kiwi.training_lib.kiwi_numerics import (EDIT_REGION_THRESHOLD, edit_region_weight, kiwi_loss,
                                                  noisy_and_target)

from .base import TrainModule

MLLM_GROUPS = ("image_queries", "video_queries", "ref_queries", "connector", "ref_connector", "mllm_lora",
               "mllm_model")
DIT_GROUPS = ("dit", "source_embedder", "ref_embedder", "dit_lora")
GROUPS = MLLM_GROUPS + DIT_GROUPS
DIT_LORA_PREFIX = "dit_lora."


def group_of(name: str) -> str | None:
    """The group of a parameter named as in :class:`KiwiModule` (None: a frozen base weight)."""
    if name.startswith("adapter."):
        return "dit_lora"
    if name.startswith("dit."):
        inner = name[len("dit."):]
        for g in ("source_embedder", "ref_embedder"):
            if inner.startswith(g + "."):
                return g
        return "dit"
    if name.startswith("mllm."):
        inner = name[len("mllm."):]
        if ".lora_A." in inner or ".lora_B." in inner:
            return "mllm_lora"
        if inner.startswith("model.model."):
            return "mllm_model"
        if inner in ("image_queries", "video_queries", "ref_queries"):
            return inner
        for g in ("connector", "ref_connector"):
            if inner.startswith(g + "."):
                return g
    return None


class KiwiModule(TrainModule):
    def __init__(self, dit, mllm, adapter, vae, source_input: bool,
                 edit_region: tuple = (0.0, EDIT_REGION_THRESHOLD, 0.0)):
        super().__init__()
        self.dit = dit
        self.mllm = mllm                   # None when the MLLM context is cached (frozen MLLM)
        self.adapter = adapter             # DiTLoraAdapter or None
        self._vae = [vae]                  # frozen, outside the module's parameters (reference branch only)
        self.source_input = source_input
        self.edit_region = edit_region     # (weight, threshold, keep share) of the changed cells' loss weight; 0 = off

    @property
    def vae(self):
        return self._vae[0]

    # --- conditioning -----------------------------------------------------------------------------------
    def context(self, batch: dict) -> torch.Tensor:
        """MLLM context [B, L, dim]: cached, or encoded now (the MLLM trains), one item at a time."""
        if "context" in batch:
            return batch["context"]
        if self.mllm is None:
            raise InputError("the batch holds no cached context and no MLLM is loaded.")
        rows = []
        for i, prompt in enumerate(batch["prompt"]):
            frames = batch["mllm_frames"][i].float() / 255.0
            ref = batch["reference_pixels"][i].float() / 255.0 if "reference_pixels" in batch else None
            rows.append(self.mllm.encode_batch([prompt], frames, ref))
        if len({r.shape[1] for r in rows}) > 1:
            raise InputError(f"contexts of one batch have different lengths {[r.shape[1] for r in rows]} (reference "
                             "images of different sizes); use schedule.batch_size = 1, as the release does.")
        return torch.cat(rows)

    def reference_latents(self, batch: dict, scales: torch.Tensor) -> torch.Tensor | None:
        """Reference latents [B, C, 1, h, w]: each reference shrunk by its drawn scale, padded onto a white
        canvas of the video's size, VAE-encoded (the released stage-3 augmentation)."""
        if "reference_pixels" not in batch or self.dit.ref_embedder is None:
            return None
        from comfy_kiwi.frames import frames_to_vae, shrink_and_pad_reference
        out = []
        with torch.no_grad():
            for i in range(batch["target"].shape[0]):
                W, H = (int(v) for v in batch["canvas"][i])          # the item's pixel size
                ref = batch["reference_pixels"][i].float().cpu() / 255.0
                canvas = shrink_and_pad_reference(ref, W, H, float(scales[i]))
                pixels = frames_to_vae(canvas).to(self.vae.device, self.vae.dtype)
                out.append(self.vae.encode(pixels).float())
        return torch.cat(out).to(batch["target"].device)

    def predict(self, x_t, t, sigma, context, batch, ref) -> torch.Tensor:
        dtype = self.dit.dtype
        src = batch["source"].to(dtype) if self.source_input else None
        return self.dit(x_t.to(dtype), t, context.to(dtype), source_latents=src, source_scale=sigma,
                        reference_latents=None if ref is None else ref.to(dtype))

    def forward(self, batch: dict, draws: dict) -> torch.Tensor:
        x0 = batch["target"].float()
        dev = x0.device
        noise, sigma = draws["noise"].to(dev), draws["sigma"].to(dev)
        x_t, target = noisy_and_target(x0, noise, sigma)
        ref = self.reference_latents(batch, draws["reference_scale"])
        pred = self.predict(x_t, draws["t"].to(dev), sigma, self.context(batch), batch, ref)
        factor, threshold, keep = self.edit_region
        region = edit_region_weight(x0, batch["source"], factor, threshold, keep) if factor else None
        return kiwi_loss(pred, target, draws["weight"].to(dev), region)

    # --- parameters -------------------------------------------------------------------------------------
    def named_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        out: dict[str, list] = {g: [] for g in GROUPS}
        for name, p in self.named_parameters():
            g = group_of(name)
            if g is not None:
                out[g].append((name, p))
        return out


def kiwi_state(module: KiwiModule, trainable) -> dict[str, torch.Tensor]:
    """The trained groups under the Kiwi training-checkpoint names (+ ``dit_lora.*``), sharing storage
    with the parameters (so :func:`load_kiwi_state` can copy into them)."""
    from comfy_kiwi.mllm.lora import lora_state_dict
    parts: dict[str, dict] = {p: {} for p in PARTS}
    if any(g in trainable for g in ("dit", "source_embedder", "ref_embedder")):
        for name, value in module.dit.state_dict().items():
            g = group_of("dit." + name)
            if g in trainable:
                parts["dit"][name] = value
    if module.mllm is not None:
        for name, value in module.mllm.state_dict().items():
            g = group_of("mllm." + name)
            if g in trainable and g != "mllm_lora":
                parts["mllm_model" if g == "mllm_model" else "mllm"][name] = value
        if "mllm_lora" in trainable:
            parts["mllm_lora"] = lora_state_dict(module.mllm)
    out = to_kiwi_training_keys(parts)
    if module.adapter is not None and "dit_lora" in trainable:
        out.update({DIT_LORA_PREFIX + k: v for k, v in module.adapter.lora_state_dict().items()})
    return out


def load_kiwi_state(module: KiwiModule, trainable, state: dict[str, torch.Tensor]) -> None:
    """Resume: every trained tensor must be in ``state`` with its shape."""
    ours = kiwi_state(module, trainable)
    missing = sorted(set(ours) - set(state))
    unknown = sorted(set(state) - set(ours))
    if missing or unknown:
        raise CheckpointError(f"the checkpoint does not hold this run's trained tensors (missing: "
                              f"{', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unknown[:5]) or 'none'}); "
                              "was it written with other [method.options] trainable groups?")
    with torch.no_grad():
        for k, v in ours.items():
            if v.shape != state[k].shape:
                raise CheckpointError(f"checkpoint tensor {k} is {list(state[k].shape)}, the model's {list(v.shape)}.")
            v.copy_(state[k].to(v.device, v.dtype))
