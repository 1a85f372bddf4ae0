"""Kiwi-Edit (the method of the Kiwi-Edit paper and release): the one entry point of its nodes, command line and
trainer evaluation for loading, encoding and sampling.

Kiwi-Edit's parts are the library's defaults, so this module is thin:

- loading: a release folder (``transformer/``, ``vae/``, ``mllm_encoder/``, ``processor/``, embedders) through
  ``EditPipeline.from_pretrained`` (the ComfyUI loaders read the same parts one by one, with a model cache);
- encoding: the MLLM encoder (``comfy_kiwi.mllm``: Qwen2.5-VL + learnable queries + connectors, preset
  ``KIWI_EDIT``) turns instruction + source frames (+ reference image) into DiT-wide context tokens;
- sampling: the core sampler ``pipeline.sample_edit`` with the DiT's default source strategy (the source latents
  added to the noisy tokens, scaled by σ or the trained γ(t): ``models/source_strategy.py``,
  ``models/conditioning.py``) and the reference latents as tokens beside them; no per-step hook, no routing; CFG on
  the instruction as one batch [negative; positive] (the release samples without CFG).

``sample`` is the one sampling call of Kiwi-Edit: the Kiwi Sampler node, ``edit`` (the command line, through
``EditPipeline.edit``) and the trainer's evaluation (``trainer/methods/kiwi.py``) all go through it; InstructX
(``methods/instructx.py``) samples each of its windows with it too.
"""

from __future__ import annotations

import torch

from ..pipeline import (EditConditioning, EditPipeline, EditResult, EditSettings, SourceConditioning,
                        sample_edit)


def load(folder, dtype: torch.dtype | None = torch.bfloat16, device=None, attention: str = "auto",
         dit_device=None, offload: bool | None = None, mllm_preset=None) -> EditPipeline:
    """A whole Kiwi-Edit release folder as an ``EditPipeline`` (see ``EditPipeline.from_pretrained``)."""
    return EditPipeline.from_pretrained(folder, dtype=dtype, device=device, attention=attention,
                                        dit_device=dit_device, offload=offload, mllm_preset=mllm_preset)


def encode(mllm, instruction: str, frames: torch.Tensor, reference=None, with_negative: bool = False,
           device=None) -> EditConditioning:
    """The instruction's context (+ the empty instruction's for CFG) from the MLLM encoder on ``device`` (default:
    where the encoder is; it is not moved)."""
    device = device if device is not None else next(mllm.parameters()).device
    return EditPipeline(None, None, mllm, device=device, offload_mllm=False).encode_instruction(
        instruction, frames, reference, with_negative=with_negative)


def sample(dit, conditioning: EditConditioning, source: SourceConditioning, settings: EditSettings,
           device=None) -> torch.Tensor:
    """Kiwi-Edit's sampler: edited latents [1, C, f, h, w] from the context, the source (+ reference) latents and
    the settings (defaults = the release: 50 Euler steps, shift 5, no CFG)."""
    return sample_edit(dit, conditioning, source, settings, device=device)


def edit(pipe: EditPipeline, frames: torch.Tensor, instruction: str, reference=None,
         settings: EditSettings | None = None) -> EditResult:
    """One whole edit (prepare → encode → VAE-encode → ``sample`` → decode): the command line's ``edit``."""
    return pipe.edit(frames, instruction, reference, settings, sample=sample)
