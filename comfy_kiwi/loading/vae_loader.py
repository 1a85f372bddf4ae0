"""Loading Wan VAEs: original Wan files, the Kiwi release ``vae/`` folder, diffusers folders, state dicts.

Accepted sources:

- a file in the original Wan layout (``wan_2.1_vae.safetensors``, ``wan2.2_vae.safetensors``,
  ``Wan2.1_VAE.pth``), optionally under a prefix (``model.``, ``module.``, ``vae.``,
  ``first_stage_model.``, …: any prefix in front of the VAE keys is stripped);
- a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``: the Kiwi release ``vae/``
  (original keys) or a diffusers ``AutoencoderKLWan`` folder (keys converted); a pipeline folder
  holding such a ``vae/`` subfolder;
- an in-memory ``{name: tensor}`` state dict in either layout;
- the VAE folder of a registered folder kind (``registry.py``; a release root holding one as ``vae/``),
  loaded by that kind: e.g. the toy world's lossless patch codec, so the trainer and every loader take a
  toy model's "VAE" like a real one.

The architecture is read from the tensor shapes (the version from the layout, widths from the conv
shapes), so no config is needed; a config.json only supplies the latent statistics, and must agree
with the shapes. The model is built on the meta device and filled tensor by tensor: one copy of the
weights in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from ..models.wan_vae import TEMPORAL_FACTOR, WanVAE, WanVAEConfig, published_latent_stats
from .files import SAFETENSORS_SUFFIXES, LazyStateDict, load_into_module, open_state_dict
from .registry import vae_folder_kind
from .vae_keys import DIFFUSERS_MARKER, ORIGINAL_MARKER, diffusers_to_original, is_residual_layout

_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------------
# finding the VAE in a source
# --------------------------------------------------------------------------------------------------

def _vae_folder(path: Path) -> Path:
    """The folder holding the VAE weights: ``path`` itself, or its ``vae/`` (a pipeline/release root)."""
    if not (path / "config.json").exists() and (path / "vae").is_dir():
        return path / "vae"
    return path


def _resolve_folder(path: Path) -> tuple[Path, dict | None]:
    """The folder holding the VAE weights and its parsed config.json (None when absent)."""
    path = _vae_folder(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        return path, None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not readable JSON ({e}).") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object.")
    return path, cfg


def _open(source) -> tuple[LazyStateDict, dict | None, str]:
    """(state, folder config or None, name for messages)."""
    if isinstance(source, (LazyStateDict, Mapping)):
        state = open_state_dict(source)
        return state, None, state.describe_source()
    path = Path(source).expanduser()
    cfg = None
    if path.is_dir():
        path, cfg = _resolve_folder(path)
    return open_state_dict(path), cfg, str(path)


def _find_prefix(state: LazyStateDict, name: str) -> tuple[str, str] | None:
    """(prefix, layout) of the VAE keys in ``state``; None when there is no VAE in it."""
    found = set()
    for key in state:
        for marker, layout in ((ORIGINAL_MARKER, "original"), (DIFFUSERS_MARKER, "diffusers")):
            if key.endswith(marker):
                prefix = key[:-len(marker)]
                if prefix == "" or prefix.endswith("."):
                    found.add((prefix, layout))
    if not found:
        return None
    if len(found) > 1:
        raise CheckpointError(f"{name}: holds more than one VAE (key prefixes "
                              f"{sorted(repr(p) for p, _ in found)}); pass a file with a single VAE.")
    return found.pop()


def _not_a_vae(name: str, state: LazyStateDict) -> CheckpointError:
    sample = ", ".join(list(state)[:5]) or "(no tensors)"
    return CheckpointError(
        f"{name}: not a Wan VAE. Expected the original Wan layout (keys such as {ORIGINAL_MARKER!r}, "
        f"'encoder.conv1.weight', 'conv1.weight') or a diffusers AutoencoderKLWan (keys such as "
        f"{DIFFUSERS_MARKER!r}), possibly under a prefix like 'vae.'; found keys such as: {sample}.")


# --------------------------------------------------------------------------------------------------
# architecture from shapes
# --------------------------------------------------------------------------------------------------

def _shape(state: LazyStateDict, key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{name}: does not fit a Wan VAE: missing key {key!r} (needed to read the "
                              "architecture).")
    return tuple(state.shape(key))


def _encoder_stages(state: LazyStateDict, residual: bool) -> list[dict]:
    """Per encoder stage: {"out": width, "blocks": residual blocks, "time": downsamples time}."""
    stages: list[dict] = []
    if residual:
        pattern = re.compile(r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(residual\.2|time_conv)\.weight$")
        for key in state:
            if (m := pattern.match(key)):
                i = int(m.group(1))
                while len(stages) <= i:
                    stages.append({"out": 0, "blocks": 0, "time": False})
                if m.group(3) == "time_conv":
                    stages[i]["time"] = True
                else:
                    stages[i]["blocks"] += 1
                    stages[i]["out"] = state.shape(key)[0]
        return stages
    # 2.1: one flat list; a resampler closes each stage except the last
    layers: dict[int, str] = {}
    for key in state:
        if (m := re.match(r"encoder\.downsamples\.(\d+)\.(residual\.2|resample\.1|time_conv)\.weight$", key)):
            k = int(m.group(1))
            layers[k] = layers.get(k, "") + "|" + m.group(2)
    current = {"out": 0, "blocks": 0, "time": False}
    for k in sorted(layers):
        if "residual" in layers[k]:
            current["blocks"] += 1
            current["out"] = state.shape(f"encoder.downsamples.{k}.residual.2.weight")[0]
        else:
            current["time"] = "time_conv" in layers[k]
            stages.append(current)
            current = {"out": 0, "blocks": 0, "time": False}
    stages.append(current)
    return stages


def infer_config(state: LazyStateDict, name: str = "state dict") -> tuple[WanVAEConfig, bool]:
    """Read the architecture of an original-layout Wan VAE from its tensor shapes.

    Returns ``(config, known_stats)``: the latent statistics are the published ones for the detected
    version and z_dim (``known_stats`` True), or placeholders 0/1 (False) for a z_dim never released.
    """
    residual = is_residual_layout(state)
    version = "2.2" if residual else "2.1"
    z_dim = _shape(state, "conv2.weight", name)[0]
    enc_in = _shape(state, "encoder.conv1.weight", name)
    dim = enc_in[0]
    expected_in = 12 if residual else 3
    if enc_in[1] != expected_in:
        raise CheckpointError(
            f"{name}: encoder.conv1.weight takes {enc_in[1]} input channels, but a Wan {version} VAE "
            f"takes {expected_in} ({'2×2-patchified RGB' if residual else 'RGB'}); the file mixes layouts.")
    stages = _encoder_stages(state, residual)
    if not stages or any(s["blocks"] == 0 or s["out"] % dim for s in stages):
        raise CheckpointError(f"{name}: the encoder stages (encoder.downsamples.*) are incomplete or have "
                              "widths that are not multiples of the base width; not a loadable Wan VAE.")
    dim_mult = tuple(s["out"] // dim for s in stages)
    dec_width = _shape(state, "decoder.head.0.gamma", name)[0]
    if dec_width % dim_mult[0]:
        raise CheckpointError(f"{name}: decoder.head.0.gamma has {dec_width} channels, not a multiple of "
                              f"the first stage multiplier {dim_mult[0]}.")
    stats = published_latent_stats(version, z_dim)
    mean, std = stats if stats else ((0.0,) * z_dim, (1.0,) * z_dim)
    try:
        cfg = WanVAEConfig(version=version, z_dim=z_dim, dim=dim, decoder_dim=dec_width // dim_mult[0],
                           dim_mult=dim_mult, num_res_blocks=stages[0]["blocks"],
                           temporal_downsample=tuple(s["time"] for s in stages[:-1]),
                           latents_mean=mean, latents_std=std)
        return cfg, stats is not None
    except InputError as e:
        raise CheckpointError(f"{name}: not a loadable Wan VAE architecture: {e}") from None


def _apply_folder_config(cfg: WanVAEConfig, folder_cfg: dict | None, name: str) -> tuple[WanVAEConfig, bool]:
    """Check config.json agrees with the weights; take latents_mean/std from it when present.

    Returns ``(config, stats_from_config)``.
    """
    if not folder_cfg:
        return cfg, False
    checks = {"z_dim": cfg.z_dim, "dim": cfg.dim, "base_dim": cfg.dim, "decoder_base_dim": cfg.decoder_dim,
              "num_res_blocks": cfg.num_res_blocks, "dim_mult": list(cfg.dim_mult),
              "temperal_downsample": list(cfg.temporal_downsample)}
    for key, actual in checks.items():
        value = folder_cfg.get(key)
        if value is not None and value != actual:
            raise CheckpointError(f"{name}: config.json says {key}={value!r} but the weights have {actual!r}; "
                                  "the config does not belong to these weights.")
    mean, std = folder_cfg.get("latents_mean"), folder_cfg.get("latents_std")
    if mean is None and std is None:
        return cfg, False
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == cfg.z_dim):
        raise CheckpointError(f"{name}: config.json latents_mean/latents_std must be lists of {cfg.z_dim} "
                              "numbers (one per latent channel).")
    return replace(cfg, latents_mean=tuple(map(float, mean)), latents_std=tuple(map(float, std))), True


def _prepare(source) -> tuple[LazyStateDict, WanVAEConfig, dict] | None:
    """(original-layout state, config, facts) or None when ``source`` holds no Wan VAE."""
    state, folder_cfg, name = _open(source)
    found = _find_prefix(state, name)
    if found is None:
        return None
    prefix, layout = found
    if prefix:
        state = state.with_prefix(prefix)
    if layout == "diffusers":
        names = diffusers_to_original(state)
        state = state.renamed(names.__getitem__)
    cfg, published = infer_config(state, name)
    cfg, from_config = _apply_folder_config(cfg, folder_cfg, name)
    if not (published or from_config):
        raise CheckpointError(
            f"{name}: a Wan {cfg.version} VAE with z_dim {cfg.z_dim} has no published latent statistics "
            f"(known: z_dim 16 for 2.1, 48 for 2.2); put it in a folder with a config.json holding "
            f"latents_mean and latents_std ({cfg.z_dim} values each).")
    fmt = "diffusers" if layout == "diffusers" else ("kiwi-vae-folder" if folder_cfg is not None else "original")
    facts = {"format": fmt, "prefix": prefix, "source": name}
    return state, cfg, facts


def _default_dtype(state: LazyStateDict) -> torch.dtype:
    stored = state.dtype("decoder.conv1.weight") if "decoder.conv1.weight" in state else torch.float32
    return stored if stored in _COMPUTE_DTYPES else torch.float32


# --------------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------------

def load_vae(source, dtype: torch.dtype | None = None, device="cpu") -> WanVAE:
    """Load a Wan2.1 / Wan2.2 VAE from a file, a folder or a state dict (see the module docstring).

    ``dtype`` None keeps the stored precision (fp32/fp16/bf16; anything else becomes fp32).
    Raises :class:`CheckpointError` naming the source and the missing/mis-shaped keys.
    """
    if isinstance(source, (str, Path)) and Path(source).expanduser().is_dir():
        folder = _vae_folder(Path(source).expanduser())
        kind = vae_folder_kind(folder)
        if kind is not None:                          # e.g. the toy codec: weightless, no dtype to cast
            return kind.load_vae(folder, device)
    prepared = _prepare(source)
    if prepared is None:
        state, _, name = _open(source)
        raise _not_a_vae(name, state)
    state, cfg, facts = prepared
    dtype = dtype or _default_dtype(state)
    if dtype not in _COMPUTE_DTYPES:
        raise InputError(f"VAE dtype {dtype} is not supported; use torch.float32, float16 or bfloat16.")
    with torch.device("meta"):
        vae = WanVAE(cfg)
    load_into_module(vae, state, what=f"Wan {cfg.version} VAE ({facts['format']} layout)",
                     dtype_for=lambda _name, _stored: dtype, device=device)
    return vae.eval().requires_grad_(False)


def describe_vae(source) -> dict | None:
    """JSON-serialisable facts about a Wan VAE source, or None if it holds no Wan VAE.

    ``{"kind": "vae", "format": "original" | "kiwi-vae-folder" | "diffusers", "version": "2.1" | "2.2",
    "z_dim", "spatial_factor", "temporal_factor", "config": {...}, "dtype", "prefix", "source",
    "parameters"}``. Reads headers only. A folder without weight files is "not a VAE" (None), so
    other describers get their turn; an unreadable file still raises :class:`CheckpointError`.
    """
    if isinstance(source, (str, Path)) and Path(source).expanduser().is_dir():
        folder = _vae_folder(Path(source).expanduser())
        if not any(p.suffix.lower() in SAFETENSORS_SUFFIXES for p in folder.iterdir()):
            return None
    prepared = _prepare(source)
    if prepared is None:
        return None
    state, cfg, facts = prepared
    with torch.device("meta"):
        expected = WanVAE(cfg).state_dict()
    missing = [k for k in expected if k not in state]
    params = sum(t.numel() for t in expected.values())
    return {"kind": "vae", **facts, "version": cfg.version, "z_dim": cfg.z_dim,
            "spatial_factor": cfg.spatial_factor, "temporal_factor": TEMPORAL_FACTOR, "config": cfg.to_dict(),
            "dtype": str(_default_dtype(state)).removeprefix("torch."), "parameters": params,
            "missing_keys": len(missing)}
