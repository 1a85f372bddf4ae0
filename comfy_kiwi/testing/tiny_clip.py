"""A tiny random CLIP (``transformers.CLIPModel``), built offline in well under a second.

* tokenizer: a byte-level BPE with CLIP's ``</w>`` end-of-word marker, trained here on a few
  sentences with the ``tokenizers`` library and saved as ``vocab.json`` + ``merges.txt`` (plus
  ``<|startoftext|>`` / ``<|endoftext|>``), loaded back through ``CLIPTokenizer``;
* model: text width 32 (2 layers), vision width 32 (2 layers, 32 px images, patch 8), projection 16;
* ``preprocessor_config.json``: shortest edge 32, centre crop 32x32, CLIP mean/std, bicubic.

:func:`write_tiny_clip` writes a local folder ``CLIPModel.from_pretrained`` reads;
:func:`tiny_clip_files` writes two (a "CLIP" and a "PickScore" stand-in, different seeds) once per
process.
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

TINY_CLIP_IMAGE = 32
_CORPUS = [
    "a photo of a red car on a street", "a cat sitting on a sofa", "make the sky red",
    "replace the dog with a cat", "a video of a person walking in a park", "remove the person on the left",
    "add a hat to the man", "turn the scene into a watercolor painting", "a blue car", "a green tree",
]


def _train_vocab(folder: Path) -> tuple[dict, list[str]]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(_CORPUS, trainer)
    vocab = tok.get_vocab()
    # every single byte symbol also as a word end, as CLIP's vocabulary has them
    for sym in sorted(alphabet):
        vocab.setdefault(sym + "</w>", len(vocab))
    model_json = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json["merges"]]
    ordered = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    ordered = {k: i for i, k in enumerate(ordered)}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        ordered[special] = len(ordered)
    return ordered, merges


def _config(vocab_size: int, bos: int, eos: int) -> dict:
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16, "logit_scale_init_value": 2.6592,
        "text_config": {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "max_position_embeddings": 77, "projection_dim": 16,
                        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos, "hidden_act": "quick_gelu"},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "image_size": TINY_CLIP_IMAGE, "patch_size": 8, "projection_dim": 16,
                          "hidden_act": "quick_gelu"},
    }


PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": TINY_CLIP_IMAGE},
    "resample": 3, "do_center_crop": True, "crop_size": {"height": TINY_CLIP_IMAGE, "width": TINY_CLIP_IMAGE},
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def write_tiny_clip(folder, seed: int = 0, logit_scale: float | None = None) -> Path:
    """A CLIPModel folder (config, safetensors, tokenizer, preprocessor_config.json) with random weights.
    ``logit_scale`` sets the stored (log) temperature, e.g. ``math.log(100)`` like PickScore."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_vocab(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(folder)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(**_config(len(vocab), bos, eos)))
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(float(logit_scale))
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return folder


@dataclass
class TinyClipFiles:
    root: Path
    clip: Path
    pickscore: Path


@functools.lru_cache(maxsize=1)
def tiny_clip_files() -> TinyClipFiles:
    """A tiny CLIP folder and a tiny "PickScore" folder (another seed, logit scale ln 100)."""
    import math
    root = Path(tempfile.mkdtemp(prefix="kiwi-tiny-clip-"))
    atexit.register(shutil.rmtree, root, True)
    return TinyClipFiles(root, write_tiny_clip(root / "clip", seed=0),
                         write_tiny_clip(root / "pickscore", seed=1, logit_scale=math.log(100.0)))
