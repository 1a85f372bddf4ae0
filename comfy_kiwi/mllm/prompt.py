"""The chat prompt of each encoding mode and its token ids.

Released layout (one user turn, items joined with nothing between them)::

    image:     [image, instruction, N x <|object_ref_start|>]                         N = 256
    video:     [video, instruction, N x <|object_ref_start|>]                         N = 512
    reference: [video, instruction + suffix, reference image, N x <|object_ref_start|>]  N = 768

rendered by the processor's own chat template (``tokenize=False, add_generation_prompt=False``), so
the text ends ``...<|object_ref_start|><|im_end|>\\n``. Each ``<|image_pad|>`` / ``<|video_pad|>``
the template writes is then repeated once per merged vision token, as the HF processor does.
"""

from __future__ import annotations

import re

import torch

from ..errors import CheckpointError, InputError
from .config import MLLMEncoderConfig
from .preprocess import VisionInputs, VisionSettings

MODES = ("image", "video", "reference")
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"


def choose_mode(num_frames: int, has_reference: bool) -> str:
    """Image mode only for one frame without a reference; a reference always takes the video path
    (as the released diffusers pipeline does, even for a 1-frame source)."""
    if has_reference:
        return "reference"
    return "image" if num_frames == 1 else "video"


def num_queries_for(mode: str, cfg: MLLMEncoderConfig) -> int:
    if mode == "image":
        return cfg.num_image_queries
    if mode == "video":
        return cfg.num_video_queries
    if mode == "reference":
        if cfg.has_reference:
            return cfg.num_ref_queries
        if cfg.reference_without_branch == "video":      # InstructX: the video queries read source + reference
            return cfg.num_video_queries
        raise InputError(f"the {cfg.name} MLLM encoder has no reference branch (no reference queries or "
                         "reference connector); remove the reference image, or load a Kiwi-Edit reference model "
                         "or an InstructX release (mllm_encoder/config.json: \"reference_without_branch\": "
                         "\"video\").")
    raise InputError(f"unknown MLLM mode {mode!r}; expected one of {', '.join(MODES)}.")


def build_messages(mode: str, instruction: str, cfg: MLLMEncoderConfig) -> list[dict]:
    """Chat messages of one mode. Vision items carry only their type: the template needs no more."""
    n = num_queries_for(mode, cfg)
    queries = {"type": "text", "text": cfg.placeholder_token * n}
    if mode == "image":
        content = [{"type": "image"}, {"type": "text", "text": instruction}, queries]
    elif mode == "video":
        content = [{"type": "video"}, {"type": "text", "text": instruction}, queries]
    else:
        content = [{"type": "video"}, {"type": "text", "text": instruction + cfg.reference_suffix},
                   {"type": "image"}, queries]
    return [{"role": "system", "content": [{"type": "text", "text": cfg.system_prompt}]},
            {"role": "user", "content": content}]


class PromptProcessor:
    """Tokenizer + chat template + vision settings: the parts of the Qwen processor we use."""

    def __init__(self, tokenizer, chat_template: str | None, vision: VisionSettings,
                 placeholder_token: str = "<|object_ref_start|>"):
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        if not self.chat_template:
            raise CheckpointError("the Qwen processor has no chat template (chat_template.jinja / "
                                  "chat_template.json / tokenizer_config.json 'chat_template').")
        self.vision = vision
        self.placeholder_token = placeholder_token
        self.placeholder_id = self.token_id(placeholder_token)
        self.image_pad_id = self.token_id(IMAGE_PAD)
        self.video_pad_id = self.token_id(VIDEO_PAD)
        self.vision_start_id = self.token_id(VISION_START)
        self.vision_end_id = self.token_id(VISION_END)
        self._special = sorted(set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens))

    def token_id(self, token: str) -> int:
        """The id of one special token, read from the tokenizer (never hard-coded)."""
        ids = self.tokenizer.convert_tokens_to_ids([token])
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if not ids or ids[0] is None or (unk is not None and ids[0] == unk):
            raise CheckpointError(f"the Qwen tokenizer has no {token} token; is this a Qwen2.5-VL tokenizer?")
        return int(ids[0])

    def check_instruction(self, instruction, allow_empty: bool = False) -> str:
        from ..user_text import check_user_text
        check_user_text(instruction)
        if not instruction.strip() and not allow_empty:
            raise InputError("instruction is empty; write what to change (an empty instruction is only used "
                             "for the negative encoding of classifier-free guidance).")
        found = [t for t in self._special if t and t in instruction]
        if found:
            raise InputError(f"instruction contains the tokenizer's special token(s) {', '.join(found)}; "
                             "they would change the prompt layout.")
        return instruction

    def render(self, messages: list[dict]) -> str:
        text = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=False)
        if not isinstance(text, str):
            raise CheckpointError("the chat template did not render to text.")
        return text

    def expand_vision_tokens(self, text: str, vision: VisionInputs) -> str:
        """Repeat each image/video pad token once per merged vision token, in prompt order."""
        image_counts = vision.image_token_counts(self.vision.merge_size)
        video_counts = vision.video_token_counts(self.vision.merge_size)
        parts = re.split(f"({re.escape(IMAGE_PAD)}|{re.escape(VIDEO_PAD)})", text)
        n_img = parts.count(IMAGE_PAD)
        n_vid = parts.count(VIDEO_PAD)
        if n_img != len(image_counts) or n_vid != len(video_counts):
            raise InputError(f"internal: the prompt has {n_img} image and {n_vid} video slots but "
                             f"{len(image_counts)} images and {len(video_counts)} videos were prepared.")
        images, videos = iter(image_counts), iter(video_counts)
        out = []
        for part in parts:
            if part == IMAGE_PAD:
                out.append(IMAGE_PAD * next(images))
            elif part == VIDEO_PAD:
                out.append(VIDEO_PAD * next(videos))
            else:
                out.append(part)
        return "".join(out)

    def input_ids(self, messages: list[dict], vision: VisionInputs) -> torch.Tensor:
        """[1, L] token ids of the rendered prompt with vision tokens expanded."""
        text = self.expand_vision_tokens(self.render(messages), vision)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids], dtype=torch.long)
