"""Config validation: every mistake is named before any model is loaded."""

from __future__ import annotations

import pytest

from comfy_kiwi.errors import InputError
from trainer.__main__ import main
from trainer.config import load_config
from trainer_fixtures import write_config


@pytest.fixture()
def files(tmp_path):
    for name in ("dit.safetensors", "vae.safetensors", "pairs.csv"):
        (tmp_path / name).write_text("x")
    (tmp_path / "umt5").mkdir()
    return tmp_path, {"dit": tmp_path / "dit.safetensors", "vae": tmp_path / "vae.safetensors",
                      "umt5": tmp_path / "umt5"}


def write(tmp_path, models, extra=""):
    path = write_config(tmp_path, models, tmp_path / "pairs.csv")
    path.write_text(path.read_text() + extra)
    return path


def test_valid_config_loads(files):
    tmp, models = files
    cfg = load_config(write(tmp, models))
    assert cfg.method.name == "imvideoedit" and cfg.schedule.max_steps == 10 and cfg.optimizer.lr == 2e-3


@pytest.mark.parametrize("extra, message", [
    ("[schedule2]\nx = 1\n", "unknown key(s) schedule2"),
    ("[extra_section]\n", "unknown key(s) extra_section"),
])
def test_unknown_sections(files, extra, message):
    tmp, models = files
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp, models, extra))


@pytest.mark.parametrize("section, line, message", [
    ("optimizer", "lrr = 0.1", r"unknown key\(s\) lrr in \[optimizer\]; accepted: lr"),
    ("schedule", 'max_steps = "ten"', "schedule.max_steps must be int, got str"),
    ("schedule", "batch_size = 1.5", "schedule.batch_size must be int"),
    ("precision", 'mixed = "fp8"', "precision.mixed is 'fp8'; choose one of no, bf16, fp16"),
    ("method", 'name = "nope"', "method.name is 'nope'; known methods: .*imvideoedit.*kiwi"),
    ("schedule", "max_steps = 0", "schedule.max_steps must be > 0"),
    ("schedule", "stop_at = -1", "schedule.stop_at must be ≥ 0"),
    ("data", "frames = 4", "data.frames must be 4k\\+1"),
    ("optimizer", "betas = [0.9]", "optimizer.betas must be two numbers"),
])
def test_bad_values_are_named(files, section, line, message):
    tmp, models = files
    path = write(tmp, models)
    text = path.read_text().replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    # a key given twice is a TOML error; drop the original line of the same key
    key = line.split("=")[0].strip()
    lines, seen = [], False
    for ln in text.splitlines():
        if ln.startswith(key + " =") and seen:
            continue
        seen = seen or ln.startswith(key + " =")
        lines.append(ln)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message):
        load_config(path)


def test_method_options_checked(files):
    tmp, models = files
    with pytest.raises(InputError, match=r"unknown key\(s\) rank in \[method.options\]"):
        load_config(write(tmp, models, "[method.options]\nrank = 4\n"))


def test_missing_file_named(files):
    tmp, models = files
    models = {**models, "vae": tmp / "nowhere.safetensors"}
    with pytest.raises(InputError, match="model.vae: .*nowhere.safetensors does not exist"):
        load_config(write(tmp, models))


def test_cli_reports_errors_without_loading(files, capsys):
    tmp, models = files
    path = write(tmp, models, "[bogus]\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "unknown key(s) bogus" in capsys.readouterr().err
