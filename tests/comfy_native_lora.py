"""Run with ComfyUI's Python: load a Wan DiT with ComfyUI's own loader and a LoRA with its own LoRA code.

    python tests/comfy_native_lora.py <ComfyUI dir> <Wan DiT file> <LoRA file> <strength>

Prints one JSON line: the LoRA file's key count, the modules ComfyUI's loader mapped ("loaded"), the keys
it reported as not loaded ("unmapped", from its "lora key not loaded" warnings), the weights it patched,
and the largest difference between a patched weight and W + strength · alpha/rank · B·A computed here from
the two files (the standard LoRA formula). Used by tests/test_real_comfyui.py.
"""

import json
import logging
import sys

comfyui, dit_path, lora_path, strength = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
sys.path.insert(0, comfyui)
sys.argv = [sys.argv[0], "--cpu"]            # ComfyUI reads its command line on import
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.lora  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import torch  # noqa: E402


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.unmapped = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("lora key not loaded:"):
            self.unmapped.append(msg.split(":", 1)[1].strip())


collect = Collect()
logging.getLogger().addHandler(collect)
patcher = comfy.sd.load_diffusion_model(dit_path)
lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
loaded = comfy.lora.load_lora(lora, key_map)
patched_model, _ = comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0)
patched_keys = set(patched_model.patches)
patched_model.patch_model()
weights = patched_model.model.state_dict()
base = comfy.utils.load_torch_file(dit_path, safe_load=True)

max_err, checked = 0.0, 0
for key in [k for k in lora if k.endswith(".lora_A.weight")]:
    module = key[:-len(".lora_A.weight")].removeprefix("diffusion_model.")
    if module + ".weight" not in base:
        continue                             # not a layer of this model: reported in "unmapped"
    a, b = lora[key].float(), lora[key.replace("lora_A", "lora_B")].float()
    alpha = lora.get(key.replace(".lora_A.weight", ".alpha"))
    scale = (float(alpha) / a.shape[0]) if alpha is not None else 1.0
    expected = base[module + ".weight"].float() + strength * scale * (b @ a)
    got = weights["diffusion_model." + module + ".weight"].float()
    max_err = max(max_err, (got - expected).abs().max().item())
    checked += 1

print(json.dumps({"lora_keys": len(lora), "loaded": len(loaded), "unmapped": collect.unmapped,
                  "patched": len(patched_keys), "checked": checked, "max_abs_err": max_err,
                  "model": type(patcher.model).__name__}))
