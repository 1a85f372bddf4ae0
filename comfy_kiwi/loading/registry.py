"""Folder kinds: model folders other than a Wan file or a Kiwi-Edit release that still load through the
project's entry points (``load_vae``, ``describe`` / ``python -m comfy_kiwi info``, ``python -m comfy_kiwi
edit``). The real paths ask this registry instead of naming such a kind, so a kind (the toy world of
``comfy_kiwi/toy/``) lives entirely in its own package.

A kind registers itself with :func:`register` when its plugin module is imported. The built-in plugins
are named in :data:`BUILTIN_PLUGINS` and imported on first use of the registry (not at package import:
``import comfy_kiwi`` stays cheap and a plugin may import the loaders that consult the registry).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Modules that call register() when imported; imported once, on the first question to the registry.
BUILTIN_PLUGINS = ("comfy_kiwi.toy.plugin",)


def _no_check(frames, video) -> None:
    return None


def _unchanged(frames):
    return frames


def _no_report(video, instruction, references, edited) -> dict:
    return {}


@dataclass(frozen=True)
class EditHooks:
    """What ``python -m comfy_kiwi edit`` does differently for a kind.

    ``check_default_input(frames, video)`` runs when this kind's default model is used because --model
    is absent (raise ``InputError`` for a video that model cannot edit); ``prepare_frames(frames)`` turns
    the decoded frames into what the kind's pipeline expects; ``report(video, instruction, references,
    edited_frames)`` adds entries to the JSON report of every edit (``{}`` when the video is not one this
    kind knows)."""

    check_default_input: Callable[[Any, Any], None] = _no_check
    prepare_frames: Callable[[Any], Any] = _unchanged
    report: Callable[[Any, str, Any, Any], dict] = _no_report


@dataclass(frozen=True)
class FolderKind:
    """One kind of model folder.

    ``is_model_folder(path)`` says whether a whole model folder (a release root) is of this kind;
    ``load_pipeline(path, device, dtype)`` returns its ``EditPipeline``; ``describe(path)`` its
    ``python -m comfy_kiwi info`` JSON. ``is_vae_folder`` / ``load_vae(folder, device)`` (optional) let
    ``load_vae`` take the kind's VAE folder. ``default_model`` (optional) is the folder ``edit`` runs when
    --model is absent; ``add_verbs(subparsers)`` (optional) adds the kind's own command-line verbs."""

    name: str
    is_model_folder: Callable[[Path], bool]
    load_pipeline: Callable[[Path, Any, Any], Any]
    describe: Callable[[Path], dict]
    is_vae_folder: Callable[[Path], bool] | None = None
    load_vae: Callable[[Path, Any], Any] | None = None
    default_model: Path | None = None
    edit: EditHooks = field(default_factory=EditHooks)
    add_verbs: Callable[[Any], None] | None = None


_KINDS: dict[str, FolderKind] = {}
_builtins_loaded = False


def register(kind: FolderKind) -> FolderKind:
    """Add (or replace, by name) a folder kind."""
    if not isinstance(kind, FolderKind):
        raise TypeError(f"register() takes a FolderKind, got {type(kind).__name__}.")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> tuple[FolderKind, ...]:
    """Every registered kind, the built-in plugins first (imported here on first use)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_PLUGINS:
            importlib.import_module(module)
    return tuple(_KINDS.values())


def model_folder_kind(path) -> FolderKind | None:
    """The kind whose model folder ``path`` is, or None (a real release, a Wan file, ...)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    return next((k for k in kinds() if k.is_model_folder(path)), None)


def vae_folder_kind(folder) -> FolderKind | None:
    """The kind whose VAE folder ``folder`` is, or None (a Wan VAE folder or something else)."""
    folder = Path(folder)
    return next((k for k in kinds() if k.is_vae_folder is not None and k.is_vae_folder(folder)), None)


def default_model_kind() -> FolderKind | None:
    """The kind whose ``default_model`` ``edit`` runs when --model is absent (the first that has one)."""
    return next((k for k in kinds() if k.default_model is not None), None)
