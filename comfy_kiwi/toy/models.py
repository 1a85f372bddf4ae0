"""The toy models: a small Wan DiT, a small Qwen2.5-VL with a word-level tokenizer over the toy
vocabulary, and the patch codec — built untrained here, trained by ``toy/train.py``.

Sizes (``ToyModelConfig``) were chosen so that the whole Kiwi stack trains on two CPU cores within an hour:
a 384-wide, 3-block DiT over 4×4-pixel tokens (320 tokens for 17 frames at 32×32),
a 64-wide, 2-layer language model with a 2-block vision tower, 16 learnable queries per mode.
All of it is the stock code path: ``WanDiT`` with Kiwi source/reference embedders, the stock
``Qwen2_5_VLForConditionalGeneration`` inside ``MLLMEncoder``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..mllm.config import MLLMEncoderConfig
from ..models.wan_config import WanDiTConfig
from ..models.wan_dit import WanDiT
from ..testing.tiny_qwen import CHAT_TEMPLATE, SPECIAL_TOKENS
from .codec import Z_DIM
from .world import BACKGROUND_COLOURS, OBJECT_COLOURS, POSITIONS, SHAPES, TEMPLATES

UNKNOWN_TOKEN = "[UNK]"


@dataclass(frozen=True)
class ToyModelConfig:
    # Each token carries 2×2 latent cells × 48 channels = 192 numbers, and the source is σ-added to the same
    # token: at width 192 the noise in x_t and the source fill the same 192 dimensions and cannot be told
    # apart again, so even unchanged pixels come out noisy (cleanliness 0.30 vs 0.58 at width 384 after
    # 1500 image steps, docs/TOY_BENCHMARK.md). Width 2 × 192 leaves room for both (Wan2.2-5B: 3072 for 192).
    dit_dim: int = 384
    dit_ffn: int = 768
    dit_heads: int = 8
    dit_layers: int = 3
    dit_patch: tuple = (1, 2, 2)
    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    vision_hidden: int = 32
    num_queries: int = 16          # per mode (image / video / reference)
    mllm_frames: int = 4           # frames the MLLM sees (the DiT sees all of them through the source)
    # Qwen initialises token embeddings with std 0.02; the vision features it mixes with are O(1), so
    # an untrained toy LLM would barely carry the instruction words. Unit-scale embeddings fix that.
    embed_std: float = 1.0

    def dit_config(self) -> WanDiTConfig:
        # text_dim ≠ dim so the DiT takes the MLLM context directly (the umT5 path stays unused)
        return WanDiTConfig(dim=self.dit_dim, ffn_dim=self.dit_ffn, num_heads=self.dit_heads,
                            num_layers=self.dit_layers, in_dim=Z_DIM, out_dim=Z_DIM, text_dim=32, freq_dim=64,
                            patch_size=tuple(self.dit_patch))

    def encoder_config(self) -> MLLMEncoderConfig:
        n = self.num_queries
        return MLLMEncoderConfig(num_image_queries=n, num_video_queries=n, num_ref_queries=n,
                                 max_frames=self.mllm_frames, max_pixels_per_frame=56 * 56,
                                 ref_max_pixels=56 * 56, hidden_size=self.llm_hidden, dit_dim=self.dit_dim,
                                 name="kiwi-toy")


def toy_vocabulary() -> list[str]:
    """Every word the prompts can hold: system prompt, chat roles, templates and their fillers."""
    from ..mllm.config import REFERENCE_SUFFIX, SYSTEM_PROMPT
    text = " ".join([SYSTEM_PROMPT, REFERENCE_SUFFIX, "You are a helpful assistant.", "system user assistant",
                     *[t for ts in TEMPLATES.values() for t in ts], *OBJECT_COLOURS, *BACKGROUND_COLOURS,
                     *SHAPES, *POSITIONS])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", re.sub(r"\{\w+\}", " ", text))))
    return [UNKNOWN_TOKEN] + words


def build_toy_tokenizer():
    """A word-level fast tokenizer (words and punctuation; unknown words → [UNK]) plus the real
    Qwen2.5-VL special tokens, with the Qwen chat template."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(toy_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token=UNKNOWN_TOKEN)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def toy_qwen_config_dict(cfg: ToyModelConfig, tokenizer) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 63) // 64 * 64
    head = cfg.llm_hidden // cfg.llm_heads
    third = head // 2 // 3
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu", "hidden_size": cfg.llm_hidden, "initializer_range": cfg.llm_hidden ** -0.5,
        "intermediate_size": 2 * cfg.llm_hidden, "max_position_embeddings": 4096, "max_window_layers": cfg.llm_layers,
        "num_attention_heads": cfg.llm_heads, "num_hidden_layers": cfg.llm_layers,
        "num_key_value_heads": cfg.llm_heads, "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "mrope", "mrope_section": [head // 2 - 2 * third, third, third]},
        "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": True, "torch_dtype": "float32",
        "use_cache": False, "use_sliding_window": False, "vocab_size": vocab,
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "depth": 2, "hidden_act": "silu", "hidden_size": cfg.vision_hidden,
            "intermediate_size": 2 * cfg.vision_hidden, "num_heads": 2, "in_chans": 3,
            "out_hidden_size": cfg.llm_hidden, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "window_size": 56, "fullatt_block_indexes": [1], "tokens_per_second": 2, "temporal_patch_size": 2,
        },
    }


def build_toy_mllm(cfg: ToyModelConfig = ToyModelConfig(), seed: int = 0):
    """An untrained MLLMEncoder (stock Qwen2.5-VL inside) with the toy tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ..mllm.encoder import MLLMEncoder
    from ..mllm.preprocess import VisionSettings
    from ..mllm.prompt import PromptProcessor
    from ..testing.tiny_qwen import qwen_preprocessor_configs
    tokenizer = build_toy_tokenizer()
    qcfg = Qwen2_5_VLConfig(**toy_qwen_config_dict(cfg, tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(qcfg)
        with torch.no_grad():
            model.model.language_model.embed_tokens.weight.normal_(0.0, cfg.embed_std)
    model.eval()
    vision = VisionSettings.from_configs(qcfg.vision_config, qwen_preprocessor_configs()[0])
    processor = PromptProcessor(tokenizer, CHAT_TEMPLATE, vision, cfg.encoder_config().placeholder_token)
    return MLLMEncoder(model, processor, cfg.encoder_config(), init_seed=seed)


def build_toy_dit(cfg: ToyModelConfig = ToyModelConfig(), seed: int = 0) -> WanDiT:
    """An untrained toy DiT with zero-initialised Kiwi source and reference embedders."""
    dit_cfg = cfg.dit_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = WanDiT(dit_cfg)
        _init_dit_(dit)
        dit.attach_condition_embedders(source=True, reference=True, reference_first=False)
    dit.context_embedding = "none"
    return dit


def _init_dit_(dit: WanDiT) -> None:
    """adaLN-Zero init for training from scratch (as DiTs trained from scratch do): Xavier linears, zero
    biases, time projection zeroed and block gates zeroed so every block starts as the identity, zero
    head so the first prediction is 0. (Random gates made each block add noise to the token stream and
    the toy model learned several times slower.)"""
    for m in dit.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    proj = dit.time_projection[1]
    torch.nn.init.zeros_(proj.weight)
    torch.nn.init.zeros_(proj.bias)
    for block in dit.blocks:
        torch.nn.init.zeros_(block.modulation)          # shift, scale, gate × 2: all 0 → identity block
    torch.nn.init.zeros_(dit.head.modulation)
    torch.nn.init.zeros_(dit.head.head.weight)
    torch.nn.init.zeros_(dit.head.head.bias)
