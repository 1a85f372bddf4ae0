"""Fuzz layer over the trainer's configs and command (``python -m trainer`` / ``comfy-kiwi-train``):
truncated, non-UTF-8 and wrong-typed TOML, NaN and absurd numbers, broken ``--set`` overrides, broken
datasets and unusable outputs each give one ``error:`` line and exit status 2, and nothing in the work
folder is changed or lost."""

from __future__ import annotations

import pytest

from fuzz_support import assert_command_fails_clearly
from trainer.__main__ import main
from trainer_fixtures import write_config, write_models, write_pairs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A valid tiny run (config, models, pairs) that trains; each case breaks one thing of a copy."""
    root = tmp_path_factory.mktemp("fuzz_trainer")
    models = write_models(root / "models")
    csv = write_pairs(root / "data", count=4)
    good = write_config(root, models, csv, schedule={"max_steps": 1, "batch_size": 1}, data={"text_len": 8},
                        checkpoint={"output_dir": str(root / "run"), "every": 1})
    return root, good


def _with(good, text_edit):
    """The good config with one line edited: ``(old, new)`` or a function of the text."""
    text = good.read_text()
    if callable(text_edit):
        return text_edit(text)
    old, new = text_edit
    assert old in text, old
    return text.replace(old, new, 1)


# (id, config text edit or raw bytes, extra argv, words the error names)
CONFIG_CASES = [
    ("toml-truncated", lambda t: t[: t.index("[schedule]") + 5], [], "not valid TOML"),
    ("toml-binary", b"\x00\x01\x02\xff\xfe binary", [], "UTF-8"),
    ("toml-latin1", lambda t: t.replace("[method]", '[method]\n# caf\xe9').encode("latin-1"), [], "UTF-8"),
    ("toml-empty", b"", [], "required"),
    ("unknown-section", lambda t: t + "\n[modle]\ndit = 'x'\n", [], "modle"),
    ("unknown-key", ("max_steps = 1", "max_step = 1"), [], "max_step"),
    ("wrong-type", ("max_steps = 1", 'max_steps = "ten"'), [], "max_steps"),
    ("lr-nan", ("lr = 0.002", "lr = nan"), [], "finite"),
    ("lr-inf", ("lr = 0.002", "lr = inf"), [], "finite"),
    ("lr-negative", ("lr = 0.002", "lr = -1.0"), [], "optimizer.lr"),
    ("lr-zero", ("lr = 0.002", "lr = 0.0"), [], "optimizer.lr"),
    ("betas-nan", ("[optimizer]", "[optimizer]\nbetas = [nan, 0.9]"), [], "betas"),
    ("betas-one-number", ("[optimizer]", "[optimizer]\nbetas = [0.9]"), [], "betas"),
    ("batch-size-zero", ("batch_size = 1", "batch_size = 0"), [], "batch_size"),
    ("max-steps-zero", ("max_steps = 1", "max_steps = 0"), [], "max_steps"),
    ("max-steps-beyond-int64", ("max_steps = 1", "max_steps = 99999999999999999999999"), [], "64-bit"),
    ("frames-not-4k+1", ("[data]", "[data]\nframes = 4"), [], "4k+1"),
    ("resolution-zero", ("resolution = 64", "resolution = 0"), [], "resolution"),
    ("multiple-not-16", ("[data]", "[data]\nmultiple = 10"), [], "multiple"),
    ("method-unknown", ('name = "imvideoedit"', 'name = "nope"'), [], "nope"),
    ("method-option-unknown", ('name = "imvideoedit"', 'name = "imvideoedit"\n[method.options]\nwarp = 1'), [],
     "warp"),
    ("precision-unknown", ('mixed = "no"', 'mixed = "fp8"'), [], "precision.mixed"),
    ("dtype-unknown", ('dtype = "fp32"', 'dtype = "int4"'), [], "model.dtype"),
    ("decay-share-nan", ("[schedule]", "[schedule]\ndecay_share = nan"), [], "finite"),
    ("decay-share-above-one", ("[schedule]", "[schedule]\ndecay_share = 1.5"), [], "decay_share"),
    ("shift-inf", ("[schedule]", "[schedule]\ntimestep_shift = inf"), [], "finite"),
    ("checkpoint-every-zero", ("every = 1", "every = 0"), [], "checkpoint.every"),
    ("model-file-missing", lambda t: t.replace("dit.safetensors", "gone.safetensors"), [], "--set model.dit"),
    ("dataset-missing", lambda t: t.replace("pairs.csv", "gone.csv"), [], "data.dataset"),
    ("set-without-value", None, ["--set", "model.dit"], "SECTION.KEY=VALUE"),
    ("set-without-section", None, ["--set", "dit=x"], "SECTION.KEY=VALUE"),
    ("set-nan-steps", None, ["--set", "schedule.max_steps=nan"], "max_steps"),
    ("set-table-to-number", None, ["--set", "model=3"], "SECTION.KEY=VALUE"),
    ("set-unknown-key", None, ["--set", "schedule.warp=1"], "warp"),
    ("set-missing-model-file", None, ["--set", "model.vae=nowhere.safetensors"], "model.vae"),
    ("set-non-utf8-path", None, ["--set", "model.dit=" + b"\xff.safetensors".decode("utf-8", "surrogateescape")],
     "model.dit"),
    ("config-missing", "MISSING", [], "no such file"),
    ("config-is-folder", "FOLDER", [], "no such file"),
    ("resume-missing", None, ["--resume", "/nonexistent/step-9"], "step-9"),
    ("max-steps-negative", None, ["--max-steps", "-4"], "--max-steps"),
    ("schedule-steps-zero", None, ["--schedule-steps", "0"], "--schedule-steps"),
]


@pytest.mark.parametrize("edit,extra,words", [pytest.param(e, x, w, id=i) for i, e, x, w in CONFIG_CASES])
def test_every_config_mistake_is_one_clear_line(setup, tmp_path, edit, extra, words, capsys):
    root, good = setup
    config = tmp_path / "train.toml"
    if edit == "MISSING":
        config = tmp_path / "missing.toml"
    elif edit == "FOLDER":
        config = tmp_path
    elif isinstance(edit, bytes):
        config.write_bytes(edit)
    else:
        text = _with(good, edit) if edit is not None else good.read_text()
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_command_fails_clearly(main, ["train", "--config", str(config), *extra], root, words, capsys)


def _broken_data(root, tmp_path, kind):
    data = tmp_path / "data"
    csv = write_pairs(data, count=4)
    if kind == "csv-non-utf8":
        csv.write_bytes(csv.read_bytes().replace(b"a ", b"\xff ", 1))
    elif kind == "csv-missing-column":
        csv.write_text("source_image,edited_prompt\nsrc0.png,x\n")
    elif kind == "csv-empty":
        csv.write_text("")
    elif kind == "image-truncated":
        png = data / "src0.png"
        png.write_bytes(png.read_bytes()[:40])
    elif kind == "image-missing":
        (data / "tgt1.png").unlink()
    return csv


@pytest.mark.parametrize("kind", ["csv-non-utf8", "csv-missing-column", "csv-empty", "image-truncated",
                                  "image-missing"])
def test_every_broken_dataset_is_one_clear_line(setup, tmp_path, kind, capsys):
    root, good = setup
    csv = _broken_data(root, tmp_path, kind)
    assert_command_fails_clearly(main, ["train", "--config", str(good), "--set", f"data.dataset={csv}", "--set",
                                        f"checkpoint.output_dir={tmp_path / 'run'}", "--set",
                                        f"data.cache_dir={tmp_path / 'cache'}"], root, "", capsys)


@pytest.mark.parametrize("argv,words", [
    pytest.param(["train", "--set", "checkpoint.output_dir=/proc/comfy-kiwi-fuzz/run"], "/proc",
                 id="output-unwritable"),
    pytest.param(["export", "--to", "comfyui-lora", "--out", "/proc/comfy-kiwi-fuzz/l.safetensors"], "",
                 id="export-no-checkpoint"),
    pytest.param(["memory", "--width", "0"], "width", id="memory-width-zero"),
    pytest.param(["memory", "--batch-size", "-1"], "batch", id="memory-batch-negative"),
])
def test_unusable_outputs_and_numbers_of_the_other_verbs(setup, tmp_path, argv, words, capsys):
    root, good = setup
    if argv[0] in ("train", "export"):
        argv = [argv[0], "--config", str(good), *argv[1:]]
        if argv[0] == "export":
            argv += ["--set", f"checkpoint.output_dir={tmp_path / 'empty_run'}"]
    assert_command_fails_clearly(main, argv, root, words, capsys)


def test_the_base_config_of_the_cases_trains(setup, tmp_path, capsys):
    _, good = setup
    assert main(["train", "--config", str(good), "--set", f"checkpoint.output_dir={tmp_path / 'run'}"]) == 0
    assert "done: step 1" in capsys.readouterr().out
