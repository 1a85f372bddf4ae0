"""Trainer core on a tiny Wan DiT + ImVideoEdit: learning, frozen base, exact resume, cache reuse, logging."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpoint import find_checkpoint
from trainer.config import load_config
from trainer.data.cache import CachedDataset, build_cache
from trainer.data.datasets import read_records
from trainer.evaluate import fixed_loss
from trainer.loop import train
from trainer.methods import get_method
from trainer_fixtures import run_config, tiny_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    return root, tiny_setup(root)


def fresh_module(cfg):
    from comfy_kiwi.loading.dit_loader import load_dit
    method = get_method(cfg.method.name)(cfg)
    torch.manual_seed(cfg.schedule.seed)
    return method, method.build({"dit": load_dit(cfg.model.dit, dtype=torch.float32)})


def test_loss_goes_down_base_frozen_modules_change(setup):
    cfg = run_config(setup, "learn", schedule={"max_steps": 25})
    result = train(cfg, log=lambda *a: None)
    module = result["module"]
    method, base = fresh_module(cfg)
    dataset = CachedDataset(next(cfg.cache_dir.glob("latents-*.safetensors")))
    before = fixed_loss(method, base, dataset, cfg.data.text_len)
    after = fixed_loss(method, module, dataset, cfg.data.text_len)
    print(f"fixed-draw loss before {before:.4f} after {after:.4f}")
    assert after < 0.8 * before

    stored = load_file(cfg.model.dit)
    for k, v in module.dit.state_dict().items():          # frozen: bit-identical to the file
        assert torch.equal(v, stored[k]), k
    assert set(module.dit.state_dict()) == set(stored)    # no adapter keys inside the DiT
    changed = [k for k, v in module.adapter.state_dict().items() if not torch.equal(v, base.adapter.state_dict()[k])]
    weights = [k for k in base.adapter.state_dict() if k.endswith("weight")]
    assert set(weights) <= set(changed), sorted(set(weights) - set(changed))
    final = load_file(str(cfg.output_dir / "imvideoedit.safetensors"))
    assert all(k.startswith("imvideoedit.blocks.") for k in final)

    lines = [json.loads(x) for x in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 26))
    assert lines[0]["lr"] == pytest.approx(cfg.optimizer.lr / 2) and lines[5]["lr"] == pytest.approx(cfg.optimizer.lr)


def test_killed_run_resumes_exactly(setup):
    full = train(run_config(setup, "full", schedule={"max_steps": 10}), log=lambda *a: None)
    cfg = run_config(setup, "killed", schedule={"max_steps": 10})
    first = train(cfg, stop_after=7, log=lambda *a: None)          # killed after step 7; checkpoint at 5
    assert first["step"] == 7 and find_checkpoint(cfg.output_dir, "auto").name == "step-00000005"
    second = train(cfg, resume="auto", log=lambda *a: None)
    assert second["step"] == 10 and len(second["losses"]) == 5
    err = max(abs(a - b) for a, b in zip(second["losses"], full["losses"][5:]))
    print(f"resume max loss difference {err:.2e}")
    assert err < 1e-5
    a = load_file(str(cfg.output_dir / "imvideoedit.safetensors"))
    b = load_file(str(full["output_dir"] / "imvideoedit.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    steps = [json.loads(x)["step"] for x in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))                             # the killed run's tail was dropped


def test_max_steps_stops_without_changing_the_schedule(setup):
    """``--max-steps 3`` of a 6-step schedule with an LR tail: the 3 steps use the 6-step schedule's rates, a
    checkpoint is written and no final file; resuming finishes exactly as the uninterrupted run.
    ``--schedule-steps`` sets the schedule's length. Mutation tried: the loop's LR schedule built over the stop
    step (``lr_lambda`` given ``max_steps = stop_at``) → the rates of steps 2–3 differ and this fails."""
    from trainer.__main__ import main
    root, toml = setup
    stop_toml = root / "stop.toml"
    stop_toml.write_text(toml.read_text().replace("[schedule]\n", "[schedule]\ndecay_share = 0.5\n")
                         .replace(str(root / "run"), str(root / "stopped")))
    whole = {"schedule": {"max_steps": 6}}
    full = train(load_config(stop_toml, {**whole, "checkpoint": {"output_dir": str(root / "whole")}}),
                 log=lambda *a: None)
    assert main(["train", "--config", str(stop_toml), "--max-steps", "3", "--schedule-steps", "6"]) == 0
    out = root / "stopped"
    assert find_checkpoint(out, "auto").name == "step-00000003"
    assert not (out / "imvideoedit.safetensors").exists()

    def rates(run):
        return [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rates(out) == pytest.approx(rates(full["output_dir"])[:3], rel=1e-9)
    rest = train(load_config(stop_toml, whole), resume="auto", log=lambda *a: None)
    assert rest["step"] == 6 and (out / "imvideoedit.safetensors").is_file()
    assert rates(out) == pytest.approx(rates(full["output_dir"]), rel=1e-9)
    assert rest["losses"] == pytest.approx(full["losses"][3:], abs=1e-5)


def test_gradient_accumulation_and_checkpointing(setup):
    plain = train(run_config(setup, "plain", schedule={"max_steps": 2}), log=lambda *a: None)
    ckpt = train(run_config(setup, "gc", schedule={"max_steps": 2}, precision={"gradient_checkpointing": True}),
                 log=lambda *a: None)
    assert plain["losses"] == pytest.approx(ckpt["losses"], abs=1e-5)
    acc = train(run_config(setup, "accum", schedule={"max_steps": 2, "batch_size": 1, "grad_accum": 2}),
                log=lambda *a: None)
    assert len(acc["losses"]) == 2 and all(torch.isfinite(torch.tensor(acc["losses"])))


def test_bf16_autocast_step_runs(setup):
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)       # one process, several precisions: tests only
    out = train(run_config(setup, "bf16", schedule={"max_steps": 1}, precision={"mixed": "bf16"}), log=lambda *a: None)
    AcceleratorState._reset_state(True)
    assert torch.isfinite(torch.tensor(out["losses"])).all()


def test_cache_reused_and_invalidated(setup):
    cfg = run_config(setup, "cache")
    records = read_records(cfg.data.dataset)
    from trainer.loop import _loaders
    first = build_cache(records, cfg, *_loaders(cfg, "cpu"), log=lambda *a: None)

    def boom():
        raise AssertionError("a reused cache must not load models")
    assert build_cache(records, cfg, boom, boom, log=lambda *a: None) == first
    cfg.data.resolution = 48                                      # settings changed → new key
    with pytest.raises(AssertionError, match="must not load"):
        build_cache(records, cfg, boom, boom, log=lambda *a: None)
    cfg.data.resolution = 64
    import os
    os.utime(records[0].target, ns=(1, 1))                      # an input file changed → new key
    with pytest.raises(AssertionError, match="must not load"):
        build_cache(records, cfg, boom, boom, log=lambda *a: None)


def test_command_line_trains_samples_and_resumes(setup, capsys):
    from trainer.__main__ import main
    root, toml = setup
    text = toml.read_text().replace(str(root / "run"), str(root / "cli"))
    text += "[sampling]\nevery = 2\ncount = 1\nsteps = 2\n"
    cli_toml = root / "cli.toml"
    cli_toml.write_text(text)
    assert main(["train", "--config", str(cli_toml), "--max-steps", "2"]) == 0
    assert sorted(p.name for p in (root / "cli" / "samples").iterdir()) == ["step-00000002-item0.png"]
    assert main(["train", "--config", str(cli_toml), "--max-steps", "3", "--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert (root / "cli" / "checkpoints" / "step-00000003" / "trainable.safetensors").is_file()
