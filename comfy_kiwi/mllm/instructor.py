"""VIVA's VLM "instructor": the last hidden states of a Qwen2.5-VL prompt, no learnable queries.

VIVA (Cong et al., 2025) conditions the DiT on the *last hidden states* of a VLM fed a system
prompt, the instruction, the source video's first frame and an optional reference image; a
trainable token refiner (``comfy_kiwi.methods.viva_refiner``) then maps them into the DiT's
cross-attention space. Unlike Kiwi-Edit's encoder there are no query tokens and no slice: every
token of the prompt is kept (system prompt included), and the refiner's key mask marks them all as
real tokens.

Prompt (one user turn)::

    system: VIVA_SYSTEM_PROMPT
    user:   [first frame (image), instruction, (reference image)]

The system prompt text is ours (VIVA's exact wording is not public in the text we have); it can be
changed through ``VivaInstructor(system_prompt=...)``. The encoder's own Qwen model, processor
and vision preprocessing (``MLLMEncoder``) are reused as they are: this module only builds a
different prompt and returns a different slice, so it is additive to the Kiwi-Edit path.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..progress import Progress
from .preprocess import VisionInputs, as_frames, prepare_image

VIVA_SYSTEM_PROMPT = ("You are a video editing instructor. You will be given the first frame of a video, an "
                      "editing instruction and possibly a reference image. Describe precisely how the video "
                      "must change and what must stay the same.")


class VivaInstructor:
    """``hidden_states(instruction, frames, reference=None) → (hidden [1, L, hidden_size], mask [1, L])``.

    ``encoder`` is a loaded :class:`comfy_kiwi.mllm.encoder.MLLMEncoder` (its Qwen, processor and
    config); its queries and connectors are not used. The hidden states are the language model's
    final (post-norm) hidden states of the whole prompt.
    """

    def __init__(self, encoder, system_prompt: str = VIVA_SYSTEM_PROMPT):
        if not hasattr(encoder, "hidden_states") or not hasattr(encoder, "processor"):
            raise InputError("VivaInstructor needs a comfy_kiwi MLLMEncoder (Qwen2.5-VL + processor).")
        self.encoder = encoder
        self.system_prompt = system_prompt

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def messages(self, instruction: str, has_reference: bool) -> list[dict]:
        content = [{"type": "image"}, {"type": "text", "text": instruction}]
        if has_reference:
            content.append({"type": "image"})
        return [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
                {"role": "user", "content": content}]

    def vision(self, frames, reference=None) -> VisionInputs:
        """The first source frame, then the reference, as images (prompt order)."""
        enc = self.encoder
        frames = as_frames(frames, "source frames")
        images = [prepare_image(frames[:1], enc.processor.vision, None, "source first frame")]
        if reference is not None:
            reference = as_frames(reference, "reference image")
            if reference.shape[0] != 1:
                raise InputError(f"reference image: expected one image, got {reference.shape[0]} frames.")
            images.append(prepare_image(reference, enc.processor.vision, enc.config.ref_max_pixels,
                                        "reference image"))
        out = VisionInputs()
        out.pixel_values = torch.cat([p for p, _ in images], dim=0)
        out.image_grid_thw = torch.tensor([g for _, g in images], dtype=torch.long)
        out.frame_indices = [0]
        return out

    def hidden_states(self, instruction: str, frames, reference=None, *, allow_empty: bool = False):
        """(hidden [1, L, C] in the Qwen dtype, mask [1, L] bool, all True)."""
        return self.hidden_states_batch([instruction], frames, reference, allow_empty=allow_empty)[0]

    def hidden_states_batch(self, instructions, frames, reference=None, *, allow_empty: bool = False):
        """One (hidden, mask) per instruction on the same visual inputs (the vision tower runs once)."""
        enc = self.encoder
        if isinstance(instructions, str) or not instructions:
            raise InputError("instructions must be a non-empty list of strings.")
        texts = [enc.processor.check_instruction(t, allow_empty) for t in instructions]
        vision = self.vision(frames, reference)
        grad = torch.is_grad_enabled() and enc.training
        out = []
        # ComfyUI's bar and cancel: the vision tower, then each prompt through the language model
        with torch.set_grad_enabled(grad), Progress(1 + len(texts), "VLM instructor", console=False) as bar:
            image_embeds, _ = enc.vision_features(vision)
            bar.step()
            for text in texts:
                ids = enc.processor.input_ids(self.messages(text, reference is not None), vision)
                hidden = enc.hidden_states(ids, vision, image_embeds, None, None)
                out.append((hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)))
                bar.step()
        return out

    def encode_pair(self, instruction: str, frames, reference=None):
        """((hidden, mask) of the instruction, (hidden, mask) of the empty instruction) — the
        instruction-only CFG pair: the negative keeps the same frame and reference."""
        self.encoder.processor.check_instruction(instruction)
        pos, neg = self.hidden_states_batch([instruction, ""], frames, reference, allow_empty=True)
        return pos, neg
