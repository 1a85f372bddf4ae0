"""Training methods, by config name. A method = an ``Options`` dataclass + a ``TrainingMethod`` subclass."""

from __future__ import annotations

from comfy_kiwi.errors import InputError


def _registry() -> dict:
    from .imvideoedit import ImVideoEditMethod
    return {cls.name: cls for cls in (ImVideoEditMethod,)}


def get_method(name: str):
    methods = _registry()
    if name not in methods:
        raise InputError(f"method.name is {name!r}; known methods: {', '.join(sorted(methods))}.")
    return methods[name]
