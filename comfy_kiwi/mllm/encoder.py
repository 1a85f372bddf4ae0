"""Kiwi-Edit's instruction encoder: stock Qwen2.5-VL + learnable queries + connectors.

One forward, as the released code computes it:

1. the prompt of the mode (prompt.py) with its vision tokens expanded; pixels (preprocess.py);
2. ``inputs_embeds`` = token embeddings, image features scattered into ``<|image_pad|>`` rows,
   video features into ``<|video_pad|>`` rows, then the mode's learnable queries into the
   placeholder (``<|object_ref_start|>``) rows. We build this ourselves and call the stock language
   model with ``inputs_embeds``: no patched transformers code and no hooks;
3. 3D rope positions from ``input_ids`` and the grids (:func:`release_rope_index`);
4. features = final (post-norm) hidden state ``[:, -N:]``: because the prompt ends with
   ``<|im_end|>\\n`` this is queries 3..N plus those two tokens, exactly as released;
   context = ``connector(features)``; reference mode prepends
   ``ref_connector(hidden[:, vs+1:ve])`` (the reference image tokens). Without a reference branch
   (InstructX, ``reference_without_branch = "video"``) the reference image only joins the prompt and
   the video queries read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..progress import Progress
from .config import MLLMEncoderConfig
from .preprocess import VisionInputs, as_frames, build_vision_inputs
from .prompt import PromptProcessor, build_messages, choose_mode, num_queries_for

EXTRA_PREFIXES = ("image_queries", "video_queries", "ref_queries", "connector.", "ref_connector.")


def make_connector(hidden_size: int, dit_dim: int) -> nn.Sequential:
    """Linear -> GELU(tanh) -> Linear, the last layer zero-initialised (training starts at 0)."""
    net = nn.Sequential(nn.Linear(hidden_size, dit_dim), nn.GELU(approximate="tanh"), nn.Linear(dit_dim, dit_dim))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


def release_rope_index(input_ids: torch.Tensor, image_grid_thw, video_grid_thw, second_per_grid_ts: Sequence[float],
                       *, image_token_id: int, video_token_id: int, spatial_merge_size: int,
                       tokens_per_second: float) -> torch.Tensor:
    """[3, L] mrope positions of one sequence, by transformers 4.57's rule (the released one).

    Text advances all three axes by one per token. A vision block starting at position s gets
    (s + t*interval, s + row, s + col), interval = tokens_per_second * second_per_grid_ts (so 2 per
    temporal pair at the released fps 2.0). The text after it starts at the block's largest
    position + 1. (transformers 5 restarts at s + max(rows, cols) instead, which differs when the
    temporal axis is the longest, e.g. 16 small frames; see the tests.)
    """
    ids = input_ids.tolist()
    grids = {image_token_id: iter(image_grid_thw if image_grid_thw is not None else []),
             video_token_id: iter(video_grid_thw if video_grid_thw is not None else [])}
    seconds = iter(second_per_grid_ts)
    pieces, nxt, i = [], 0, 0
    while i < len(ids):
        tok = ids[i]
        if tok not in grids:
            j = i
            while j < len(ids) and ids[j] not in grids:
                j += 1
            pieces.append(torch.arange(nxt, nxt + j - i).expand(3, -1))
            nxt += j - i
            i = j
            continue
        try:
            t, h, w = (int(v) for v in next(grids[tok]))
        except StopIteration:
            raise InputError("internal: more vision blocks in the prompt than grids.") from None
        h, w = h // spatial_merge_size, w // spatial_merge_size
        n = t * h * w
        if ids[i:i + n] != [tok] * n:
            raise InputError(f"internal: vision block at {i} is not {n} consecutive pad tokens.")
        interval = tokens_per_second * next(seconds) if tok == video_token_id else 0.0
        tt = (torch.arange(t) * interval).long().view(t, 1, 1).expand(t, h, w)
        hh = torch.arange(h).view(1, h, 1).expand(t, h, w)
        ww = torch.arange(w).view(1, 1, w).expand(t, h, w)
        block = torch.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]) + nxt
        pieces.append(block)
        nxt = int(block.max()) + 1
        i += n
    return torch.cat(pieces, dim=1)


class MLLMEncoder(nn.Module):
    """Qwen2.5-VL instruction encoder producing DiT-wide context tokens ``[1, L, dit_dim]``."""

    def __init__(self, model: nn.Module, processor: PromptProcessor, config: MLLMEncoderConfig,
                 init_seed: int = 0):
        super().__init__()
        text_hidden = _text_config(model).hidden_size
        if text_hidden != config.hidden_size:
            raise CheckpointError(f"MLLM encoder config says hidden_size {config.hidden_size} but the Qwen model's "
                                  f"hidden size is {text_hidden}.")
        self.model = model                 # stock Qwen2_5_VLForConditionalGeneration
        self.processor = processor
        self.config = config
        h, d = config.hidden_size, config.dit_dim
        with torch.random.fork_rng(devices=[]):   # deterministic training init, global RNG untouched
            torch.manual_seed(init_seed)
            self.image_queries = nn.Parameter(torch.randn(config.num_image_queries, h) * 0.02)
            self.video_queries = nn.Parameter(torch.randn(config.num_video_queries, h) * 0.02)
            self.ref_queries = (nn.Parameter(torch.randn(config.num_ref_queries, h) * 0.02)
                                if config.has_reference else None)
            self.connector = make_connector(h, d)
            self.ref_connector = make_connector(h, d) if config.has_reference else None
        # Cast only our tensors: a module-wide .to(dtype) would also round the Qwen rope
        # frequencies (fp32 buffers, as transformers keeps them) to bf16.
        dtype = next(model.parameters()).dtype
        for name, param in self.named_parameters():
            if not name.startswith("model."):
                param.data = param.data.to(dtype)
        self.model.requires_grad_(False)
        self.eval()   # inference by default (no grads); the trainer calls .train()

    # Placement ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.image_queries.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_queries.dtype

    def offload(self) -> MLLMEncoder:
        """Move every weight to the CPU (after encoding, to free GPU memory for the DiT)."""
        return self.to("cpu")

    # Release tensors ---------------------------------------------------------------------------
    def extras_state_dict(self) -> dict[str, torch.Tensor]:
        """Queries and connectors under the release's key names."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(EXTRA_PREFIXES)}

    def load_extras(self, state: Mapping, source: str = "state dict", strict: bool = True) -> list[str]:
        """Copy queries/connectors (release key names) in; returns the keys of ours that were absent.

        Mis-shaped or unknown keys raise CheckpointError; absent keys raise only when ``strict``.
        """
        ours = self.extras_state_dict()
        unknown = [k for k in state if k not in ours]
        shape = getattr(state, "shape", None)
        bad = [f"{k}: file {list(shape(k) if shape else state[k].shape)} vs model {list(ours[k].shape)}"
               for k in ours if k in state and tuple(shape(k) if shape else state[k].shape) != tuple(ours[k].shape)]
        missing = [k for k in ours if k not in state]
        problems = []
        if bad:
            problems.append("mis-shaped: " + ", ".join(bad))
        if unknown:
            problems.append("unexpected keys: " + ", ".join(sorted(unknown)[:12]))
        if missing and strict:
            problems.append("missing keys: " + ", ".join(missing))
        if problems:
            raise CheckpointError(f"{source}: does not fit the MLLM encoder's queries/connectors "
                                  f"(num queries {self.config.num_image_queries}/{self.config.num_video_queries}/"
                                  f"{self.config.num_ref_queries}, hidden {self.config.hidden_size}, dit_dim "
                                  f"{self.config.dit_dim}): " + "; ".join(problems))
        with torch.no_grad():
            for k in ours:
                if k in state:
                    ours[k].copy_(state[k].to(ours[k].dtype))
        return missing

    # Encoding ----------------------------------------------------------------------------------
    def queries_for(self, mode: str) -> torch.Tensor:
        num_queries_for(mode, self.config)   # raises for reference without a reference branch
        ref = self.ref_queries if self.config.has_reference else self.video_queries     # InstructX: video queries
        return {"image": self.image_queries, "video": self.video_queries, "reference": ref}[mode]

    def encode(self, instruction: str, frames, reference=None, *, allow_empty: bool = False) -> torch.Tensor:
        """Context tokens ``[1, L, dit_dim]`` for one instruction and the source frames
        ``[F,H,W,3]`` (0..1), optionally with a reference image ``[1,H,W,3]``/``[H,W,3]``."""
        return self.encode_batch([instruction], frames, reference, allow_empty=allow_empty)

    def encode_negative(self, frames, reference=None) -> torch.Tensor:
        """The classifier-free-guidance negative: empty instruction, same visual inputs (VIVA)."""
        return self.encode_batch([""], frames, reference, allow_empty=True)

    def encode_pair(self, instruction: str, frames, reference=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) contexts sharing one vision-tower pass."""
        self.processor.check_instruction(instruction)
        out = self.encode_batch([instruction, ""], frames, reference, allow_empty=True)
        return out[:1], out[1:]

    def encode_batch(self, instructions: Sequence[str], frames, reference=None, *,
                     allow_empty: bool = False) -> torch.Tensor:
        """Contexts ``[B, L, dit_dim]`` of several instructions on the same visual inputs (the
        vision tower runs once; each prompt runs through the language model separately)."""
        if isinstance(instructions, str) or not instructions:
            raise InputError("instructions must be a non-empty list of strings.")
        instructions = [self.processor.check_instruction(t, allow_empty) for t in instructions]
        mode, vision = self.prepare_vision(frames, reference)
        queries = self.queries_for(mode)
        grad = torch.is_grad_enabled() and self.training
        # ComfyUI's bar and cancel: the vision tower, then each prompt through the language model
        with torch.set_grad_enabled(grad), Progress(1 + len(instructions), "MLLM encode", console=False) as bar:
            image_embeds, video_embeds = self.vision_features(vision)
            bar.step()
            contexts = []
            for text in instructions:
                contexts.append(self.context_from_ids(self.prompt_ids(mode, text, vision, allow_empty), vision,
                                                      image_embeds, video_embeds, queries, mode))
                bar.step()
        return torch.cat(contexts, dim=0)

    def prepare_vision(self, frames, reference=None) -> tuple[str, VisionInputs]:
        """(mode, pixels and grids) for source frames ``[F,H,W,3]`` and an optional reference."""
        frames = as_frames(frames, "source frames")
        if reference is not None:
            reference = as_frames(reference, "reference image")
            if reference.shape[0] != 1:
                raise InputError(f"reference image: expected one image, got {reference.shape[0]} frames.")
        mode = choose_mode(frames.shape[0], reference is not None)
        num_queries_for(mode, self.config)   # a reference without a reference branch fails here
        return mode, build_vision_inputs(frames, reference, mode, self.processor.vision, self.config)

    def prompt_ids(self, mode: str, instruction: str, vision: VisionInputs, allow_empty: bool = False) -> torch.Tensor:
        """[1, L] token ids of the mode's prompt (placeholders included)."""
        instruction = self.processor.check_instruction(instruction, allow_empty)
        ids = self.processor.input_ids(build_messages(mode, instruction, self.config), vision)
        n, found = num_queries_for(mode, self.config), int((ids == self.processor.placeholder_id).sum())
        if found != n:
            raise InputError(f"internal: the {mode} prompt holds {found} query placeholders, expected {n}.")
        return ids

    def vision_features(self, vision: VisionInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Merged vision-tower features of the images and of the videos (in prompt order)."""
        inner, dev = self.model.model, self.device
        dtype = inner.visual.dtype if hasattr(inner.visual, "dtype") else self.dtype
        image = video = None
        if vision.pixel_values is not None:
            image = _cat_features(inner.get_image_features(vision.pixel_values.to(dev, dtype),
                                                           vision.image_grid_thw.to(dev)))
        if vision.pixel_values_videos is not None:
            video = _cat_features(inner.get_video_features(vision.pixel_values_videos.to(dev, dtype),
                                                           vision.video_grid_thw.to(dev)))
        return image, video

    def inputs_embeds(self, input_ids: torch.Tensor, image_embeds, video_embeds, queries) -> torch.Tensor:
        """Token embeddings with vision features, then the queries, scattered into their rows."""
        proc = self.processor
        embeds = self.model.model.get_input_embeddings()(input_ids)
        for token_id, feats, what in ((proc.image_pad_id, image_embeds, "image"),
                                      (proc.video_pad_id, video_embeds, "video"),
                                      (proc.placeholder_id, queries, "query")):
            mask = input_ids == token_id
            count = int(mask.sum())
            rows = 0 if feats is None else feats.shape[0]
            if count != rows:
                raise InputError(f"internal: the prompt has {count} {what} tokens but {rows} {what} vectors.")
            if rows:
                embeds = embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))
        return embeds

    def position_ids(self, input_ids: torch.Tensor, vision: VisionInputs) -> torch.Tensor:
        cfg = self.model.config
        vis_cfg = cfg.vision_config
        pos = release_rope_index(input_ids[0].cpu(), vision.image_grid_thw, vision.video_grid_thw,
                                 vision.second_per_grid_ts, image_token_id=self.processor.image_pad_id,
                                 video_token_id=self.processor.video_pad_id,
                                 spatial_merge_size=vis_cfg.spatial_merge_size,
                                 tokens_per_second=vis_cfg.tokens_per_second)
        return pos.unsqueeze(1).to(input_ids.device)   # [3, 1, L]

    def hidden_states(self, input_ids: torch.Tensor, vision: VisionInputs, image_embeds, video_embeds,
                      queries) -> torch.Tensor:
        """Final (post-norm) hidden states ``[1, L, hidden]`` of the language model."""
        input_ids = input_ids.to(self.device)
        embeds = self.inputs_embeds(input_ids, image_embeds, video_embeds, queries)
        out = self.model.model.language_model(inputs_embeds=embeds, position_ids=self.position_ids(input_ids, vision),
                                              attention_mask=None, use_cache=False)
        return out.last_hidden_state

    def context_from_ids(self, input_ids: torch.Tensor, vision: VisionInputs, image_embeds, video_embeds,
                         queries: torch.Tensor, mode: str) -> torch.Tensor:
        hidden = self.hidden_states(input_ids, vision, image_embeds, video_embeds, queries)
        n = queries.shape[0]
        # The released slice: the last N positions (queries 3..N + "<|im_end|>" + "\n").
        # connectors may be kept in fp32 while training a bf16 Qwen (their weights' dtype decides)
        context = self.connector(hidden[:, -n:].to(self.connector[0].weight.dtype))
        if mode == "reference" and self.config.has_reference:     # Kiwi: + the reference image's own tokens
            start, end = reference_token_span(input_ids[0], self.processor.vision_start_id,
                                              self.processor.vision_end_id)
            ref = self.ref_connector(hidden[:, start:end].to(self.ref_connector[0].weight.dtype))
            context = torch.cat([ref, context.to(ref.dtype)], dim=1)
        return context


def reference_token_span(input_ids: torch.Tensor, vision_start_id: int, vision_end_id: int) -> tuple[int, int]:
    """(first, end) of the tokens between the last ``<|vision_start|>`` and the next ``<|vision_end|>``."""
    starts = (input_ids == vision_start_id).nonzero().flatten()
    if len(starts) == 0:
        raise InputError("internal: the reference prompt has no <|vision_start|> token.")
    vs = int(starts[-1])
    ends = (input_ids[vs:] == vision_end_id).nonzero().flatten()
    if len(ends) == 0:
        raise InputError("internal: the reference image has no closing <|vision_end|> token.")
    return vs + 1, vs + int(ends[0])


def _cat_features(out) -> torch.Tensor:
    """get_*_features returns a tuple of per-item tensors (4.x) or an output whose pooler_output
    holds them (5.x)."""
    parts = getattr(out, "pooler_output", out)
    if isinstance(parts, torch.Tensor):
        return parts
    return torch.cat(list(parts), dim=0)


def _text_config(model):
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg
