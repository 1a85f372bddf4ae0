"""Whole-DiT state for methods that can fine-tune every DiT weight (VIVA train_dit, RVEDiT dit_training=full):
checkpoint entries under a ``dit.`` prefix and the final DiT file that Kiwi DiT Loader reads."""

from __future__ import annotations

from pathlib import Path

import torch

PREFIX = "dit."


def load_dit_entries(dit, state: dict) -> None:
    """Copy the ``dit.``-prefixed entries of a checkpoint into the DiT in place (keeping its dtypes), so the
    optimizer's references to the parameters stay valid on resume."""
    dit_state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if dit_state:
        sd = dit.state_dict()
        with torch.no_grad():
            for k, v in dit_state.items():
                sd[k].copy_(v.to(sd[k].dtype))


def save_dit(path: Path, dit, exclude: tuple[str, ...] = ()) -> Path:
    """The fine-tuned DiT as one safetensors file; num_heads goes in the metadata because the loader cannot
    infer it from the weight shapes. Keys starting with an ``exclude`` prefix are left out (parts saved elsewhere)."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in dit.state_dict().items()
             if not (exclude and k.startswith(exclude))}
    if any(k.startswith(("source_embedder.", "ref_embedder.")) for k in state):
        # a Kiwi DiT (e.g. RVEDiT on a release): Kiwi training-checkpoint names, which the DiT loader reads
        from comfy_kiwi.training_lib.checkpoint_export import to_kiwi_training_keys
        state = to_kiwi_training_keys({"dit": state})
    save_file(state, str(path),
              metadata={"format": "pt", "num_heads": str(dit.config.num_heads)})
    return path
