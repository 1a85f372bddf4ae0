"""Download hints (``properties.models`` of the loaders) and the size statements of the Note nodes.

Sizes are computed from parameter counts (the architectures, counted on the meta device by
comfy_kiwi.memory.planner), not read off the hub.
"""

from __future__ import annotations

HF = "https://huggingface.co"
RELEASES = {
    "instruct-only": "kiwi-edit-5b-instruct-only-diffusers",
    "reference-only": "kiwi-edit-5b-reference-only-diffusers",
    "instruct-reference": "kiwi-edit-5b-instruct-reference-diffusers",
}
# weight files of a release (config/tokenizer files come with the folder: see docs/COMFYUI.md)
RELEASE_FILES = ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "mllm_encoder/diffusion_pytorch_model.safetensors", "mllm_encoder/model-00001-of-00002.safetensors",
                 "mllm_encoder/model-00002-of-00002.safetensors", "source_embedder/diffusion_pytorch_model.safetensors"]
REF_FILES = ["ref_embedder/diffusion_pytorch_model.safetensors"]
WAN22_VAE = {"name": "wan2.2_vae.safetensors", "directory": "vae",
             "url": f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/vae/wan2.2_vae.safetensors"}


def release_models(kind: str, parts=None) -> list[dict]:
    """Download hints of a release's weight files (all, or those under the given part folders)."""
    repo = RELEASES[kind]
    files = RELEASE_FILES + (REF_FILES if kind != "instruct-only" else [])
    if parts:
        files = [f for f in files if f.split("/")[0] in parts]
    return [{"name": f"{repo}/{f}", "url": f"{HF}/linyq/{repo}/resolve/main/{f}", "directory": "kiwi"} for f in files]


# Download size of a release, computed (not read off the hub): 5.00e9 DiT + 3.75e9 MLLM (Qwen2.5-VL-3B)
# + 0.70e9 VAE parameters (counted from the architectures, comfy_kiwi.memory.planner) × 2 bytes (bf16).
RELEASE_SIZE = "about 19 GB"


def download_note(kinds) -> str:
    lines = [f"Needs the Kiwi-Edit {' or '.join(kinds)} release ({RELEASE_SIZE}: 9.45e9 parameters in bf16). "
             "Download the whole release folder into ComfyUI/models/kiwi/:", ""]
    for kind in kinds:
        lines.append(f"hf download linyq/{RELEASES[kind]} --local-dir models/kiwi/{RELEASES[kind]}")
    lines += ["", "Then press R to refresh the model lists. Details: docs/COMFYUI.md of comfy-kiwi."]
    return "\n".join(lines)


# judge / reward models (stock Hugging Face folders; see docs/JUDGING.md)
QWEN_VL = {"Qwen2.5-VL-7B-Instruct": 5, "Qwen2.5-VL-3B-Instruct": 2}      # folder name: weight shards
CLIP_FOLDERS = {"clip-vit-large-patch14": "openai", "PickScore_v1": "yuvalkirstain"}


def qwen_vl_models(name: str = "Qwen2.5-VL-7B-Instruct") -> list[dict]:
    n = QWEN_VL[name]
    files = [f"model-{i:05}-of-{n:05}.safetensors" for i in range(1, n + 1)]
    return [{"name": f"{name}/{f}", "url": f"{HF}/Qwen/{name}/resolve/main/{f}", "directory": "text_encoders"}
            for f in files]


def clip_models(name: str) -> list[dict]:
    return [{"name": f"{name}/model.safetensors", "url": f"{HF}/{CLIP_FOLDERS[name]}/{name}/resolve/main/"
             "model.safetensors", "directory": "clip_vision"}]


def judge_download_note(clip: bool) -> str:
    lines = ["Judge / grounding model: a stock Qwen2.5-VL folder in ComfyUI/models/text_encoders/ (7B: about "
             "16.6 GB, 3B: about 7.5 GB; 8.29e9 / 3.75e9 parameters in bf16):", ""]
    lines += [f"hf download Qwen/{n} --local-dir models/text_encoders/{n}" for n in QWEN_VL]
    lines += ["", "(7B judges better; 3B fits smaller GPUs: pick it in Kiwi VLM Loader.)"]
    if clip:
        lines += ["", "CLIP and PickScore folders go in ComfyUI/models/clip_vision/ (about 1.7 GB and 3.9 GB: "
                      "0.43e9 / 0.99e9 parameters in fp32):", ""]
        lines += [f"hf download {org}/{n} --local-dir models/clip_vision/{n}" for n, org in CLIP_FOLDERS.items()]
    return "\n".join(lines)


# method workflows (docs/METHODS.md): the method weights come from `python -m trainer train`, not a download
WAN22_TI2V_5B = {"name": "wan2.2_ti2v_5B_fp16.safetensors", "directory": "diffusion_models",
                 "url": f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/diffusion_models/"
                        "wan2.2_ti2v_5B_fp16.safetensors"}

WAN21_UMT5 = "Wan2.1-T2V-1.3B-Diffusers"           # a diffusers Wan2.1 folder: text_encoder/ + tokenizer/ (umT5)
UMT5_DOWNLOAD = (f"hf download Wan-AI/{WAN21_UMT5} --include 'text_encoder/*' 'tokenizer/*' "
                 f"--local-dir models/text_encoders/{WAN21_UMT5}")
WAN21 = f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WAN21_T2V_1_3B = {"name": "wan2.1_t2v_1.3B_fp16.safetensors", "directory": "diffusion_models",
                  "url": f"{WAN21}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors"}
WAN21_VAE = {"name": "wan_2.1_vae.safetensors", "directory": "vae", "url": f"{WAN21}/vae/wan_2.1_vae.safetensors"}


def umt5_models() -> list[dict]:
    """The umT5-XXL weight shards of the diffusers Wan2.1 folder (its tokenizer/ comes with UMT5_DOWNLOAD)."""
    return [{"name": f"{WAN21_UMT5}/text_encoder/model-{i:05}-of-00005.safetensors", "directory": "text_encoders",
             "url": f"{HF}/Wan-AI/{WAN21_UMT5}/resolve/main/text_encoder/model-{i:05}-of-00005.safetensors"}
            for i in range(1, 6)]


def wan21_t2v_1_3b_size() -> str:
    """The download size of the ImVideoEdit workflow's models, from their parameter counts (comfy_kiwi.memory.planner:
    the DiT and VAE built on the meta device; umT5-XXL's count): the DiT and VAE files at 2 bytes per parameter,
    the umT5 shards of the diffusers folder at 4 (fp32)."""
    from comfy_kiwi.memory.planner import MODELS, dit_sizes, vae_params
    sizes = dit_sizes("wan2.1-t2v-1.3b")
    dit, vae = sizes["block"] * sizes["layers"] + sizes["rest"], vae_params("2.1")
    umt5 = MODELS["wan2.1-t2v-1.3b"]["encoder_params"]
    total = (dit + vae) * 2 + umt5 * 4
    return (f"about {total / 1e9:.0f} GB together: {dit / 1e9:.2f}e9 DiT + {vae / 1e9:.2f}e9 VAE parameters at 2 bytes "
            f"= {(dit + vae) * 2 / 1e9:.1f} GB, umT5-XXL {umt5 / 1e9:.2f}e9 parameters in fp32 = {umt5 * 4 / 1e9:.1f} GB")
