"""ComfyUI node classes of comfy-kiwi: thin wrappers that validate inputs and call ``comfy_kiwi``.

One module per feature; each defines its own NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS,
collected here in menu order.
"""

from comfy_kiwi.comfyui import adapter as comfy_adapter

from . import (comfy_latent, decode, imvideoedit, judge, load_parts, load_release, long_video, lora, mllm_encode, prepare_frames,
               reference, rewards, rvedit, sampler, source_encode, toy, viva)

# models/kiwi/ for whole release folders (only inside ComfyUI; configured paths are kept)
comfy_adapter.register_model_folder("kiwi")
comfy_adapter.register_model_folder("sams")      # Segment Anything folders (Kiwi SAM Loader)

_FEATURES = (load_release, load_parts, lora, prepare_frames, mllm_encode, source_encode, sampler, long_video, decode, comfy_latent,
             imvideoedit, viva, rvedit, judge, rewards, reference, toy)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _FEATURES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
