"""A tiny random umT5 encoder + word-level tokenizer, written offline for tests."""

from __future__ import annotations

from pathlib import Path

WORDS = ("make turn the a an it red green blue yellow white black square circle background shape "
         "into colour color photo of with on image video edit change").split()


def write_tiny_umt5(folder, d_model: int = 32, seed: int = 0) -> Path:
    """Save a 2-layer UMT5EncoderModel (width ``d_model``) and a tokenizer into ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    cfg = UMT5Config(vocab_size=len(vocab) + 5, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                     num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                     dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    UMT5EncoderModel(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder
