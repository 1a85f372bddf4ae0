"""Training methods, by config name. A method = an ``Options`` dataclass + a ``TrainingMethod`` subclass."""

from __future__ import annotations

import importlib

from comfy_kiwi.errors import InputError

# modules holding methods; every TrainingMethod subclass defined in one is registered under its ``name``.
# A module not (yet) in the checkout is skipped.
_MODULES = ("imvideoedit", "kiwi", "viva", "rvedit", "edit_grpo")


def _registry() -> dict:
    from .base import TrainingMethod
    out = {}
    for module in _MODULES:
        name = f"{__name__}.{module}"
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, TrainingMethod) and obj.__module__ == name
                    and obj.name != TrainingMethod.name):
                out[obj.name] = obj
    return out


def get_method(name: str):
    methods = _registry()
    if name not in methods:
        raise InputError(f"method.name is {name!r}; known methods: {', '.join(sorted(methods))}.")
    return methods[name]
