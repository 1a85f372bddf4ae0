"""RVEDiT nodes: the trained X_v embedder (+ routing split) and the routed sampler.

Wiring: Kiwi DiT Loader ─→ Kiwi RVEDiT Loader ───────────────────┐
        Kiwi MLLM Loader → Kiwi MLLM Encode (X_e) ───────────────┤
        Kiwi UMT5 Loader → Kiwi UMT5 Encode (caption, X_ℓ) ──────┼→ Kiwi RVEDiT Sampler → Kiwi VAE Decode
        Kiwi VAE Loader → Kiwi Encode Source (X_v) ──────────────┘

Custom type of this module: KIWI_RVEDIT = comfy_kiwi.methods.rvedit_streams.RVEDiTStreams.
The alignment loss is training-only: inference costs one routed DiT pass per step (two with CFG).
"""

from __future__ import annotations

from .common import (KIWI_CONDITIONING, KIWI_DIT, KIWI_LATENT, KIWI_SOURCE, files_fingerprint, kiwi, resolve_weights,
                     seed_steps_shift_inputs, tip)
from .imvideoedit import KIWI_UMT5_CONDITIONING

KIWI_RVEDIT = "KIWI_RVEDIT"
CATEGORY_RVEDIT = "Kiwi Edit/RVEDiT"


class KiwiRVEDiTLoader:
    DESCRIPTION = ("Load RVEDiT weights (rvedit.safetensors from `python -m trainer train` with an rvedit preset): the "
                   "source-video token embedder X_v and the routing split L_s. Blocks before L_s attend to the "
                   "editing tokens X_e only; deeper blocks to [X_e; X_v; X_ℓ].")
    CATEGORY = CATEGORY_RVEDIT
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_RVEDIT,)
    RETURN_NAMES = ("rvedit",)
    OUTPUT_TOOLTIPS = ("The X_v embedder and L_s, for Kiwi RVEDiT Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights_name": (kiwi("model_folders").choices("rvedit"),
                             tip("The RVEDiT weights file (safetensors) in models/loras/.")),
            "dit": (KIWI_DIT, tip("The DiT the weights were trained with (its fine-tuned DiT file, or the base DiT "
                                  "plus the run's LoRA).")),
            "split": ("INT", tip("L_s: blocks [0, L_s) see only the editing tokens. -1 = the value trained with "
                                 "(default half the depth).", default=-1, min=-1, max=128)),
        }}

    @classmethod
    def IS_CHANGED(cls, weights_name, **_):
        return files_fingerprint("lora", weights_name)

    def load(self, weights_name, dit, split):
        path, split = resolve_weights(weights_name), int(split)
        n = len(dit.model.blocks)
        if split > n:
            raise kiwi("errors").InputError(f"split {split} is larger than this DiT's {n} blocks.")
        streams = kiwi("methods.rvedit_streams")
        c = dit.model.config
        return (kiwi("model_cache").cached_load(
            "rvedit", path, lambda: streams.load_rvedit(path, dit.model, None if split < 0 else split),
            dim=c.dim, in_dim=c.in_dim, split=split),)


class KiwiRVEDiTSampler:
    DESCRIPTION = ("Edit with RVEDiT's granularity-routed conditioning: X_e = the instruction context (Kiwi MLLM "
                   "Encode), X_v = the source latents through the trained embedder, X_ℓ = the caption's umT5 rows "
                   "through the DiT's text embedding. Shallow blocks see X_e only, deep blocks all three.")
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
            "conditioning": (KIWI_CONDITIONING, tip("The editing tokens X_e from Kiwi MLLM Encode.")),
            "source": (KIWI_SOURCE, tip("Source latents from Kiwi Encode Source (they also give X_v).")),
            **seed_steps_shift_inputs(),
            "cfg": ("FLOAT", tip("Classifier-free guidance on the instruction (needs encode_negative in Kiwi MLLM "
                                 "Encode); 1.0 = off.", default=1.0, min=1.0, max=30.0, step=0.1, round=0.01)),
        }, "optional": {
            "caption": (KIWI_UMT5_CONDITIONING, tip("The source caption's umT5 rows (Kiwi UMT5 Encode) = X_ℓ. "
                                                    "Without it the deep blocks see [X_e; X_v].")),
        }}

    def sample(self, dit, rvedit, conditioning, source, seed, steps, shift, cfg, caption=None):
        errors, pipeline, placement = kiwi("errors"), kiwi("pipeline"), kiwi("placement")
        model, c = dit.model, dit.model.config
        if source.source_latents is None:
            raise errors.InputError("the source has no latents; connect Kiwi Encode Source.")
        if conditioning.context.shape[-1] != c.dim:
            raise errors.InputError(f"the conditioning is {conditioning.context.shape[-1]} wide but this DiT takes "
                                    f"{c.dim}-wide editing tokens: use the MLLM encoder that belongs to the DiT.")
        if caption is not None and caption.context.shape[-1] != c.text_dim:
            raise errors.InputError(f"the caption is {caption.context.shape[-1]} wide but this DiT's text embedding "
                                    f"takes {c.text_dim}: use the umT5 encoder of this Wan model.")
        if float(cfg) != 1.0 and conditioning.negative is None:
            raise errors.InputError(f"cfg is {float(cfg):g} but the conditioning has no negative: turn on "
                                    "encode_negative in Kiwi MLLM Encode, or set cfg to 1.0.")
        settings = pipeline.EditSettings(steps=int(steps), shift=float(shift), seed=int(seed), cfg=float(cfg),
                                         progress=True)
        device = kiwi("comfy_adapter").compute_device()
        with placement.on_device(model, device), dit.applied():
            rvedit.to(device)
            cond = kiwi("methods.rvedit_streams").routed_conditioning(
                model, rvedit, conditioning, source.source_latents, None if caption is None else caption.context)
            if model.source_embedder is None:       # a plain Wan DiT: the source reaches it through X_v only
                source = pipeline.SourceConditioning(source.source_latents, feed_dit=False)
            latents = pipeline.sample_edit(model, cond, source, settings, device=device)
        return (latents.float().cpu(),)


NODE_CLASS_MAPPINGS = {"KiwiRVEDiTLoader": KiwiRVEDiTLoader, "KiwiRVEDiTSampler": KiwiRVEDiTSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiRVEDiTLoader": "Kiwi RVEDiT Loader", "KiwiRVEDiTSampler": "Kiwi RVEDiT Sampler"}
