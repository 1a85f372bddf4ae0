"""Per-paper additions to the shared DiT, encoder, sampler and trainer. Where each method lives:

- Kiwi-Edit    comfy_kiwi.mllm (KIWI_EDIT preset), models.conditioning + WanDiT (σ-scaled source, reference
               tokens), pipeline.EditPipeline
- InstructX    comfy_kiwi.mllm.config.INSTRUCTX, comfy_kiwi.long_video (sliding windows)
- VIVA         methods.viva_refiner, methods.viva_source, methods.viva_loss, methods.flow_grpo (Edit-GRPO)
- RVEDiT       methods.rvedit (routed conditioning, attention tap, InfoNCE alignment)
- ImVideoEdit  methods.imvideoedit (Predict-Update modules), methods.imvideoedit_pipeline (inference)

Add-ons attach to a base Wan DiT without changing its weights or key layout. docs/METHODS.md maps
each paper's equations to these functions.
"""
