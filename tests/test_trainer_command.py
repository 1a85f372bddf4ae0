"""The trainer as a command: installed as ``comfy_kiwi_trainer`` (console ``comfy-kiwi-train``, never a
top-level ``trainer``), shipped presets by name, ``--set`` overrides, and the README's train example run
as written on the tiny models (only the model root and the sizes differ)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from comfy_kiwi.errors import InputError
from trainer.__main__ import PRESETS, config_path, main, parse_overrides
from trainer_fixtures import write_models, write_pairs

ROOT = Path(__file__).resolve().parents[1]
# what makes a 20000-step 632² preset a seconds-long CPU run on the tiny models
SHRINK = ["--schedule-steps", "2", "--set", "data.resolution=64", "--set", "data.text_len=16", "--set", "model.dtype=fp32",
          "--set", "precision.mixed=no", "--set", "precision.gradient_checkpointing=false",
          "--set", "schedule.grad_accum=1", "--set", "schedule.warmup_steps=1", "--set", "checkpoint.every=1",
          "--set", "sampling.every=0", "--set", "logging.tensorboard=false", "--set", "logging.progress=false",
          "--set", "model.attention=sdpa"]


def readme_train_command() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Train\n.*?```bash\n(.*?)```", text, re.S).group(1)
    first = block.replace("\\\n", " ").splitlines()[0]
    return shlex.split(first, comments=True)


def test_readme_train_example_runs_as_written(tmp_path, monkeypatch, capsys):
    argv = readme_train_command()
    assert argv[:2] == ["comfy-kiwi-train", "train"]
    models, data = tmp_path / "models", tmp_path / "data"
    made = write_models(models)
    csv = write_pairs(data, count=4)
    # the tiny files under the names the README gives them
    rename = {"/models/wan2.1_t2v_1.3B_bf16.safetensors": made["dit"], "/models/wan_2.1_vae.safetensors": made["vae"],
              "/models/umt5-xxl": made["umt5"], "/data/pairs.csv": csv}
    for value in argv:
        for old, new in rename.items():
            if value.endswith("=" + old):
                Path(str(tmp_path) + old).parent.mkdir(parents=True, exist_ok=True)
                if Path(str(tmp_path) + old) != new:
                    new.rename(str(tmp_path) + old)
    argv = [a.replace("=/models/", f"={tmp_path}/models/").replace("=/data/", f"={tmp_path}/data/") for a in argv]
    monkeypatch.chdir(tmp_path)                     # the preset's run folder (runs/...) is relative to here
    assert main(argv[1:] + SHRINK) == 0
    assert "done: step 2" in capsys.readouterr().out
    preset = tomllib.loads((PRESETS / "imvideoedit-wan2.1-1.3b.toml").read_text())
    run = tmp_path / preset["checkpoint"]["output_dir"]
    assert (run / "imvideoedit.safetensors").is_file() and (run / "checkpoints").is_dir()
    assert not (PRESETS / "runs").exists()          # nothing written next to the shipped presets


def test_preset_paths_without_set_say_how_to_point_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "imvideoedit-wan2.1-1.3b"]) == 2
    err = capsys.readouterr().err
    assert f"model.dit: {tmp_path}/models/wan2.1_t2v_1.3B_bf16.safetensors does not exist" in err
    assert "--set model.dit=PATH" in err


def test_overrides_are_typed_nested_and_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = parse_overrides(["schedule.max_steps=4", "precision.gradient_checkpointing=false",
                           "optimizer.betas=[0.9, 0.99]", "model.dit=rel/dit.safetensors", "method.options.rank=8", "model.attention=sdpa"])
    assert got == {"schedule": {"max_steps": 4}, "precision": {"gradient_checkpointing": False},
                   "optimizer": {"betas": [0.9, 0.99]}, "model": {"dit": str(tmp_path / "rel/dit.safetensors"),
                                                                   "attention": "sdpa"},
                   "method": {"options": {"rank": 8}}}
    for bad in ("model.dit", "dit=x", ".x=1", "a..b=1"):
        with pytest.raises(InputError, match="SECTION.KEY=VALUE"):
            parse_overrides([bad])


def test_config_names_a_file_or_a_shipped_preset(tmp_path):
    assert config_path("kiwi-stage1") == PRESETS / "kiwi-stage1.toml" == config_path("kiwi-stage1.toml")
    mine = tmp_path / "kiwi-stage1.toml"
    mine.write_text("")
    assert config_path(str(mine)) == mine
    with pytest.raises(InputError, match="not a shipped preset .*imvideoedit-wan2.1-1.3b"):
        config_path("kiwi-stage9")


def test_installs_as_comfy_kiwi_trainer_not_trainer(monkeypatch):
    import setuptools
    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.chdir(ROOT)
    exec(compile((ROOT / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "__main__"})
    packages = seen["packages"]
    assert not any(p == "trainer" or p.startswith("trainer.") for p in packages)
    assert {"comfy_kiwi_trainer", "comfy_kiwi_trainer.data", "comfy_kiwi_trainer.methods",
            "comfy_kiwi"} <= set(packages)
    assert seen["package_dir"] == {"comfy_kiwi_trainer": "trainer"}
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["comfy-kiwi-train"] == "comfy_kiwi_trainer.__main__:main"


def test_the_trainer_runs_under_its_installed_name(monkeypatch, capsys):
    """The folder imported as ``comfy_kiwi_trainer`` (as the installed package is): all imports are relative,
    and usage names the console command."""
    spec = importlib.util.spec_from_file_location("comfy_kiwi_trainer", ROOT / "trainer" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "trainer")])
    pkg = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "comfy_kiwi_trainer", pkg)
    spec.loader.exec_module(pkg)
    entry = importlib.import_module("comfy_kiwi_trainer.__main__")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/comfy-kiwi-train", "train", "--help"])
    with pytest.raises(SystemExit) as e:
        entry.main()
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: comfy-kiwi-train train")
    for name in [m for m in sys.modules if m.startswith("comfy_kiwi_trainer.")]:
        monkeypatch.delitem(sys.modules, name)
