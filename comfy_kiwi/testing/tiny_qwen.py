"""A tiny random Qwen2.5-VL, built offline in about a second, written in the real folder layouts.

* tokenizer: a byte-level BPE trained here on a few sentences, plus the real Qwen2.5-VL special
  tokens in the real order; a chat template written here with Qwen2.5-VL's layout;
* model: the stock ``Qwen2_5_VLForConditionalGeneration`` with hidden 64, 2 layers, 4 heads (2 KV),
  mrope_section [2,3,3] (sums to head_dim/2 = 8) and a 2-block vision tower (patch 14, merge 2,
  temporal patch 2);
* layouts: a stock base folder (``config.json``, ``model.safetensors`` with legacy key names,
  tokenizer and processor files), a Kiwi release (``mllm_encoder/`` + ``processor/``) and a Kiwi
  training checkpoint (``pipe.``/``mllm.`` keys, ``connetor`` typo, LoRA A/B keys).

Reusable by any test: :func:`tiny_kiwi_files` writes everything once per process.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..mllm.config import MLLMEncoderConfig
from ..mllm.preprocess import CLIP_MEAN, CLIP_STD

TINY_HIDDEN = 64
TINY_DIT_DIM = 48
TINY_LORA_RANK = 4

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

_CORPUS = [
    "You will be given an image and instruction. Please describe the content of the image in detail "
    "based on instruction in your own words.",
    "You are a helpful assistant. system user assistant",
    "Make the sky red. Use the reference input from last frame.",
    "Replace the cat with a dog. Turn the car blue. Remove the person on the left.",
]

# Same layout as Qwen2.5-VL's template: a default system turn when none is given, one
# "<|im_start|>role\n...<|im_end|>\n" block per message, vision items as start/pad/end triples.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_encoder_config(**changes) -> MLLMEncoderConfig:
    """The Kiwi-Edit encoder settings with the tiny model's widths."""
    return MLLMEncoderConfig(hidden_size=TINY_HIDDEN, dit_dim=TINY_DIT_DIM, **changes)


@dataclass
class TinyQwen:
    model: torch.nn.Module          # Qwen2_5_VLForConditionalGeneration, float32, eval
    tokenizer: object               # transformers tokenizer
    qwen_config: dict               # flat legacy config.json, as Qwen's own files
    token_ids: dict


def _build_bpe():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _qwen_config_dict(vocab_size: int, ids: dict) -> dict:
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu", "hidden_size": TINY_HIDDEN, "initializer_range": 0.02, "intermediate_size": 128,
        "max_position_embeddings": 8192, "max_window_layers": 2, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
        "use_sliding_window": False, "vocab_size": vocab_size,
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "depth": 2, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "in_chans": 3, "out_hidden_size": TINY_HIDDEN, "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1],
            "tokens_per_second": 2, "temporal_patch_size": 2,
        },
    }


@functools.lru_cache(maxsize=2)
def build_tiny_qwen(seed: int = 0) -> TinyQwen:
    """The tiny model and tokenizer (cached per process; treat them as read-only)."""
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    bpe = _build_bpe()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: bpe.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab = (bpe.get_vocab_size() + 63) // 64 * 64   # padded like the real embedding table
    cfg_dict = _qwen_config_dict(vocab, ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg_dict))
    model.eval().requires_grad_(False)
    return TinyQwen(model, tokenizer, cfg_dict, ids)


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------

def qwen_preprocessor_configs() -> tuple[dict, dict]:
    """``(preprocessor_config.json, video_preprocessor_config.json)`` of a Qwen2.5-VL processor folder, with
    Qwen2.5-VL's values (patch 14, merge 2, temporal patch 2, CLIP mean/std). Public: the toy world's
    release writer (``comfy_kiwi/toy/``) writes the same files."""
    common = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "rescale_factor": 1 / 255,
              "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "resample": 3,
              "processor_class": "Qwen2_5_VLProcessor"}
    image = {**common, "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136,
             "max_pixels": 12845056}
    video = {**common, "video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False,
             "size": {"shortest_edge": 3136, "longest_edge": 12845056}}
    return image, video


def write_processor_files(folder: Path, tiny: TinyQwen, template_file: str = "chat_template.jinja") -> None:
    """Tokenizer and processor files as a Qwen processor folder holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny.tokenizer.save_pretrained(folder)
    tiny.tokenizer.backend_tokenizer.model.save(str(folder))        # vocab.json + merges.txt
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("chat_template", None)
    tok_cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    if template_file == "chat_template.jinja":
        (folder / template_file).write_text(CHAT_TEMPLATE)
    else:
        (folder / template_file).write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    image, video = qwen_preprocessor_configs()
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))


def legacy_qwen_state(model) -> dict[str, torch.Tensor]:
    """The model's weights under the key names transformers 4.x save_pretrained wrote (no lm_head)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.visual."):
            out["visual." + key[len("model.visual."):]] = value.contiguous()
        elif key.startswith("model.language_model."):
            out["model." + key[len("model.language_model."):]] = value.contiguous()
    return out


def random_extras(seed: int = 0, cfg: MLLMEncoderConfig | None = None) -> dict[str, torch.Tensor]:
    """Queries and connectors (release key names) with random, non-zero values."""
    cfg = cfg or tiny_encoder_config()
    g = torch.Generator().manual_seed(seed + 1)
    h, d = cfg.hidden_size, cfg.dit_dim
    out = {"image_queries": torch.randn(cfg.num_image_queries, h, generator=g),
           "video_queries": torch.randn(cfg.num_video_queries, h, generator=g)}
    names = ["connector"]
    if cfg.has_reference:
        out["ref_queries"] = torch.randn(cfg.num_ref_queries, h, generator=g)
        names.append("ref_connector")
    for name in names:
        out[f"{name}.0.weight"] = torch.randn(d, h, generator=g) / h ** 0.5
        out[f"{name}.0.bias"] = torch.randn(d, generator=g) * 0.1
        out[f"{name}.2.weight"] = torch.randn(d, d, generator=g) / d ** 0.5
        out[f"{name}.2.bias"] = torch.randn(d, generator=g) * 0.1
    return out


def write_tiny_base(folder, seed: int = 0) -> Path:
    """A stock Hugging Face Qwen2.5-VL folder (legacy weight names, like Qwen's own upload)."""
    folder = Path(folder)
    tiny = build_tiny_qwen(seed)
    write_processor_files(folder, tiny, template_file="chat_template.json")
    (folder / "config.json").write_text(json.dumps(tiny.qwen_config, indent=2))
    save_file(legacy_qwen_state(tiny.model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_tiny_release(root, seed: int = 0, with_reference: bool = True) -> Path:
    """A Kiwi-Edit release folder: mllm_encoder/ (sharded legacy weights + extras) and processor/."""
    root = Path(root)
    tiny = build_tiny_qwen(seed)
    enc_dir, proc_dir = root / "mllm_encoder", root / "processor"
    enc_dir.mkdir(parents=True, exist_ok=True)
    write_processor_files(proc_dir, tiny)
    (proc_dir / "qwen_config.json").write_text(json.dumps(tiny.qwen_config, indent=2))
    state = legacy_qwen_state(tiny.model)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": [k for k in keys if k.startswith("visual.")],
              "model-00002-of-00002.safetensors": [k for k in keys if not k.startswith("visual.")]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(enc_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard_keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (enc_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    cfg = tiny_encoder_config() if with_reference else tiny_encoder_config(num_ref_queries=0,
                                                                            use_ref_connector=False)
    (enc_dir / "config.json").write_text(json.dumps(cfg.to_release_json(), indent=2))
    (enc_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": tiny.token_ids["<|endoftext|>"]}))
    save_file(random_extras(seed, cfg), str(enc_dir / "diffusion_pytorch_model.safetensors"))
    return root


def tiny_lora_tensors(seed: int = 0, rank: int = TINY_LORA_RANK) -> dict[str, torch.Tensor]:
    """LoRA A/B for q,k,v,o of every language layer, under the training checkpoint's key names."""
    tiny = build_tiny_qwen(seed)
    g = torch.Generator().manual_seed(seed + 2)
    out = {}
    for i, layer in enumerate(tiny.model.model.language_model.layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = getattr(layer.self_attn, proj)
            base = f"mllm.model.model.language_model.layers.{i}.self_attn.{proj}"
            out[f"{base}.lora_A.default.weight"] = torch.randn(rank, lin.in_features, generator=g) * 0.1
            out[f"{base}.lora_B.default.weight"] = torch.randn(lin.out_features, rank, generator=g) * 0.1
    return out


def write_tiny_training_checkpoint(path, seed: int = 0, prefix: str = "pipe.", with_lora: bool = True,
                                   with_reference: bool = True) -> Path:
    """A diffsynth training checkpoint: only trained tensors, ``mllm.connetor`` spelled as released."""
    path = Path(path)
    extras = random_extras(seed + 10, tiny_encoder_config())
    out = {}
    for key, value in extras.items():
        if key.endswith("_queries"):
            if key == "ref_queries" and not with_reference:
                continue
            out[f"mllm.{key}.q"] = value
        elif key.startswith("connector."):
            out["mllm.connetor." + key[len("connector."):]] = value
        elif with_reference:
            out["mllm." + key] = value
    if with_lora:
        out.update(tiny_lora_tensors(seed))
    # tensors of other parts, which the MLLM loader must leave alone
    out["dit.blocks.0.self_attn.q.weight"] = torch.zeros(4, 4)
    out["vae_condition.patch_embedding.weight"] = torch.zeros(2, 2)
    save_file({prefix + k: v.contiguous() for k, v in out.items()}, str(path))
    return path


@dataclass
class TinyKiwiFiles:
    root: Path
    base: Path
    release: Path
    checkpoint: Path


@functools.lru_cache(maxsize=1)
def tiny_kiwi_files() -> TinyKiwiFiles:
    """Base folder, release folder and training checkpoint, written once per process (temp dir)."""
    root = Path(tempfile.mkdtemp(prefix="kiwi-tiny-qwen-"))
    atexit.register(shutil.rmtree, root, True)
    return TinyKiwiFiles(root, write_tiny_base(root / "qwen-base"), write_tiny_release(root / "kiwi-release"),
                         write_tiny_training_checkpoint(root / "kiwi-stage3.safetensors"))
