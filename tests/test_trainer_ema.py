"""EMA of the trained weights (trainer/ema.py): the update rule, what the run saves, exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpoint import load_init_state
from trainer.config import load_config
from trainer.ema import WeightEMA
from trainer.loop import train
from trainer_fixtures import run_config, tiny_setup

from comfy_kiwi.errors import InputError


def test_update_rule_with_warm_up():
    """shadow ← d·shadow + (1−d)·p with d = min(decay, (1+n)/(10+n)); mutation tried: d = decay from the first
    update (no warm-up) → the hand-computed values differ at update 0 and the test fails."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = WeightEMA([p], decay=0.5)
    expected = p.detach().clone()
    for n, value in enumerate([3.0, 5.0, -1.0, 7.0]):
        with torch.no_grad():
            p.fill_(value)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        ema.update()
        assert torch.allclose(ema.shadow[0], expected), n
    raw = p.detach().clone()
    with ema.swapped_in():
        assert torch.allclose(p, expected)
    assert torch.equal(p, raw)                        # the raw weights come back after the block


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    return root, tiny_setup(root)


def test_run_saves_the_average_of_its_raw_trajectory_and_resumes_exactly(setup):
    decay, steps = 0.8, 8
    # the raw trajectory, one checkpoint per step, no EMA
    raw = run_config(setup, "raw", schedule={"max_steps": steps}, checkpoint={"every": 1, "keep": 0})
    train(raw, log=lambda *a: None)
    start = load_file(str(next((raw.output_dir / "checkpoints").glob("step-00000001")) / "trainable.safetensors"))
    # the run with an EMA: training itself must be unchanged by the EMA
    cfg = run_config(setup, "ema", schedule={"max_steps": steps}, optimizer={"ema_decay": decay})
    out = train(cfg, log=lambda *a: None)
    final = load_file(str(cfg.output_dir / "imvideoedit.safetensors"))
    last_raw = load_file(str(cfg.output_dir / "checkpoints" / f"step-{steps:08d}" / "trainable.safetensors"))
    raw_last = load_file(str(raw.output_dir / "checkpoints" / f"step-{steps:08d}" / "trainable.safetensors"))
    assert all(torch.equal(last_raw[k], raw_last[k]) for k in raw_last)

    # recompute the EMA from the initial weights and the raw checkpoints
    from trainer.methods import get_method
    from comfy_kiwi.loading.dit_loader import load_dit
    method = get_method(cfg.method.name)(cfg)
    torch.manual_seed(cfg.schedule.seed)
    init = method.trainable_state_dict(method.build({"dit": load_dit(cfg.model.dit, dtype=torch.float32)}))
    expected = {k: v.float().clone() for k, v in init.items()}
    for n in range(steps):
        d = min(decay, (1 + n) / (10 + n))
        w = load_file(str(raw.output_dir / "checkpoints" / f"step-{n + 1:08d}" / "trainable.safetensors"))
        expected = {k: d * expected[k] + (1 - d) * w[k] for k in expected}
    err = max((final[k] - expected[k]).abs().max().item() for k in expected)
    moved = max((final[k] - last_raw[k]).abs().max().item() for k in expected)
    print(f"EMA vs recomputation {err:.2e}; EMA vs raw weights {moved:.2e}")
    assert err < 1e-6 and moved > 1e-4
    assert start.keys() == final.keys()

    # the checkpoint folder's EMA is what init_from / export read
    ckpt = cfg.output_dir / "checkpoints" / f"step-{steps:08d}"
    assert (ckpt / "ema.safetensors").is_file()
    init_state = load_init_state(ckpt)
    assert all(torch.equal(init_state[k], final[k]) for k in final)

    # killed after step 6 (checkpoint at 5), resumed: the same average as the uninterrupted run
    killed = run_config(setup, "killed", schedule={"max_steps": steps}, optimizer={"ema_decay": decay})
    train(killed, stop_after=6, log=lambda *a: None)
    train(killed, resume="auto", log=lambda *a: None)
    again = load_file(str(killed.output_dir / "imvideoedit.safetensors"))
    assert max((again[k] - final[k]).abs().max().item() for k in final) < 1e-6
    assert out["step"] == steps


def test_bad_decay_is_refused(setup):
    root, toml = setup
    with pytest.raises(InputError, match="optimizer.ema_decay"):
        load_config(toml, overrides={"optimizer": {"ema_decay": 1.5}})
