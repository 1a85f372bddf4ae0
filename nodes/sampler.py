"""Kiwi Sampler: the flow-matching Euler sampler of Kiwi-Edit, with ComfyUI's progress bar and cancel."""

from __future__ import annotations

from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.comfyui import placement
from comfy_kiwi.errors import InputError

from .common import (CATEGORY_SAMPLING, KIWI_CONDITIONING, KIWI_DIT, KIWI_LATENT, KIWI_SOURCE,
                     seed_steps_shift_inputs, tip)
from .common import step_cache_input


def check_compatible(dit, cond, source, cfg: float) -> None:
    """Mismatched parts fail here with a message naming the fix, not deep inside the model."""
    model, c = dit.model, dit.model.config
    if source.source_latents is None:
        raise InputError("the source has no latents; connect Kiwi Encode Source.")
    if getattr(model, "source_embedder", None) is None:
        raise InputError("this DiT has no Kiwi-Edit source embedder, so it cannot edit a video. Load a Kiwi-Edit "
                         "release (Kiwi Release Loader) or a Kiwi training checkpoint with Kiwi DiT Loader.")
    channels = source.source_latents.shape[1]
    if channels != c.in_dim:
        raise InputError(f"the source was encoded by a VAE with {channels} latent channels, but this DiT takes "
                         f"{c.in_dim}. Use the VAE that belongs to the DiT (Wan2.2 VAE for the 5B Kiwi-Edit models).")
    width = cond.context.shape[-1]
    if width != c.dim:
        raise InputError(f"the conditioning is {width} wide but this DiT takes {c.dim}-wide context: the MLLM "
                         "encoder belongs to a different model. Load DiT and MLLM from the same release.")
    ref = source.reference_latents
    if ref is not None:
        if getattr(model, "ref_embedder", None) is None:
            raise InputError("a reference image was given, but this DiT was not trained with references (an "
                             "instruction-only release). Disconnect the reference from Kiwi Encode Source, or load "
                             "a reference-only or instruct-reference release.")
        if tuple(ref.shape[3:]) != tuple(source.source_latents.shape[3:]):
            raise InputError(f"the reference latents are {tuple(ref.shape[3:])} but the source latents "
                             f"{tuple(source.source_latents.shape[3:])}: encode the reference together with the "
                             "source in one Kiwi Encode Source node (it fits the reference to the source size).")
    if cfg != 1.0 and cond.negative is None:
        raise InputError(f"cfg is {cfg:g} but the conditioning has no negative: turn on encode_negative in Kiwi "
                         "MLLM Encode, or set cfg to 1.0 (no guidance, as the releases do).")


class KiwiSampler:
    DESCRIPTION = ("Generate the edited video latents: Euler steps on the shifted flow-matching schedule of "
                   "Kiwi-Edit (defaults = the release: 50 steps, shift 5, cfg 1). The DiT sees the noisy latents "
                   "plus the source latents scaled by the noise level, the reference tokens, and the MLLM context. "
                   "Shows progress and stops at the next step when the queue is cancelled.")
    CATEGORY = CATEGORY_SAMPLING
    FUNCTION = "sample"
    RETURN_TYPES = (KIWI_LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Edited Wan latents (normalised), for Kiwi VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": (KIWI_DIT, tip("The DiT (with any LoRAs) from a Kiwi loader.")),
            "conditioning": (KIWI_CONDITIONING, tip("The instruction context from Kiwi MLLM Encode.")),
            "source": (KIWI_SOURCE, tip("Source (and reference) latents from Kiwi Encode Source.")),
            **seed_steps_shift_inputs(
                "Seed of the starting noise (drawn on the CPU, so a seed gives the same result on every machine).",
                "Sampling steps. The release uses 50; 20-30 are often enough.",
                "Schedule shift: higher spends more steps at high noise. The release uses 5."),
            "cfg": ("FLOAT", tip("Classifier-free guidance on the instruction. 1.0 = off (the release); > 1 needs "
                                 "encode_negative in Kiwi MLLM Encode and doubles the work per step.",
                                 default=1.0, min=0.0, max=30.0, step=0.1, round=0.01)),
            "denoise": ("FLOAT", tip("1.0 starts from pure noise. Lower values start from the noised source and "
                                     "keep more of it (weaker edits).", default=1.0, min=0.01, max=1.0, step=0.01)),
            "schedule": (["kiwi", "diffusers"], tip("Last noise level: kiwi goes down to 0 (training/benchmark code), "
                                                    "diffusers stops at 0.003 (the diffusers pipeline of the release).",
                                                    default="kiwi")),
        }, "optional": {
            "block_swap": ("INT", tip("DiT blocks kept in CPU RAM and moved to the GPU one at a time: less VRAM, "
                                      "slower. 0 = off; -1 = auto (the memory planner picks the count for the free "
                                      "VRAM; off on CPU). `python -m comfy_kiwi plan` shows the arithmetic.",
                                      default=-1, min=-1, max=64)),
            **step_cache_input(),
        }}

    def sample(self, dit, conditioning, source, seed, steps, shift, cfg, denoise, schedule, block_swap=-1,
               step_cache=0.0):
        from comfy_kiwi import pipeline
        from comfy_kiwi.methods import kiwi_edit
        if not (isinstance(conditioning, pipeline.EditConditioning)
                and isinstance(source, pipeline.SourceConditioning)):
            raise InputError(
                "connect conditioning to Kiwi MLLM Encode and source to Kiwi Encode Source; got "
                f"{type(conditioning).__name__} and {type(source).__name__}.")
        if int(block_swap) < -1:
            raise InputError(f"block_swap must be −1 (auto), 0 (off) or a block count; got {block_swap}.")
        check_compatible(dit, conditioning, source, float(cfg))
        device = comfy_adapter.compute_device()
        n = self.swap_count(dit, source, device, int(block_swap), float(cfg) != 1.0)
        settings = pipeline.EditSettings(steps=int(steps), shift=float(shift), schedule=schedule, cfg=float(cfg),
                                         seed=int(seed), denoise=float(denoise), progress=True, block_swap=n,
                                         step_cache=float(step_cache))
        if n == 0:
            with placement.on_device(dit.model, device), dit.applied():
                latents = kiwi_edit.sample(dit.model, conditioning, source, settings, device=device)
        else:  # the swap moves the resident parts itself; LoRA hooks go on first so the RAM copies carry them
            home = placement.module_device(dit.model)
            try:
                with dit.applied():
                    latents = kiwi_edit.sample(dit.model, conditioning, source, settings, device=device)
            finally:
                dit.model.to(home)
        return (latents.float().cpu(),)

    @staticmethod
    def swap_count(dit, source, device, requested: int, cfg: bool) -> int:
        """The block-swap count: as asked, or (−1) the planner's choice for the free VRAM (0 off CUDA and
        for DiTs the planner does not know)."""
        import torch
        if requested >= 0:
            return requested
        if torch.device(device).type != "cuda":
            return 0
        free_gb = torch.cuda.mem_get_info(device)[0] / 2**30
        from comfy_kiwi.memory import planner
        try:
            return planner.block_swap_for(dit.model.config, source.source_latents.shape, free_gb,
                                          cfg=cfg, reference=source.reference_latents is not None)
        except InputError:
            return 0


NODE_CLASS_MAPPINGS = {"KiwiSampler": KiwiSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiSampler": "Kiwi Sampler"}
