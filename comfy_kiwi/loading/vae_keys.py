"""Key names of the Wan VAE: the original Wan layout ⇄ diffusers ``AutoencoderKLWan``.

Original (what ``WanVAE`` uses)                 diffusers
``conv1`` / ``conv2``                          ``quant_conv`` / ``post_quant_conv``
``{encoder,decoder}.conv1``                    ``{encoder,decoder}.conv_in``
``*.head.0.gamma`` / ``*.head.2``              ``*.norm_out.gamma`` / ``*.conv_out``
``*.middle.{0,1,2}``                           ``*.mid_block.{resnets.0, attentions.0, resnets.1}``
residual block ``residual.{0,2,3,6}``, ``shortcut``   ``norm1``, ``conv1``, ``norm2``, ``conv2``, ``conv_shortcut``
2.1 ``encoder.downsamples.K`` (flat)           ``encoder.down_blocks.K`` (same flat index)
2.1 ``decoder.upsamples.K`` (flat)             ``decoder.up_blocks.I.{resnets.J, upsamplers.0}``, K = I·(n+2)+J
2.2 ``encoder.downsamples.I.downsamples.J``    ``encoder.down_blocks.I.{resnets.J, downsampler}``
2.2 ``decoder.upsamples.I.upsamples.J``        ``decoder.up_blocks.I.{resnets.J, upsampler}``

(n = residual blocks per encoder stage; a decoder stage has n+1 plus its resampler.)
Resamplers keep their inner names (``resample.1``, ``time_conv``) in both layouts.
Keys that match no rule are passed through unchanged, so the loader reports them as unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ORIGINAL_MARKER = "decoder.middle.0.residual.0.gamma"
DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"

# residual-block leaf names: original → diffusers
_RES_LEAVES = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
               "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_RES_LEAVES_BACK = {v: k for k, v in _RES_LEAVES.items()}
_TOP = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_SIDE = {"conv1.": "conv_in.", "head.0.": "norm_out.", "head.2.": "conv_out.",
         "middle.0.": "mid_block.resnets.0.", "middle.1.": "mid_block.attentions.0.",
         "middle.2.": "mid_block.resnets.1."}
_SIDE_BACK = {v: k for k, v in _SIDE.items()}
_SAMPLER_LEAVES = ("resample.", "time_conv.")


def _swap_prefix(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _res_leaf(rest: str, table: dict[str, str]) -> str:
    return _swap_prefix(rest, table) or rest


def _is_sampler(rest: str) -> bool:
    return rest.startswith(_SAMPLER_LEAVES)


def is_residual_layout(keys: Iterable[str]) -> bool:
    """True for the Wan2.2 (residual, nested-stage) layout, in either naming."""
    return any(k.startswith(("decoder.upsamples.0.upsamples.", "decoder.up_blocks.0.avg_shortcut",
                             "encoder.downsamples.0.downsamples.", "decoder.up_blocks.0.upsampler."))
               for k in keys)


def decoder_res_blocks_original(keys: Iterable[str]) -> int:
    """Residual blocks per *encoder* stage (n) of a Wan2.1 original-layout file, from where the first
    decoder resampler sits in the flat ``decoder.upsamples`` list (at index n+1)."""
    first = min((int(m.group(1)) for k in keys
                 if (m := re.match(r"decoder\.upsamples\.(\d+)\.(resample|time_conv)\.", k))), default=None)
    return 2 if first is None else first - 1


def _decoder_res_blocks_diffusers(keys: Iterable[str]) -> int:
    js = [int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))]
    return max(js) if js else 2   # a decoder stage holds n+1 resnets: indices 0..n


def original_to_diffusers(keys: Iterable[str]) -> dict[str, str]:
    """``{original key: diffusers key}`` for every key (unknown keys map to themselves)."""
    keys = list(keys)
    residual = is_residual_layout(keys)
    n = decoder_res_blocks_original(keys) if not residual else 0
    return {k: _to_diffusers(k, residual, n) for k in keys}


def _to_diffusers(key: str, residual: bool, n: int) -> str:
    top = _swap_prefix(key, _TOP)
    if top is not None:
        return top
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key
    if (m := re.match(r"(down|up)samples\.(\d+)\.(.*)", rest)):
        kind, k, rest = m.group(1), int(m.group(2)), m.group(3)
        if residual:
            inner = re.match(rf"{kind}samples\.(\d+)\.(.*)", rest)
            if inner is None:
                return key
            j, leaf = int(inner.group(1)), inner.group(2)
            block = f"{side}.{kind}_blocks.{k}"
            if _is_sampler(leaf):
                return f"{block}.{kind}sampler.{leaf}"
            return f"{block}.resnets.{j}.{_res_leaf(leaf, _RES_LEAVES)}"
        if kind == "down":   # 2.1 encoder: same flat list
            return f"{side}.down_blocks.{k}.{rest if _is_sampler(rest) else _res_leaf(rest, _RES_LEAVES)}"
        i, j = divmod(k, n + 2)   # 2.1 decoder: n+1 resnets then one upsampler per stage
        if _is_sampler(rest):
            return f"{side}.up_blocks.{i}.upsamplers.0.{rest}"
        return f"{side}.up_blocks.{i}.resnets.{j}.{_res_leaf(rest, _RES_LEAVES)}"
    mapped = _swap_prefix(rest, _SIDE)
    if mapped is None:
        return key
    if mapped.startswith("mid_block.resnets."):
        head, leaf = mapped[:len("mid_block.resnets.0.")], mapped[len("mid_block.resnets.0."):]
        mapped = head + _res_leaf(leaf, _RES_LEAVES)
    return f"{side}.{mapped}"


def diffusers_to_original(keys: Iterable[str]) -> dict[str, str]:
    """``{diffusers key: original key}`` for every key (unknown keys map to themselves)."""
    keys = list(keys)
    residual = is_residual_layout(keys)
    n = _decoder_res_blocks_diffusers(keys)
    return {k: _to_original(k, residual, n) for k in keys}


def _to_original(key: str, residual: bool, n: int) -> str:
    top = _swap_prefix(key, _TOP_BACK)
    if top is not None:
        return top
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key
    if (m := re.match(r"(down|up)_blocks\.(\d+)\.(.*)", rest)):
        kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
        if residual:
            sampler = re.match(rf"{kind}sampler\.(.*)", rest)
            res = re.match(r"resnets\.(\d+)\.(.*)", rest)
            # the resampler follows the stage's resnets: n of them in the encoder, n+1 in the decoder
            count = n if kind == "down" else n + 1
            if sampler:
                return f"{side}.{kind}samples.{i}.{kind}samples.{count}.{sampler.group(1)}"
            if res:
                leaf = _res_leaf(res.group(2), _RES_LEAVES_BACK)
                return f"{side}.{kind}samples.{i}.{kind}samples.{res.group(1)}.{leaf}"
            return key
        if kind == "down":
            return f"{side}.downsamples.{i}.{rest if _is_sampler(rest) else _res_leaf(rest, _RES_LEAVES_BACK)}"
        if (s := re.match(r"upsamplers\.0\.(.*)", rest)):
            return f"{side}.upsamples.{i * (n + 2) + n + 1}.{s.group(1)}"
        if (r := re.match(r"resnets\.(\d+)\.(.*)", rest)):
            return f"{side}.upsamples.{i * (n + 2) + int(r.group(1))}.{_res_leaf(r.group(2), _RES_LEAVES_BACK)}"
        return key
    for new, old in _SIDE_BACK.items():
        if rest.startswith(new):
            leaf = rest[len(new):]
            if new.startswith("mid_block.resnets."):
                leaf = _res_leaf(leaf, _RES_LEAVES_BACK)
            return f"{side}.{old}{leaf}"
    return key
