"""Kiwi ImVideoEdit Loader: the trained Predict-Update modules of ImVideoEdit, to apply to a Wan2.1 DiT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .common import KIWI_DIT, files_fingerprint, kiwi, tip

KIWI_IMVIDEOEDIT = "KIWI_IMVIDEOEDIT"
CATEGORY_IMVIDEOEDIT = "Kiwi Edit/ImVideoEdit"


@dataclass(frozen=True)
class ImVideoEditHandle:
    """A DiT handle plus ImVideoEdit weights. The (possibly shared, cached) DiT is only hooked inside
    ``applied()``, so other nodes using the same DiT never see the modules."""

    dit: object                      # comfy_kiwi.models.dit_lora.DiTHandle
    weights: dict

    def applied(self):
        return kiwi("methods.imvideoedit").applied(self.dit.model, self.weights)


def _resolve(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() and path.is_file():       # scripts and tests may pass a full path
        return path
    return kiwi("model_folders").resolve("lora", name)


class KiwiImVideoEditLoader:
    DESCRIPTION = ("Load ImVideoEdit weights (imvideoedit.blocks.N.*, written by `python -m trainer train` with "
                   "the imvideoedit preset) for a Wan2.1 T2V DiT. The modules run beside every self-attention, "
                   "edit each frame of the source video, and leave the DiT's own weights untouched.")
    CATEGORY = CATEGORY_IMVIDEOEDIT
    FUNCTION = "load"
    RETURN_TYPES = (KIWI_IMVIDEOEDIT,)
    RETURN_NAMES = ("imvideoedit",)
    OUTPUT_TOOLTIPS = ("The DiT together with the ImVideoEdit modules, applied while an ImVideoEdit sampler runs.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights_name": (kiwi("model_folders").choices("lora"),
                             tip("The ImVideoEdit weights file (safetensors) in models/loras/.")),
            "dit": (KIWI_DIT, tip("The Wan2.1 T2V DiT the modules were trained on (e.g. Wan2.1-T2V-1.3B).")),
        }}

    @classmethod
    def IS_CHANGED(cls, weights_name, **_):
        return files_fingerprint("lora", weights_name)

    def load(self, weights_name, dit):
        ive = kiwi("methods.imvideoedit")
        path = _resolve(weights_name)
        weights = kiwi("model_cache").cached_load("imvideoedit", path, lambda: ive.read_weights(path))
        with ive.applied(dit.model, weights):          # checks the shapes against this DiT now, not at sampling
            pass
        return (ImVideoEditHandle(dit, weights),)


NODE_CLASS_MAPPINGS = {"KiwiImVideoEditLoader": KiwiImVideoEditLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"KiwiImVideoEditLoader": "Kiwi ImVideoEdit Loader"}
