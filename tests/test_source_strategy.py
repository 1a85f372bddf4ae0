"""WanDiT's source strategy is an attachment point: the DiT calls whatever strategy is attached, the
core's default is Kiwi-Edit's σ-scaled add, and a method's strategy is selectable by its registered name."""

import subprocess
import sys

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.models.source_strategy import SIGMA_SCALED_ADD, register_source_strategy, source_strategy_named
from comfy_kiwi.testing import tiny_dit as td


class Shift:
    """A probe strategy: adds a fixed multiple of the source's mean to every token."""

    name = "probe-shift"

    def __init__(self):
        self.calls = []

    def attach(self, dit):
        self.calls.append("attach")

    def scale(self, dit, scale, t, source, latents):
        self.calls.append("scale")
        return 2.0

    def embed(self, dit, x, source, scale):
        self.calls.append("embed")
        return x + scale * source.mean()


def test_the_dit_calls_the_attached_strategy():
    model = td.tiny_dit("2.1", seed=1, embedders=True)
    assert model.source_strategy is SIGMA_SCALED_ADD and model.source_mode == "add_sigma"
    inp = td.random_inputs(model)
    src = torch.randn_like(inp["latents"])
    kiwi = model(**inp, source_latents=src)
    probe = Shift()
    model.attach_source_strategy(probe)
    assert probe.calls == ["attach"] and model.source_mode == "probe-shift"
    shifted = model(**inp, source_latents=src)
    assert probe.calls == ["attach", "scale", "embed"] and not torch.allclose(shifted, kiwi)
    model.source_mode = "add_sigma"                                  # back to the default, by name
    assert torch.equal(model(**inp, source_latents=src), kiwi)
    assert torch.equal(model(**inp), model(**inp, source_latents=None))   # no source: no strategy call


def test_strategies_are_selected_by_registered_name(monkeypatch):
    from comfy_kiwi.models import source_strategy
    monkeypatch.setattr(source_strategy, "_STRATEGIES", dict(source_strategy._STRATEGIES))   # leave no probe behind
    probe = register_source_strategy(Shift())
    assert source_strategy_named("probe-shift") is probe
    with pytest.raises(InputError, match="source_mode must be one of add_sigma.*probe-shift"):
        source_strategy_named("sideways")
    with pytest.raises(TypeError, match="embed"):
        register_source_strategy(type("Half", (), {"name": "half", "attach": None, "scale": None})())


def test_importing_the_methods_registers_vivas_concat():
    """The core alone knows only "add_sigma"; importing any method module registers VIVA's "concat"."""
    code = ("import comfy_kiwi.models.source_strategy as s; assert list(s._STRATEGIES) == ['add_sigma'], s._STRATEGIES\n"
            "import comfy_kiwi.methods.viva\n"
            "concat = s.source_strategy_named('concat')\n"
            "from comfy_kiwi.methods.viva_source import CHANNEL_CONCAT\n"
            "assert concat is CHANNEL_CONCAT\n")
    subprocess.run([sys.executable, "-c", code], check=True)
