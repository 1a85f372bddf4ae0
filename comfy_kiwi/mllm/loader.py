"""Loading the MLLM encoder from local files only (no hub, no remote code).

Accepted sources:

(a) a Kiwi-Edit release: the root (with ``mllm_encoder/`` and ``processor/``) or its ``mllm_encoder/``
    folder. Qwen weights from ``mllm_encoder/model-*.safetensors`` (legacy key names, LoRA merged,
    no lm_head), Qwen config from ``processor/qwen_config.json``, tokenizer/processor files from
    ``processor/``, queries and connectors from ``mllm_encoder/diffusion_pytorch_model.safetensors``;
(b) a stock Qwen2.5-VL folder (``config.json``, ``model*.safetensors``, tokenizer/processor files),
    optionally with a Kiwi training checkpoint: ``load_mllm_encoder(checkpoint, base=qwen_folder)``.
    The checkpoint's ``mllm.*`` tensors (queries ``.q``, ``connetor`` [sic], ``ref_connector``)
    replace the fresh training init; its LoRA A/B tensors are merged (fp32, alpha = rank).

The Qwen model is the stock ``Qwen2_5_VLForConditionalGeneration``, built with its parameters on the
meta device and filled from the files tensor by tensor (one copy of the weights in memory).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..loading.files import LazyStateDict, load_into_module, open_state_dict, read_safetensors_header
from .config import MLLMEncoderConfig, get_preset
from .encoder import MLLMEncoder
from .lora import merge_lora_tensors
from .preprocess import VisionSettings
from .prompt import PromptProcessor

EXTRAS_FILE = "diffusion_pytorch_model.safetensors"
_QUERY_KEYS = {"image_queries.q": "image_queries", "video_queries.q": "video_queries", "ref_queries.q": "ref_queries"}


# --------------------------------------------------------------------------------------------------
# recognising folders
# --------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object.")
    return data


def _release_dirs(path: Path) -> tuple[Path, Path] | None:
    """(mllm_encoder dir, release root) when ``path`` is a release root or its mllm_encoder folder."""
    if (path / "mllm_encoder").is_dir():
        return path / "mllm_encoder", path
    if path.is_dir() and (path.name == "mllm_encoder" or (path / EXTRAS_FILE).exists()):
        cfg = path / "config.json"
        if path.name == "mllm_encoder" or (cfg.exists() and _read_json(cfg).get("_class_name") == "MLLMEncoder"):
            return path, path.parent
    return None


def encoder_config_of(source, preset: str | MLLMEncoderConfig | None = None) -> MLLMEncoderConfig:
    """The settings :func:`load_mllm_encoder` would use for ``source`` (a release's
    ``mllm_encoder/config.json`` over the preset), read without loading any weights."""
    cfg = get_preset(preset)
    path = Path(source).expanduser()
    release = _release_dirs(path) if path.is_dir() else None
    if release is not None and (release[0] / "config.json").exists():
        cfg = MLLMEncoderConfig.from_release_json(_read_json(release[0] / "config.json"), cfg,
                                                  str(release[0] / "config.json"))
    return cfg


def _is_qwen_folder(path: Path) -> bool:
    cfg = path / "config.json"
    return path.is_dir() and cfg.exists() and _read_json(cfg).get("model_type") in ("qwen2_5_vl",)


def _qwen_weight_files(folder: Path) -> LazyStateDict:
    """The Qwen shards of a folder (through the index when there is one), never the extras file."""
    indexes = sorted(folder.glob("model*.safetensors.index.json"))
    if indexes:
        return open_state_dict(indexes[0])
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} holds no Qwen2.5-VL weights (model*.safetensors files expected).")
    state = open_state_dict(files[0])
    for f in files[1:]:
        state = state.merged(open_state_dict(f))
    return state


# --------------------------------------------------------------------------------------------------
# Qwen model
# --------------------------------------------------------------------------------------------------

def load_qwen_config(path: Path):
    from transformers import Qwen2_5_VLConfig
    data = _read_json(path)
    if data.get("model_type") != "qwen2_5_vl":
        raise CheckpointError(f"{path}: model_type is {data.get('model_type')!r}; only Qwen2.5-VL "
                              "(model_type 'qwen2_5_vl') is supported by the Kiwi MLLM encoder.")
    try:
        return Qwen2_5_VLConfig(**data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid Qwen2.5-VL config ({e}).") from None


@contextlib.contextmanager
def _parameters_on_meta():
    """Create module parameters on the meta device (buffers such as rope frequencies stay real).

    Parameters are registered on the meta device right after their (untouched, so never paged-in)
    CPU allocation, which makes any init that follows free. It patches ``nn.Module`` for the
    duration of one model construction, so do not build other modules in parallel threads."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _qwen_inner_name(key: str) -> str | None:
    """A Qwen weight name (legacy 4.x or current layout) -> its name inside ``Qwen2_5_VLModel``."""
    if key.startswith("lm_head."):
        return None                                   # unused: features come from hidden states
    if key.startswith("visual."):
        return key
    if key.startswith(("model.visual.", "model.language_model.")):
        return key[len("model."):]
    if key.startswith("model."):
        return "language_model." + key[len("model."):]
    return key


def build_qwen(config, weights: LazyStateDict, dtype: torch.dtype | None, device, what: str):
    """Stock Qwen2_5_VLForConditionalGeneration filled from ``weights``; lm_head tied to the embeddings."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    inner = weights.renamed(_qwen_inner_name)
    embed_key = "language_model.embed_tokens.weight"
    if embed_key not in inner:
        raise CheckpointError(f"{weights.describe_source()}: no token embedding (model.embed_tokens.weight); "
                              "not Qwen2.5-VL weights.")
    dtype = dtype or inner.dtype(embed_key)
    with _parameters_on_meta():
        model = Qwen2_5_VLForConditionalGeneration(config)
    load_into_module(model.model, inner, what=what, dtype_for=lambda name, stored: dtype, device=device)
    # lm_head is never used; sharing the embedding keeps it off the meta device at no cost.
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.to(device).eval().requires_grad_(False)
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:
        raise CheckpointError(f"{weights.describe_source()}: parameters left unloaded: {', '.join(leftover[:8])}.")
    return model


# --------------------------------------------------------------------------------------------------
# processor
# --------------------------------------------------------------------------------------------------

def load_processor(folder: Path, qwen_config, placeholder_token: str, what: str) -> PromptProcessor:
    """Tokenizer, chat template and pixel normalisation of a Qwen processor folder."""
    if not ((folder / "tokenizer.json").exists() or
            ((folder / "vocab.json").exists() and (folder / "merges.txt").exists())):
        raise CheckpointError(f"{what}: {folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt).")
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a broken folder
        raise CheckpointError(f"{what}: the tokenizer in {folder} could not be loaded "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None
    template = None
    if (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif (folder / "chat_template.json").exists():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    template = template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise CheckpointError(f"{what}: {folder} has no chat template (chat_template.jinja, chat_template.json "
                              "or a 'chat_template' entry in tokenizer_config.json).")
    pre_path = folder / "preprocessor_config.json"
    pre = _read_json(pre_path) if pre_path.exists() else {}
    vision = VisionSettings.from_configs(qwen_config.vision_config, pre)
    return PromptProcessor(tokenizer, template, vision, placeholder_token)


# --------------------------------------------------------------------------------------------------
# training checkpoints
# --------------------------------------------------------------------------------------------------

def split_training_checkpoint(state: LazyStateDict, source: str) -> tuple[LazyStateDict, LazyStateDict]:
    """(queries/connectors under release names, LoRA tensors under encoder names) of a checkpoint."""
    if any(k.startswith("pipe.") for k in state):
        state = state.renamed(lambda k: k[len("pipe."):] if k.startswith("pipe.") else k)
    mllm = state.with_prefix("mllm.")
    if len(mllm) == 0:
        raise CheckpointError(f"{source}: holds no MLLM tensors (no 'mllm.' keys); expected a Kiwi-Edit training "
                              "checkpoint (e.g. a DiT-only file was given).")

    def extra_name(key: str) -> str | None:
        if ".lora_" in key:
            return None
        if key in _QUERY_KEYS:
            return _QUERY_KEYS[key]
        for old, new in (("connetor.", "connector."), ("connector.", "connector."), ("ref_connector.", "ref_connector.")):
            if key.startswith(old):
                return new + key[len(old):]
        raise CheckpointError(f"{source}: unexpected MLLM tensor 'mllm.{key}' (known: *_queries.q, connetor.*, "
                              "ref_connector.*, language-model LoRA A/B).")

    extras = mllm.renamed(extra_name)
    lora = mllm.renamed(lambda k: k if ".lora_" in k else None)
    return extras, lora


def _config_from_extras(cfg: MLLMEncoderConfig, extras: LazyStateDict, hidden: int, source: str) -> MLLMEncoderConfig:
    """Query counts and dit_dim read from tensor shapes (a checkpoint is the authority on them)."""
    changes = {"hidden_size": hidden}
    for key, field in (("image_queries", "num_image_queries"), ("video_queries", "num_video_queries"),
                       ("ref_queries", "num_ref_queries")):
        if key in extras:
            n, h = extras.shape(key)
            if h != hidden:
                raise CheckpointError(f"{source}: {key} has width {h} but the Qwen model's hidden size is {hidden}.")
            changes[field] = n
    if "connector.2.weight" in extras:
        changes["dit_dim"] = extras.shape("connector.2.weight")[0]
    if "ref_queries" in extras or "ref_connector.0.weight" in extras:
        changes["use_ref_connector"] = True
    return cfg.replace(**changes)


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------

def load_mllm_encoder(source, base=None, dtype: torch.dtype | None = None, device="cpu",
                      preset: str | MLLMEncoderConfig | None = None) -> MLLMEncoder:
    """Load the MLLM encoder (see the module docstring for the accepted layouts)."""
    cfg = get_preset(preset)
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    release = _release_dirs(path) if path.is_dir() else None
    if release is not None:
        if base is not None:
            raise InputError(f"{path} is a Kiwi-Edit release (it has its own Qwen weights); do not pass base=.")
        return _load_release(*release, cfg, dtype, device)
    if path.is_dir():
        if base is not None:
            raise InputError(f"{path} is a folder; pass the training checkpoint file as the source and the Qwen "
                             "folder as base=.")
        if not _is_qwen_folder(path):
            raise CheckpointError(f"{path}: neither a Kiwi-Edit release (mllm_encoder/ + processor/) nor a "
                                  "Qwen2.5-VL folder (config.json with model_type 'qwen2_5_vl').")
        return _load_base(path, None, cfg, dtype, device)
    if base is None:
        raise InputError(f"{path} is a file: a Kiwi training checkpoint needs the Qwen2.5-VL base folder "
                         "as base=.")
    base = Path(base).expanduser()
    if not _is_qwen_folder(base):
        raise CheckpointError(f"{base}: not a Qwen2.5-VL folder (config.json with model_type 'qwen2_5_vl').")
    return _load_base(base, path, cfg, dtype, device)


def _load_release(enc_dir: Path, root: Path, cfg: MLLMEncoderConfig, dtype, device) -> MLLMEncoder:
    proc_dir = root / "processor"
    if not proc_dir.is_dir():
        raise CheckpointError(f"release folder {root} has no processor/ folder (tokenizer and image processor "
                              "files expected).")
    qwen_cfg_path = proc_dir / "qwen_config.json"
    if not qwen_cfg_path.exists():
        raise CheckpointError(f"release folder {root}: processor/ has no qwen_config.json (the Qwen2.5-VL "
                              "model config).")
    extras_path = enc_dir / EXTRAS_FILE
    if not extras_path.exists():
        raise CheckpointError(f"release folder {root}: mllm_encoder/ has no {EXTRAS_FILE} (learnable queries "
                              "and connectors).")
    if (enc_dir / "config.json").exists():
        cfg = MLLMEncoderConfig.from_release_json(_read_json(enc_dir / "config.json"), cfg,
                                                  str(enc_dir / "config.json"))
    qwen_config = load_qwen_config(qwen_cfg_path)
    extras = open_state_dict(extras_path)
    hidden = qwen_config.text_config.hidden_size
    shaped = _config_from_extras(cfg, extras, hidden, str(extras_path))
    if "ref_queries" not in extras:
        shaped = shaped.replace(use_ref_connector=False, num_ref_queries=0)
    _check_same(cfg, shaped, str(enc_dir / "config.json"), str(extras_path))
    processor = load_processor(proc_dir, qwen_config, shaped.placeholder_token, f"release folder {root}")
    qwen = build_qwen(qwen_config, _qwen_weight_files(enc_dir), dtype, device,
                      what=f"Qwen2.5-VL model of {qwen_cfg_path}")
    encoder = MLLMEncoder(qwen, processor, shaped).to(device)
    encoder.load_extras(extras, source=str(extras_path), strict=True)
    encoder.source_info = {"kind": "kiwi-release", "path": str(root)}
    return encoder


def _check_same(declared: MLLMEncoderConfig, found: MLLMEncoderConfig, cfg_src: str, file_src: str) -> None:
    diffs = [f"{k}: config {getattr(declared, k)} vs tensors {getattr(found, k)}"
             for k in ("num_image_queries", "num_video_queries", "dit_dim", "hidden_size")
             if getattr(declared, k) != getattr(found, k)]
    if declared.has_reference and found.has_reference and declared.num_ref_queries != found.num_ref_queries:
        diffs.append(f"num_ref_queries: config {declared.num_ref_queries} vs tensors {found.num_ref_queries}")
    if diffs:
        raise CheckpointError(f"{cfg_src} disagrees with {file_src}: " + "; ".join(diffs))


def _load_base(folder: Path, checkpoint: Path | None, cfg: MLLMEncoderConfig, dtype, device) -> MLLMEncoder:
    qwen_config = load_qwen_config(folder / "config.json")
    hidden = qwen_config.text_config.hidden_size
    extras = lora = None
    if checkpoint is not None:
        extras, lora = split_training_checkpoint(open_state_dict(checkpoint), str(checkpoint))
        cfg = _config_from_extras(cfg, extras, hidden, str(checkpoint))
        if "reference_without_branch" in extras.metadata:
            # the trainer records it for an encoder without a reference branch (InstructX): no reference queries
            recorded = {"reference_without_branch": extras.metadata["reference_without_branch"],
                        "num_ref_queries": cfg.num_ref_queries if "ref_queries" in extras else 0}
            cfg = MLLMEncoderConfig.from_release_json(recorded, cfg, f"{checkpoint} (metadata)")
    else:
        cfg = cfg.replace(hidden_size=hidden)
    processor = load_processor(folder, qwen_config, cfg.placeholder_token, f"Qwen folder {folder}")
    qwen = build_qwen(qwen_config, _qwen_weight_files(folder), dtype, device,
                      what=f"Qwen2.5-VL model of {folder / 'config.json'}")
    encoder = MLLMEncoder(qwen, processor, cfg).to(device)
    info = {"kind": "qwen-base", "path": str(folder)}
    if checkpoint is not None:
        info.update(kind="qwen-base+kiwi-checkpoint", checkpoint=str(checkpoint),
                    untrained=encoder.load_extras(extras, source=str(checkpoint), strict=False),
                    lora_layers=merge_lora_tensors(encoder, lora, source=str(checkpoint)) if len(lora) else 0)
    encoder.source_info = info
    return encoder


def save_mllm_encoder_extras(encoder: MLLMEncoder, path) -> Path:
    """Write the queries and connectors under the release names. A folder gets
    ``diffusion_pytorch_model.safetensors`` + ``config.json``; a ``.safetensors`` path just the file."""
    from safetensors.torch import save_file
    path = Path(path).expanduser()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.extras_state_dict().items()}
    folder = path.parent if path.suffix == ".safetensors" else path
    folder.mkdir(parents=True, exist_ok=True)
    target = path if path.suffix == ".safetensors" else path / EXTRAS_FILE
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    if path.suffix != ".safetensors":
        cfg_tmp = path / "config.json.tmp"
        cfg_tmp.write_text(json.dumps(encoder.config.to_release_json(), indent=2))
        os.replace(cfg_tmp, path / "config.json")
    return target


# --------------------------------------------------------------------------------------------------
# description (headers only, no tensor reads)
# --------------------------------------------------------------------------------------------------

def _qwen_summary(cfg_path: Path) -> dict:
    data = _read_json(cfg_path)
    text = data.get("text_config") or data
    vis = data.get("vision_config") or {}
    return {"hidden_size": text.get("hidden_size"), "layers": text.get("num_hidden_layers"),
            "vision_depth": vis.get("depth"), "dtype": data.get("torch_dtype") or data.get("dtype")}


def describe_mllm(source) -> dict | None:
    """What an MLLM source holds (for ``python -m comfy_kiwi info``); None when it is not one."""
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            release = _release_dirs(path)
            if release is not None:
                enc_dir, root = release
                out = {"kind": "kiwi-release-mllm", "path": str(root),
                       "has_processor": (root / "processor").is_dir()}
                if (root / "processor" / "qwen_config.json").exists():
                    out["qwen"] = _qwen_summary(root / "processor" / "qwen_config.json")
                if (enc_dir / EXTRAS_FILE).exists():
                    out.update(_extras_summary(open_state_dict(enc_dir / EXTRAS_FILE)))
                if (enc_dir / "config.json").exists():
                    out["config"] = _read_json(enc_dir / "config.json")
                return out
            if _is_qwen_folder(path):
                return {"kind": "qwen2.5-vl", "path": str(path), "qwen": _qwen_summary(path / "config.json")}
            return None
        if path.is_file() and path.suffix.lower() in (".safetensors", ".sft"):
            header, _ = read_safetensors_header(path)
            if not any(k.startswith(("mllm.", "pipe.mllm.")) for k in header):
                return None
            extras, lora = split_training_checkpoint(open_state_dict(path), str(path))
            out = {"kind": "kiwi-training-checkpoint", "path": str(path)}
            out.update(_extras_summary(extras))
            a_keys = [k for k in lora if ".lora_A" in k]
            out["lora"] = {"layers": len(a_keys), "rank": lora.shape(a_keys[0])[0] if a_keys else None}
            return out
    except CheckpointError:
        return None
    return None


def _extras_summary(extras: LazyStateDict) -> dict:
    queries = {k.split("_")[0]: extras.shape(k)[0] for k in ("image_queries", "video_queries", "ref_queries")
               if k in extras}
    out = {"queries": queries, "has_reference": "ref_queries" in extras and "ref_connector.0.weight" in extras}
    if "connector.2.weight" in extras:
        out["dit_dim"] = extras.shape("connector.2.weight")[0]
    return out
