"""Edit held-out toy examples with a toy model and score them with the toy judge.

Sampling is the release's: flow-match Euler, shift 5, σ schedule "kiwi", seeded CPU noise — batched
over examples of one dataset (for ``sigma_add`` each row is exactly what ``sample_edit`` computes for
that example alone). Baselines: ``identity`` (return the source unchanged) needs no model.
"""

from __future__ import annotations

import numpy as np
import torch

from ..frames import vae_to_frames
from ..sampling import flow_sigmas, noise_like, sample_euler, sigma_to_timestep, start_latents
from ..sampling.step_cache import step_cache as cached_steps
from .codec import ToyPatchCodec
from .data import ToySample, encode_contexts, stack
from .judge import mean_scores, score_edit, to_uint8_frames
from .source_modes import dit_velocity


@torch.no_grad()
def edit_samples(dit, encoder, samples: list[ToySample], source_mode: str = "sigma_add", steps: int = 20,
                 shift: float = 5.0, seed: int = 0, batch: int = 16, denoise: float = 1.0,
                 step_cache: float = 0.0, cache_log: list | None = None) -> list[np.ndarray]:
    """Edited frames (uint8 [F, H, W, 3]) of samples that share one dataset (same shapes and mode).
    ``denoise`` < 1 starts from the noised source latents, as ``EditSettings.denoise`` does.
    ``step_cache``: the step-cache threshold (0 = off); each run's ``StepCache`` is appended to ``cache_log``.
    The cache decides per DiT call, i.e. for a whole batch: use ``batch=1`` for one edit's decisions."""
    codec = ToyPatchCodec()
    was_training = (dit.training, encoder.training)
    dit.eval()
    encoder.eval()
    out = []
    try:
        for lo in range(0, len(samples), batch):
            chunk = samples[lo:lo + batch]
            ctx = encode_contexts(encoder, chunk)
            src, ref = stack(chunk, "source"), stack(chunk, "reference")
            sigmas = flow_sigmas(steps, shift, "kiwi", denoise)
            x = noise_like(tuple(src.shape), seed + lo)
            if denoise < 1.0:
                x = start_latents(x, float(sigmas[0]), src)

            def velocity(x, sigma, i, ctx=ctx, src=src, ref=ref):
                t = sigma_to_timestep(sigma, x.shape[0], next(dit.parameters()).dtype)
                return dit_velocity(dit, x, t, torch.full((x.shape[0],), float(sigma)), ctx, src, ref, source_mode)

            with cached_steps(dit, step_cache) as cache:
                x = sample_euler(velocity, x, sigmas, progress=False, step_cache=cache)
            if cache is not None and cache_log is not None:
                cache_log.append(cache)
            frames = vae_to_frames(codec.decode(x))                  # [B·F, H, W, 3]
            f = frames.shape[0] // len(chunk)
            out.extend(to_uint8_frames(frames[i * f:(i + 1) * f]) for i in range(len(chunk)))
    finally:
        dit.train(was_training[0])
        encoder.train(was_training[1])
    return out


def evaluate(dit, encoder, pools: dict[str, list[ToySample]], source_mode: str = "sigma_add", steps: int = 20,
             seed: int = 0, denoise: float = 1.0, **sampling) -> dict:
    """Mean toy-judge scores per dataset and over all datasets (each dataset weighs the same).
    ``sampling``: further ``edit_samples`` arguments (batch, step_cache, cache_log)."""
    out, by_kind = {}, {}
    for name, samples in pools.items():
        edited = edit_samples(dit, encoder, samples, source_mode, steps, seed=seed, denoise=denoise, **sampling)
        scores = [score_edit(e, s.example) for e, s in zip(edited, samples)]
        out[name] = mean_scores(scores)
        for s, sc in zip(samples, scores):
            by_kind.setdefault(s.example.edit.kind, []).append(sc)
    out["all"] = {k: float(np.mean([out[n][k] for n in pools])) for k in next(iter(out.values()))}
    out["by_kind"] = {k: mean_scores(v) for k, v in sorted(by_kind.items())}
    return out


def identity_baseline(pools: dict[str, list[ToySample]]) -> dict:
    """Scores of returning the source unchanged."""
    out = {name: mean_scores([score_edit(s.example.source, s.example) for s in samples])
           for name, samples in pools.items()}
    out["all"] = {k: float(np.mean([out[n][k] for n in pools])) for k in next(iter(out.values()))}
    return out
