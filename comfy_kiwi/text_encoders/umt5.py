"""umT5 text encoder of Wan2.1 (transformers ``UMT5EncoderModel``), loaded from a local folder only.

Wan tokenises to at most 512 tokens (with the closing ``</s>``), runs the encoder with the attention
mask, keeps the real tokens and zero-pads the context to 512 rows before the DiT's ``text_embedding``
(the DiT then attends to the zero rows too). ``encode`` returns the unpadded rows (what a cache
stores); ``pad_context`` restores the 512-row layout.

Accepted folders: one folder with the model (config.json + safetensors) and the tokenizer files, or a
diffusers-style root with ``text_encoder/`` and ``tokenizer/``. Never remote code, never the network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, InputError

WAN_TEXT_LEN = 512


def _folders(folder: Path) -> tuple[Path, Path]:
    if (folder / "text_encoder").is_dir():
        tok = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
        return folder / "text_encoder", tok
    return folder, folder


class UMT5TextEncoder:
    """``encode(prompts)`` → list of [L_i, C] float tensors (real tokens only, ``</s>`` included)."""

    def __init__(self, folder, dtype: torch.dtype = torch.float32, device="cpu", max_length: int = WAN_TEXT_LEN):
        from transformers import AutoTokenizer, UMT5EncoderModel
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"umT5 folder {folder} does not exist (expected config.json, model weights "
                                  "and tokenizer files, or text_encoder/ + tokenizer/).")
        model_dir, tok_dir = _folders(folder)
        if not (model_dir / "config.json").is_file():
            raise CheckpointError(f"{model_dir} has no config.json: not a transformers umT5 folder.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True, trust_remote_code=False)
            self.model = UMT5EncoderModel.from_pretrained(str(model_dir), local_files_only=True,
                                                          trust_remote_code=False, dtype=dtype)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"could not load umT5 from {folder}: {e}") from None
        self.model.to(device).eval().requires_grad_(False)
        self.max_length = max_length

    @property
    def width(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InputError("prompts must be a list of strings.")
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             add_special_tokens=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return [h[: int(n)].cpu() for h, n in zip(hidden, mask.sum(1))]


def pad_context(rows: list[torch.Tensor], length: int = WAN_TEXT_LEN) -> torch.Tensor:
    """Unpadded [L_i, C] contexts → [B, length, C] with zero rows after the real tokens."""
    out = torch.zeros(len(rows), length, rows[0].shape[-1], dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        if r.shape[0] > length:
            raise InputError(f"a context has {r.shape[0]} tokens, more than the padded length {length}.")
        out[i, : r.shape[0]] = r
    return out
