"""A fixed-draw validation loss: the same noise levels and noise for every call, so two models (or one
model before and after training) are compared on identical inputs."""

from __future__ import annotations

import torch

from .data.cache import to_device


@torch.no_grad()
def fixed_loss(method, module, dataset, text_len: int, seed: int = 1234, repeats: int = 4) -> float:
    device = next(module.parameters()).device
    total, n = 0.0, 0
    for r in range(repeats):
        for i in range(len(dataset)):
            batch = to_device(method.collate([dataset[i]]), device)
            draws = method.draws(batch, torch.Generator().manual_seed(seed + 7919 * r + i))
            total += float(module(batch, draws))
            n += 1
    return total / n
