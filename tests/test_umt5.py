"""umT5 text encoder: local folder only, Wan's zero padding to 512 tokens, clear errors."""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
from comfy_kiwi.text_encoders.umt5 import UMT5TextEncoder, pad_context


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return UMT5TextEncoder(write_tiny_umt5(tmp_path_factory.mktemp("umt5")))


def test_encode_keeps_real_tokens_and_pads_with_zeros(encoder):
    rows = encoder.encode(["make the square red", "a blue circle"])
    assert [r.shape for r in rows] == [(5, 32), (4, 32)]            # words + </s>
    ctx = pad_context(rows)
    assert ctx.shape == (2, 512, 32)
    assert torch.equal(ctx[0, :5], rows[0]) and ctx[0, 5:].abs().sum() == 0 and ctx[1, 4:].abs().sum() == 0
    # the padding does not leak into the real tokens (attention mask): same prompt alone gives the same rows
    (alone,) = encoder.encode(["a blue circle"])
    assert torch.allclose(alone, rows[1], atol=1e-5)


def test_diffusers_layout_and_errors(tmp_path):
    write_tiny_umt5(tmp_path / "root" / "text_encoder")
    write_tiny_umt5(tmp_path / "root" / "tokenizer")
    assert UMT5TextEncoder(tmp_path / "root").width == 32
    with pytest.raises(CheckpointError, match="does not exist"):
        UMT5TextEncoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        UMT5TextEncoder(tmp_path / "empty")
    with pytest.raises(InputError, match="more than the padded length"):
        pad_context([torch.zeros(600, 4)])


def test_encoder_rejects_a_bare_string(encoder):
    with pytest.raises(InputError, match="list of strings"):
        encoder.encode("make it red")
