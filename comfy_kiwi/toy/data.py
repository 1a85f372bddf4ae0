"""Toy datasets as the trainer sees them: example → codec latents + MLLM inputs, prepared once.

Three datasets mirror the Kiwi-Edit curriculum's data: ``image`` (1-frame pairs, non-reference edits),
``video`` (17-frame pairs, non-reference edits) and ``reference`` (17-frame pairs whose edit adds or
replaces the object shown in a reference image). Splits use disjoint seed ranges (``world.split_seeds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..frames import frames_to_vae, pad_reference
from .codec import ToyPatchCodec
from .world import EDIT_KINDS, NUM_FRAMES, REFERENCE_KINDS, ToyExample, make_example, split_seeds

PLAIN_KINDS = tuple(k for k in EDIT_KINDS if k not in REFERENCE_KINDS)
DATASETS = {"image": (PLAIN_KINDS, 1), "video": (PLAIN_KINDS, NUM_FRAMES), "reference": (REFERENCE_KINDS, NUM_FRAMES)}
# Seeds of one split are shared by the datasets; an offset keeps their examples different.
_DATASET_OFFSET = {"image": 0, "video": 300_000, "reference": 600_000}


def example_frames(example: ToyExample, which: str = "source") -> torch.Tensor:
    """[F, H, W, 3] float in 0..1 of the example's source or target."""
    return torch.from_numpy(getattr(example, which)).float().div_(255.0)


def example_reference(example: ToyExample) -> torch.Tensor | None:
    return None if example.reference is None else torch.from_numpy(example.reference).float().div_(255.0)[None]


def dataset_examples(name: str, split: str, count: int, start: int = 0) -> list[ToyExample]:
    if name not in DATASETS:
        raise InputError(f"unknown toy dataset {name!r}; known: {', '.join(DATASETS)}.")
    kinds, frames = DATASETS[name]
    return [make_example(s + _DATASET_OFFSET[name], kinds, frames) for s in split_seeds(split, count, start)]


@dataclass
class ToySample:
    example: ToyExample
    source: torch.Tensor            # [48, f, h, w] codec latents
    target: torch.Tensor
    reference: torch.Tensor | None  # [48, 1, h, w] (reference padded on a white canvas, as the pipeline does)
    mode: str                       # MLLM mode: image / video / reference
    vision: object                  # VisionInputs
    input_ids: torch.Tensor         # [1, L]


def prepare_samples(examples: list[ToyExample], encoder, codec: ToyPatchCodec | None = None) -> list[ToySample]:
    """Latents and MLLM inputs of each example (prompt ids cached per instruction: the vision grid
    of every toy example of one mode is the same)."""
    codec = codec or ToyPatchCodec()
    ids_cache: dict = {}
    out = []
    for ex in examples:
        src, tgt, ref = example_frames(ex, "source"), example_frames(ex, "target"), example_reference(ex)
        lat = codec.encode(torch.cat([frames_to_vae(src), frames_to_vae(tgt)]))
        ref_lat = None
        if ref is not None:
            ref_lat = codec.encode(frames_to_vae(pad_reference(ref, src.shape[2], src.shape[1])))[0]
        mode, vision = encoder.prepare_vision(src, ref)
        key = (mode, ex.instruction)
        if key not in ids_cache:
            ids_cache[key] = encoder.prompt_ids(mode, ex.instruction, vision)
        out.append(ToySample(ex, lat[0], lat[1], ref_lat, mode, vision, ids_cache[key]))
    return out


def encode_contexts(encoder, samples: list[ToySample]) -> torch.Tensor:
    """MLLM contexts [B, L, dit_dim] of samples of one mode (gradients flow when the encoder trains)."""
    contexts = []
    for s in samples:
        image_embeds, video_embeds = encoder.vision_features(s.vision)
        contexts.append(encoder.context_from_ids(s.input_ids, s.vision, image_embeds, video_embeds,
                                                 encoder.queries_for(s.mode), s.mode))
    return torch.cat(contexts)


def stack(samples: list[ToySample], field: str) -> torch.Tensor | None:
    values = [getattr(s, field) for s in samples]
    return None if values[0] is None else torch.stack(values)
