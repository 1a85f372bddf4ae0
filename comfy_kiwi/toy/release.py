"""Toy models in the Kiwi-Edit release layout, and loading them as an ``EditPipeline``.

The folder is a normal release folder — ``transformer/`` (diffusers keys), ``source_embedder/``,
``ref_embedder/``, ``mllm_encoder/`` (legacy Qwen keys + queries/connectors), ``processor/`` — except
``vae/``, which holds only ``config.json`` naming the toy patch codec (``codec.py``). The project's
DiT and MLLM loaders read it unchanged; :func:`load_toy_pipeline` adds the codec. The embedded default
lives in ``comfy_kiwi/toy/default_model/`` (DiT in float16, the rest float32: about 15 MB).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from .codec import is_codec_folder, load_codec, write_codec_folder

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def _write_processor(folder: Path, encoder) -> None:
    from ..testing.tiny_qwen import qwen_preprocessor_configs
    tok = encoder.processor.tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("chat_template", None)
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"     # word-level: no Qwen BPE files
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    (folder / "chat_template.jinja").write_text(encoder.processor.chat_template)
    image, video = qwen_preprocessor_configs()
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    qwen_cfg = encoder.model.config.to_dict()
    (folder / "qwen_config.json").write_text(json.dumps(qwen_cfg, indent=2, default=str))


def write_toy_release(root, dit, encoder, train_info: dict | None = None,
                      dit_dtype: torch.dtype = torch.float16) -> Path:
    """Write trained toy models (``sigma_add`` source mode: the release's) as a release folder. The DiT
    is stored in ``dit_dtype`` (float16 halves the package size; loaders upcast it)."""
    from ..testing.tiny_dit import write_diffusers_folder, write_kiwi_release
    from ..testing.tiny_qwen import legacy_qwen_state
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    write_kiwi_release(dit, root, reference_first=False, with_reference=dit.ref_embedder is not None)
    shutil.rmtree(root / "transformer")
    # (no cast when the model already has the dtype: diffusers warns about casting its fp32-kept modules)
    # shards of ≤ 8 MB (the diffusers layout real Wan releases use), so no file in the repository passes 10 MB
    write_diffusers_folder(dit, root / "transformer", max_shard_size="8MB",
                           dtype=None if dit_dtype == dit.dtype else dit_dtype)
    write_codec_folder(root / "vae")
    enc_dir = root / "mllm_encoder"
    enc_dir.mkdir(parents=True, exist_ok=True)
    save_file(legacy_qwen_state(encoder.model), str(enc_dir / "model.safetensors"), metadata={"format": "pt"})
    save_file({k: v.detach().contiguous() for k, v in encoder.extras_state_dict().items()},
              str(enc_dir / "diffusion_pytorch_model.safetensors"))
    (enc_dir / "config.json").write_text(json.dumps(encoder.config.to_release_json(), indent=2))
    _write_processor(root / "processor", encoder)
    if train_info is not None:
        (root / "training.json").write_text(json.dumps(train_info, indent=2, default=str))
    return root


def is_toy_release(folder) -> bool:
    folder = Path(folder)
    return folder.is_dir() and is_codec_folder(folder / "vae")


def load_toy_pipeline(folder=None, device="cpu", dtype: torch.dtype = torch.float32):
    """An ``EditPipeline`` of a toy release folder (default: the embedded default model)."""
    from ..loading.dit_loader import load_dit
    from ..mllm.loader import load_mllm_encoder
    from ..pipeline import EditPipeline
    folder = Path(folder) if folder is not None else DEFAULT_MODEL_DIR
    if not is_toy_release(folder):
        raise CheckpointError(f"{folder}: not a toy model folder (vae/config.json must name the "
                              "KiwiToyPatchCodec); expected a folder written by comfy_kiwi.toy.release.")
    device = torch.device(device)
    dit = load_dit(folder, dtype=dtype, device=device)
    encoder = load_mllm_encoder(folder, dtype=dtype, device=device)
    return EditPipeline(dit, load_codec(folder / "vae", device), encoder, device=device)


def describe_toy_release(folder) -> dict:
    """``python -m comfy_kiwi info`` for a toy folder: every part as the project describes it, the
    codec from its config (the generic inspector knows only Wan VAE files)."""
    from ..loading.inspect import RELEASE_PARTS, describe_part
    from .codec import codec_config
    folder = Path(folder)
    parts = {name: (codec_config() if name == "vae" else describe_part(folder / name))
             if (folder / name).exists() else None for name in RELEASE_PARTS}
    return {"kind": "kiwi-toy-release", "path": str(folder), "parts": parts}
