"""comfy-kiwi: instruction- and reference-guided video editing on Wan video DiTs.

Public API (imported lazily, so ``import comfy_kiwi`` stays cheap)::

    load_dit(path_or_folder_or_state_dict, dtype=None, device="cpu", attention="auto") -> WanDiT
    load_vae(path_or_folder, dtype=None, device="cpu") -> WanVAE
    load_mllm_encoder(path, base=None, dtype=None, device="cpu", preset=None) -> MLLMEncoder
    EditPipeline.from_pretrained(release_folder, ...).edit(frames, instruction, reference=None, settings=None)
    EditSettings, read_video, write_video, prepare_frames, describe
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_dit": "comfy_kiwi.loading.dit_loader",
    "describe_dit": "comfy_kiwi.loading.dit_loader",
    "load_vae": "comfy_kiwi.loading.vae_loader",
    "describe_vae": "comfy_kiwi.loading.vae_loader",
    "load_mllm_encoder": "comfy_kiwi.mllm.loader",
    "describe": "comfy_kiwi.loading.inspect",
    "EditPipeline": "comfy_kiwi.pipeline",
    "EditSettings": "comfy_kiwi.pipeline",
    "sample_edit": "comfy_kiwi.pipeline",
    "read_video": "comfy_kiwi.video_io",
    "write_video": "comfy_kiwi.video_io",
    "prepare_frames": "comfy_kiwi.frames",
    "load_image": "comfy_kiwi.frames",
    "WanDiT": "comfy_kiwi.models.wan_dit",
    "WanVAE": "comfy_kiwi.models.wan_vae",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'comfy_kiwi' has no attribute {name!r}")
