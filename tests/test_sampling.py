import sys
import types

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.sampling import flow_sigmas, noise_like, sample_euler, start_latents, training_sigmas


@pytest.mark.parametrize("schedule,second,second_last,last", [
    ("kiwi", 0.995935, 0.172414, 0.092593),
    ("diffusers", 0.995947, 0.182989, 0.105035),
])
def test_pinned_sigmas(schedule, second, second_last, last):
    s = flow_sigmas(50, shift=5.0, schedule=schedule)
    assert s.shape == (50,)
    assert s[0].item() == pytest.approx(1.0, abs=1e-12)
    assert s[1].item() == pytest.approx(second, abs=5e-7)
    assert s[-2].item() == pytest.approx(second_last, abs=5e-7)
    assert s[-1].item() == pytest.approx(last, abs=5e-7)
    assert torch.all(s[1:] < s[:-1])


def test_denoise_starts_part_way():
    full = flow_sigmas(10, 5.0, "kiwi", denoise=1.0)
    half = flow_sigmas(10, 5.0, "kiwi", denoise=0.5)
    # s_max = 0.5 → σ0 = 5·0.5/(1+4·0.5)
    assert half[0].item() == pytest.approx(2.5 / 3.0)
    assert half[0] < full[0] and len(half) == 10


def test_training_schedule():
    s = training_sigmas()
    assert s.shape == (1000,)
    assert s[0].item() == 1.0
    assert s[-1].item() == pytest.approx(5 * 0.001 / (1 + 4 * 0.001))


def test_euler_follows_straight_flow_exactly():
    # On the straight path x_σ = (1-σ)x0 + σε the exact velocity is (x - x0)/σ; Euler then lands on x0.
    x0 = torch.randn(1, 4, 3, 5, 5, dtype=torch.float64)
    eps = noise_like(x0.shape, seed=3, dtype=torch.float64)
    sig = flow_sigmas(7, 3.0, "diffusers")
    x = start_latents(eps, sig[0].item(), None)
    x = (1 - sig[0]) * x0 + sig[0] * x
    out = sample_euler(lambda x, s, i: (x - x0) / s, x, sig, progress=False)
    assert torch.allclose(out, x0, atol=1e-10)
    # stopping before the final step to σ = 0 leaves noise behind
    first = sample_euler(lambda x, s, i: (x - x0) / s if i < 6 else torch.zeros_like(x), x, sig, progress=False)
    assert not torch.allclose(first, x0, atol=1e-3)


def test_noise_is_seeded_on_cpu_float32():
    a = noise_like((2, 3), seed=7)
    b = noise_like((2, 3), seed=7, dtype=torch.bfloat16)
    assert torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(b, a.bfloat16())
    assert not torch.equal(a, noise_like((2, 3), seed=8))


def test_partial_denoise_start():
    noise, init = torch.ones(2), torch.zeros(2)
    assert torch.allclose(start_latents(noise, 0.25, init), torch.full((2,), 0.25))
    with pytest.raises(InputError, match="must match"):
        start_latents(noise, 0.5, torch.zeros(3))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(steps=0), "steps"), (dict(steps=5, shift=0), "shift"),
    (dict(steps=5, denoise=0), "denoise"), (dict(steps=5, schedule="karras"), "unknown schedule"),
])
def test_bad_schedule_arguments(kwargs, msg):
    with pytest.raises(InputError, match=msg):
        flow_sigmas(**kwargs)


def test_progress_and_interrupt_inside_comfyui(monkeypatch):
    """With ComfyUI's modules present, each step updates its ProgressBar and checks for cancel."""
    updates, checks = [], []

    class Interrupted(Exception):
        pass

    class Bar:
        def __init__(self, total):
            self.total = total

        def update(self, n):
            updates.append(n)

    def check():
        checks.append(1)
        if len(updates) >= 2:
            raise Interrupted()

    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = Bar
    mm = types.ModuleType("comfy.model_management")
    mm.throw_exception_if_processing_interrupted = check
    for name, mod in {"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    x = torch.zeros(3)
    with pytest.raises(Interrupted):
        sample_euler(lambda x, s, i: torch.ones_like(x), x, flow_sigmas(5), progress=True)
    assert updates == [1, 1] and len(checks) == 3  # one check on entry, one per finished step


def test_sigma_to_timestep_is_the_one_rule_rounded_to_the_model_dtype():
    """t = 1000·σ in float32, then rounded to the DiT's dtype. Mutations tried: rounding through bf16 for every
    dtype (the old trainer-evaluation rule) → the fp32 value differs; multiplying tensors in float64 → the
    per-sample values lose their float32 product."""
    from comfy_kiwi.sampling import sigma_to_timestep
    s = 0.9504
    t32 = sigma_to_timestep(s, 3)
    assert t32.dtype == torch.float32 and t32.shape == (3,) and torch.equal(t32, torch.full((3,), 1000.0 * s))
    tb = sigma_to_timestep(s, 1, torch.bfloat16)
    assert tb.dtype == torch.bfloat16 and tb.item() == 952.0          # bf16 spacing is 4 near 950
    per_sample = torch.tensor([0.25, 0.5004], dtype=torch.float32)
    assert torch.equal(sigma_to_timestep(per_sample), per_sample * 1000)


def test_no_other_place_turns_sigma_into_a_timestep():
    """Every sampler and trainer goes through ``sigma_to_timestep`` (issue 20: it was written in 8 places with
    3 rounding behaviours). The Kiwi release's training draws (``training_lib/kiwi_numerics.py``) are their own
    documented rule."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"1000(\.0)?\s*\*\s*(sigma|s\b|draws\[\"sigma\"\])|sigma\s*\*\s*1000")
    found = [f"{p.relative_to(root)}:{i}" for folder in ("comfy_kiwi", "trainer", "nodes")
             for p in (root / folder).rglob("*.py")
             if p.name not in ("schedule.py", "kiwi_numerics.py") and "testing" not in p.parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
