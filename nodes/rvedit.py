"""RVEDiT nodes: the trained X_v embedder (+ routing split) and the routed sampler.

Wiring: Kiwi DiT Loader + MLLM ─→ Kiwi RVEDiT Loader ─────────────────┐
        (its trained MLLM) → Kiwi MLLM Encode (instruction: X_e) ────┤
        Kiwi UMT5 Loader → Kiwi UMT5 Encode (the instruction: X_ℓ) ──┼→ Kiwi RVEDiT Sampler → Kiwi VAE Decode
        Kiwi VAE Loader → Kiwi Encode Source (X_v) ──────────────────┘

The streams are the trainer's: X_e from the MLLM with the run's trained connector + LoRA, X_v from the source
latents, X_ℓ from the umT5 rows of the same instruction.

Custom type of this module: KIWI_RVEDIT = comfy_kiwi.methods.rvedit_streams.RVEDiTStreams.
The alignment loss is training-only: inference costs one routed DiT pass per step (two with CFG).
"""

from __future__ import annotations

from comfy_kiwi import errors
from comfy_kiwi.comfyui import adapter as comfy_adapter
from comfy_kiwi.comfyui import model_cache, model_folders, placement

from .common import (KIWI_CONDITIONING, KIWI_DIT, KIWI_LATENT, KIWI_MLLM, KIWI_SOURCE, files_fingerprint,
                     resolve_weights, seed_steps_shift_inputs, tip)
from .common import step_cache_input
from .imvideoedit import KIWI_UMT5_CONDITIONING

KIWI_RVEDIT = "KIWI_RVEDIT"
CATEGORY_RVEDIT = "Kiwi Edit/RVEDiT"


class KiwiRVEDiTLoader:
    DESCRIPTION = ("Load RVEDiT weights (rvedit.safetensors from `python -m trainer train` with an rvedit preset): the "
                   "source-video token embedder X_v, the routing split L_s, and the MLLM-to-DiT connector + MLLM "
                   "LoRA that trained with the DiT (applied to a copy of the connected MLLM). Blocks before L_s "
                   "attend to the editing tokens X_e only; deeper blocks to [X_e; X_v; X_ℓ].")
    CATEGORY = CATEGORY_RVEDIT
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_RVEDIT, KIWI_MLLM)
    RETURN_NAMES = ("rvedit", "mllm")
    OUTPUT_TOOLTIPS = ("The X_v embedder and L_s, for Kiwi RVEDiT Sampler.",
                       "The MLLM with the run's trained connector + LoRA, for Kiwi MLLM Encode (X_e).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights_name": (model_folders.choices("rvedit"),
                             tip("The RVEDiT weights file (safetensors) in models/loras/.")),
            "dit": (KIWI_DIT, tip("The DiT the weights were trained with (its fine-tuned DiT file, or the base DiT "
                                  "plus the run's LoRA).")),
            "split": ("INT", tip("L_s: blocks [0, L_s) see only the editing tokens. -1 = the value trained with "
                                 "(default half the depth).", default=-1, min=-1, max=128)),
            "mllm": (KIWI_MLLM, tip("The MLLM encoder the run started from (the release's); it is not changed.")),
        }}

    @classmethod
    def IS_CHANGED(cls, weights_name, **_):
        return files_fingerprint("lora", weights_name)

    def load(self, weights_name, dit, split, mllm):
        path, split = resolve_weights(weights_name), int(split)
        n = len(dit.model.blocks)
        if split > n:
            raise errors.InputError(f"split {split} is larger than this DiT's {n} blocks.")
        from comfy_kiwi.methods import rvedit_streams as streams
        c = dit.model.config
        weights = model_cache.cached_load("rvedit", path,
                                          lambda: streams.load_rvedit(path, dit.model, None if split < 0 else split),
                                          dim=c.dim, in_dim=c.in_dim, split=split)
        trained = model_cache.cached_load("rvedit_mllm", path, lambda: streams.trained_mllm(mllm, path), mllm=id(mllm))
        return (weights, trained)


class KiwiRVEDiTSampler:
    DESCRIPTION = ("Edit with RVEDiT's granularity-routed conditioning, fed as in training: X_e = the instruction "
                   "context (Kiwi MLLM Encode with the MLLM from Kiwi RVEDiT Loader), X_v = the source latents through "
                   "the trained embedder, X_ℓ = the same instruction's umT5 rows (Kiwi UMT5 Encode) through the DiT's "
                   "text embedding. Shallow blocks see X_e only, deep blocks all three.")
    CATEGORY = CATEGORY_RVEDIT
    FUNCTION = "sample"
    RETURN_TYPES = (KIWI_LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Edited Wan latents (normalised), for Kiwi VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": (KIWI_DIT, tip("The DiT (with any LoRAs) from a Kiwi loader.")),
            "rvedit": (KIWI_RVEDIT, tip("The RVEDiT weights from Kiwi RVEDiT Loader.")),
            "conditioning": (KIWI_CONDITIONING, tip("The editing tokens X_e from Kiwi MLLM Encode, run with the MLLM "
                                                    "output of Kiwi RVEDiT Loader (the trained connector + LoRA).")),
            "source": (KIWI_SOURCE, tip("Source latents from Kiwi Encode Source (they also give X_v).")),
            **seed_steps_shift_inputs(),
            "cfg": ("FLOAT", tip("Classifier-free guidance on the instruction (needs encode_negative in Kiwi MLLM "
                                 "Encode); 1.0 = off.", default=1.0, min=1.0, max=30.0, step=0.1, round=0.01)),
            "instruction_text": (KIWI_UMT5_CONDITIONING, tip(
                "X_ℓ: the umT5 rows of the same instruction given to Kiwi MLLM Encode (Kiwi UMT5 Encode, text_len "
                "as trained, 512), exactly what the trainer feeds the deep blocks.")),
        }, "optional": step_cache_input()}

    def sample(self, dit, rvedit, conditioning, source, seed, steps, shift, cfg, instruction_text, step_cache=0.0):
        from comfy_kiwi import pipeline
        from comfy_kiwi.methods import rvedit_streams as streams
        model, c = dit.model, dit.model.config
        if source.source_latents is None:
            raise errors.InputError("the source has no latents; connect Kiwi Encode Source.")
        if conditioning.context.shape[-1] != c.dim:
            raise errors.InputError(f"the conditioning is {conditioning.context.shape[-1]} wide but this DiT takes "
                                    f"{c.dim}-wide editing tokens: use the MLLM encoder that belongs to the DiT.")
        if instruction_text.context.shape[-1] != c.text_dim:
            raise errors.InputError(f"instruction_text is {instruction_text.context.shape[-1]} wide but this DiT's text "
                                    f"embedding takes {c.text_dim}: use the umT5 encoder of this Wan model.")
        if float(cfg) != 1.0 and conditioning.negative is None:
            raise errors.InputError(f"cfg is {float(cfg):g} but the conditioning has no negative: turn on "
                                    "encode_negative in Kiwi MLLM Encode, or set cfg to 1.0.")
        settings = pipeline.EditSettings(steps=int(steps), shift=float(shift), seed=int(seed), cfg=float(cfg),
                                         progress=True, step_cache=float(step_cache))
        device = comfy_adapter.compute_device()
        with placement.on_device(model, device), dit.applied():
            rvedit.to(device)
            latents = streams.sample(model, rvedit, conditioning, source, instruction_text.context, settings,
                                     device=device)
        return (latents.float().cpu(),)


NODE_CLASS_MAPPINGS = {"KiwiRVEDiTLoader": KiwiRVEDiTLoader, "KiwiRVEDiTSampler": KiwiRVEDiTSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiRVEDiTLoader": "Kiwi RVEDiT Loader", "KiwiRVEDiTSampler": "Kiwi RVEDiT Sampler"}
