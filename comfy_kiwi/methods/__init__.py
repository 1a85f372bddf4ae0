"""The five methods, one entry module each (its loading, encoding and sampling: the one call of the nodes, the
command line and the trainer's evaluation), plus their add-ons to the shared DiT, encoder, sampler and trainer:

- Kiwi-Edit    methods.kiwi_edit (load, encode, sample, edit): the library's defaults — comfy_kiwi.mllm (KIWI_EDIT
               preset), models.conditioning + WanDiT (σ- or γ(t)-scaled source, reference tokens), pipeline
- InstructX    methods.instructx (load with the INSTRUCTX MLLM preset, long-video windows over kiwi_edit.sample)
- VIVA         methods.viva (attach, weights, encode, RefinedContext: the per-step context hook, sample, edit),
               viva_refiner, viva_source (the "concat" source strategy), viva_loss, mllm.instructor (VLM last hidden
               states); Edit-GRPO: methods.flow_grpo (math), methods.edit_grpo (rollouts, policy loss)
- RVEDiT       methods.rvedit_streams (X_e / X_v / X_ℓ, routing, sample, edit), methods.rvedit (routed conditioning,
               attention tap, InfoNCE alignment)
- ImVideoEdit  methods.imvideoedit_pipeline (load, caption context, sample, edit), methods.imvideoedit
               (Predict-Update modules)

The core (models/, sampling/, pipeline.py) imports none of these and names no method: a method attaches its pieces
(a source strategy, a per-step context hook, per-block routing, block hooks). Add-ons attach to a base Wan DiT
without changing its weights or key layout. docs/METHODS.md maps each paper's equations to these functions.
"""

# A method's WanDiT strategies register by name when their module is imported; importing any method
# module imports this package first, so "concat" (VIVA) is known wherever a method may ask for it.
from . import viva_source  # noqa: E402,F401
