"""A local Qwen2.5-VL as a question-answering model: requests in, answer text out.

* :class:`VLMRequest` is what every judging task asks: a system text and a user turn made of text,
  images ``[1,H,W,3]`` and videos ``[F,H,W,3]`` (float 0..1), plus the sampling settings and seed.
* :class:`VLM` renders the request with the folder's chat template, builds the vision inputs with
  :mod:`comfy_kiwi.mllm.preprocess` (no torchvision, no HF processor) and runs the stock
  ``generate``. Any callable ``request -> str`` can stand in for it (tests use fakes).
* :func:`ask` runs the retry loop every task shares: attempt ``i`` uses seed ``seed + i``; the first
  attempt uses ``temperature`` (0 = greedy), retries ``retry_temperature`` so they can differ; an
  answer the parser rejects is retried, and after the last attempt the failure is reported with all
  answers and reasons.

Vision inputs: a one-frame "video" is shown as an image. Videos keep at most ``max_frames`` frames
(``linspace(0, n-1, max_frames).round()``), each resized to multiples of 28 within
``max_pixels_per_frame``; images within ``image_max_pixels``. The temporal spacing the model is told
(``second_per_grid_ts``) follows the video's fps when the request gives it (2 fps otherwise).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TypeVar

import torch

from ..errors import CheckpointError, InputError
from ..mllm.config import MLLMEncoderConfig
from ..mllm.preprocess import (IMAGE_MIN_TOKENS, VisionInputs, as_frames, prepare_image,
                               prepare_video, select_frame_indices, smart_resize)
from ..progress import Progress
from .parsing import AnswerParseError

__all__ = ["VLMSettings", "VLMRequest", "VLM", "load_vlm", "ask", "AskResult", "GenerateFn"]

T = TypeVar("T")


@dataclass(frozen=True)
class VLMSettings:
    """What the judge sees. ``max_pixels_per_frame`` caps each video frame; note that Qwen's video
    resize keeps at least 128 tokens (100352 pixels) per frame when the cap allows it."""
    max_frames: int = 16
    max_pixels_per_frame: int = 262144
    image_max_pixels: int = 28 * 28 * 1024
    default_fps: float = 2.0

    def __post_init__(self):
        for k in ("max_frames", "max_pixels_per_frame", "image_max_pixels"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"VLM settings: {k} must be a positive integer, got {v!r}.")
        if self.max_pixels_per_frame < 4 * 28 * 28 or self.image_max_pixels < 4 * 28 * 28:
            raise InputError(f"VLM settings: pixel budgets must be at least {4 * 28 * 28} (4 tokens of 28x28).")
        if not self.default_fps > 0:
            raise InputError(f"VLM settings: default_fps must be positive, got {self.default_fps}.")


@dataclass
class VLMRequest:
    """One question. ``content`` items: ``("text", str)``, ``("image", [1,H,W,3])``,
    ``("video", [F,H,W,3])`` or ``("video", frames, fps)``."""
    content: list
    system: str | None = None
    seed: int = 0
    temperature: float = 0.0
    max_new_tokens: int = 512

    def texts(self) -> str:
        """All text of the request (handy for fakes in tests)."""
        parts = [self.system or ""] + [c[1] for c in self.content if c[0] == "text"]
        return "\n".join(parts)

    def kinds(self) -> list[str]:
        return [c[0] for c in self.content]


GenerateFn = Callable[[VLMRequest], str]


# ---------------------------------------------------------------------------------------------
# the retry loop
# ---------------------------------------------------------------------------------------------

@dataclass
class AskResult:
    value: object | None
    answers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.value is not None

    @property
    def attempts(self) -> int:
        return len(self.answers)


def ask(generate: GenerateFn, make_request: Callable[[int, float], VLMRequest], parse: Callable[[str], T],
        attempts: int = 3, seed: int = 0, temperature: float = 0.0, retry_temperature: float = 0.7) -> AskResult:
    """Ask until ``parse`` accepts an answer, at most ``attempts`` times.

    ``make_request(seed_i, temperature_i)`` builds attempt ``i``'s request (seed ``seed + i``);
    ``parse`` raises :class:`AnswerParseError` to reject an answer (any other error propagates: it is
    a problem of the caller's settings, not of the answer).
    """
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise InputError(f"attempts must be a positive integer, got {attempts!r}.")
    if temperature < 0 or retry_temperature < 0:
        raise InputError("temperatures must be >= 0 (0 = greedy decoding).")
    result = AskResult(None)
    for i in range(attempts):
        temp = temperature if i == 0 else (retry_temperature or temperature)
        answer = generate(make_request(int(seed) + i, float(temp)))
        if not isinstance(answer, str):
            raise InputError(f"the generate function returned {type(answer).__name__}, expected the answer text.")
        result.answers.append(answer)
        try:
            result.value = parse(answer)
            return result
        except AnswerParseError as e:
            result.errors.append(f"attempt {i + 1}: {e}")
    return result


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

class VLM:
    """A Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) with its tokenizer and chat template."""

    def __init__(self, model, processor, settings: VLMSettings | None = None, source: str = ""):
        self.model = model
        self.processor = processor          # comfy_kiwi.mllm.prompt.PromptProcessor
        self.settings = settings or VLMSettings()
        self.source = source
        tok = processor.tokenizer
        self._special = sorted(t for t in set(tok.get_added_vocab()) | set(tok.all_special_tokens) if t)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device) -> VLM:
        self.model.to(device)
        return self

    def with_settings(self, **changes) -> VLM:
        import dataclasses
        return VLM(self.model, self.processor, dataclasses.replace(self.settings, **changes), self.source)

    # inputs -------------------------------------------------------------------------------------
    def image_input_size(self, image) -> tuple[int, int]:
        """(width, height) of ``image`` as the model sees it (Qwen2.5-VL boxes use these pixels)."""
        frames = as_frames(image, "image")
        f = self.processor.vision.factor
        # the same call prepare_image makes
        h, w = smart_resize(frames.shape[1], frames.shape[2], f, IMAGE_MIN_TOKENS * f * f,
                            self.settings.image_max_pixels)
        return w, h

    def _check_text(self, text) -> str:
        if not isinstance(text, str):
            raise InputError(f"request text must be a string, got {type(text).__name__}.")
        found = [t for t in self._special if t in text]
        if found:
            raise InputError(f"text contains the tokenizer's special token(s) {', '.join(found)}; remove them.")
        return text

    def build_inputs(self, request: VLMRequest) -> tuple[torch.Tensor, VisionInputs]:
        """(input ids [1, L] ending with the assistant prefix, vision inputs) of a request."""
        vision = self.processor.vision
        settings = self.settings
        content, images, videos, video_ts = [], [], [], []
        for item in request.content:
            if not isinstance(item, (tuple, list)) or not item:
                raise InputError(f"request content items are (kind, value) tuples; got {item!r:.60}.")
            kind = item[0]
            if kind == "text":
                content.append({"type": "text", "text": self._check_text(item[1])})
                continue
            if kind not in ("image", "video"):
                raise InputError(f"unknown request content kind {kind!r}; use 'text', 'image' or 'video'.")
            frames = as_frames(item[1], f"{kind} input")
            if frames.shape[0] == 1:
                images.append(prepare_image(frames, vision, settings.image_max_pixels, f"{kind} input"))
                content.append({"type": "image"})
                continue
            fps = float(item[2]) if len(item) > 2 and item[2] else settings.default_fps
            if not math.isfinite(fps) or fps <= 0:
                raise InputError(f"video fps must be positive, got {fps}.")
            n = frames.shape[0]
            keep = len(select_frame_indices(n, settings.max_frames))
            sampled_fps = fps * keep / n
            cfg = MLLMEncoderConfig(max_frames=settings.max_frames, max_pixels_per_frame=settings.max_pixels_per_frame,
                                    frame_resize_factor=vision.factor, video_fps=sampled_fps)
            patches, grid, _ = prepare_video(frames, vision, cfg, "video input")
            videos.append((patches, grid))
            video_ts.append(vision.temporal_patch_size / sampled_fps)
            content.append({"type": "video"})
        out = VisionInputs()
        if images:
            out.pixel_values = torch.cat([p for p, _ in images])
            out.image_grid_thw = torch.tensor([g for _, g in images], dtype=torch.long)
        if videos:
            out.pixel_values_videos = torch.cat([p for p, _ in videos])
            out.video_grid_thw = torch.tensor([g for _, g in videos], dtype=torch.long)
            out.second_per_grid_ts = video_ts
        messages = []
        if request.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self._check_text(request.system)}]})
        messages.append({"role": "user", "content": content})
        proc = self.processor
        text = proc.tokenizer.apply_chat_template(messages, chat_template=proc.chat_template, tokenize=False,
                                                  add_generation_prompt=True)
        text = proc.expand_vision_tokens(text, out)
        ids = proc.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids], dtype=torch.long), out

    # generation ---------------------------------------------------------------------------------
    def _generation_config(self, request: VLMRequest):
        from transformers import GenerationConfig
        base = self.model.generation_config
        tok = self.processor.tokenizer
        eos = base.eos_token_id if base.eos_token_id is not None else tok.eos_token_id
        pad = base.pad_token_id if base.pad_token_id is not None else (tok.pad_token_id or
                                                                        (eos[0] if isinstance(eos, list) else eos))
        sample = request.temperature > 0
        kw = dict(max_new_tokens=int(request.max_new_tokens), do_sample=sample, eos_token_id=eos,
                  pad_token_id=pad, bos_token_id=base.bos_token_id)
        if sample:
            kw.update(temperature=float(request.temperature), top_p=1.0, top_k=0)
        return GenerationConfig(**kw)

    @torch.no_grad()
    def __call__(self, request: VLMRequest) -> str:
        if request.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}.")
        ids, vis = self.build_inputs(request)
        dev, dtype = self.device, self.dtype
        kw = {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids, device=dev)}
        if vis.pixel_values is not None:
            kw.update(pixel_values=vis.pixel_values.to(dev, dtype), image_grid_thw=vis.image_grid_thw.to(dev))
        if vis.pixel_values_videos is not None:
            kw.update(pixel_values_videos=vis.pixel_values_videos.to(dev, dtype),
                      video_grid_thw=vis.video_grid_thw.to(dev),
                      second_per_grid_ts=torch.tensor(vis.second_per_grid_ts, dtype=torch.float32, device=dev))
        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), Progress(request.max_new_tokens, "judging", console=False) as bar:
            torch.manual_seed(int(request.seed))
            out = self.model.generate(**kw, generation_config=self._generation_config(request),
                                      stopping_criteria=_token_progress(bar))
        return self.processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _token_progress(bar: Progress):
    """A stopping criterion that never stops generation: one step of ComfyUI's bar per generated token, and
    ComfyUI's cancel (which raises) checked between tokens."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class TokenProgress(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            bar.step()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([TokenProgress()])


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

def _default_device():
    from ..comfyui.adapter import compute_device
    return compute_device()


def load_vlm(path, dtype: torch.dtype | None = None, device=None, settings: VLMSettings | None = None) -> VLM:
    """A stock Qwen2.5-VL folder (``config.json`` with model_type ``qwen2_5_vl``, safetensors weights,
    tokenizer + chat template) loaded from local files only, never with remote code.

    ``dtype`` None: bfloat16 on CUDA, float32 elsewhere. ``device`` None: ComfyUI's device inside
    ComfyUI, else CUDA when available, else CPU.
    """
    from ..mllm.loader import load_processor, load_qwen_config
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; the judge needs a local Qwen2.5-VL model folder "
                              "(config.json, model*.safetensors, tokenizer files).")
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder}: no config.json; expected a Qwen2.5-VL model folder.")
    if not any(folder.glob("model*.safetensors")):
        raise CheckpointError(f"{folder}: no model*.safetensors weights (only safetensors folders are loaded).")
    qwen_config = load_qwen_config(folder / "config.json")
    processor = load_processor(folder, qwen_config, "<|object_ref_start|>", f"VLM folder {folder}")
    device = torch.device(device) if device is not None else _default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from transformers import Qwen2_5_VLForConditionalGeneration
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{folder}: the Qwen2.5-VL weights could not be loaded ({type(e).__name__}: "
                              f"{first[:300]}).") from None
    model.to(device).eval().requires_grad_(False)
    return VLM(model, processor, settings, source=str(folder))


def describe_request(request: VLMRequest) -> str:
    """A short JSON description of a request (kinds and shapes; for logs)."""
    items = []
    for c in request.content:
        if c[0] == "text":
            items.append({"text": c[1][:60]})
        else:
            items.append({c[0]: list(getattr(c[1], "shape", []))})
    return json.dumps({"system": (request.system or "")[:60], "content": items, "seed": request.seed})
