"""Per-paper additions to the shared DiT, encoder, sampler and trainer. Where each method lives:

- Kiwi-Edit    comfy_kiwi.mllm (KIWI_EDIT preset), models.conditioning + WanDiT (σ-scaled source, reference
               tokens), pipeline.EditPipeline
- InstructX    comfy_kiwi.mllm.config.INSTRUCTX, comfy_kiwi.long_video (sliding windows)
- VIVA         methods.viva (attach, weights, sampler conditioning), viva_refiner, viva_source, viva_loss,
               mllm.instructor (VLM last hidden states); Edit-GRPO: methods.flow_grpo (math), methods.edit_grpo
               (rollouts, policy loss)
- RVEDiT       methods.rvedit (routed conditioning, attention tap, InfoNCE alignment), methods.rvedit_streams
               (X_e / X_v / X_ℓ, trainable X_v embedder)
- ImVideoEdit  methods.imvideoedit (Predict-Update modules), methods.imvideoedit_pipeline (inference)

Add-ons attach to a base Wan DiT without changing its weights or key layout. docs/METHODS.md maps
each paper's equations to these functions.
"""

# A method's WanDiT strategies register by name when their module is imported; importing any method
# module imports this package first, so "concat" (VIVA) is known wherever a method may ask for it.
from . import viva_source  # noqa: E402,F401
