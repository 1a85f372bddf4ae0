"""The toy benchmark scripts (bench/toy_edit.py, bench/toy_edit_report.py): ablation jobs per training seed,
and the report's tables over seeds, on run JSONs written here (a real ablation run takes minutes)."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import toy_edit  # noqa: E402
import toy_edit_report  # noqa: E402


def _ablation_jobs(argv):
    p, args = toy_edit.parse_args(argv)
    return {name: cmd for name, cmd in toy_edit._jobs(p, args) if name.startswith("ablation_")}


def _flag(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_jobs_train_each_ablation_once_per_seed(tmp_path):
    jobs = _ablation_jobs(["--runs", "kiwi,concat", "--seeds", "3", "7", "--seed", "5", "--out", str(tmp_path),
                           "--ablation-count", "2", "--eval-every", "0"])
    assert sorted(jobs) == ["ablation_concat_seed3", "ablation_concat_seed7", "ablation_kiwi_seed3",
                            "ablation_kiwi_seed7"]
    for seed in (3, 7):
        cmd = jobs[f"ablation_kiwi_seed{seed}"]
        assert _flag(cmd, "--train-seed") == str(seed)
        assert _flag(cmd, "--seed") == "5"                  # the evaluation's sampling seed stays --seed
        assert Path(_flag(cmd, "--out")) == tmp_path / "ablations" / f"seed{seed}"
        assert _flag(cmd, "--final-count") == "2" and _flag(cmd, "--eval-every") == "0"
    # without --seeds: one run per variant, trained with --seed, as before
    jobs = _ablation_jobs(["--runs", "kiwi", "--seed", "4", "--out", str(tmp_path)])
    assert list(jobs) == ["ablation_kiwi_seed4"]
    cmd = jobs["ablation_kiwi_seed4"]
    assert (_flag(cmd, "--train-seed"), _flag(cmd, "--final-count"), _flag(cmd, "--eval-every")) == ("4", "16", "200")


@pytest.mark.parametrize("argv", [["--seeds", "1", "1"], ["--eval-every", "-1"], ["--ablation-count", "0"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        toy_edit.parse_args(argv)
    assert argv[0] in capsys.readouterr().err


def _scores(overall, cleanliness=None):
    s = {"compliance": 0.5, "preservation": 0.8, "temporal": 0.9, "overall": overall}
    if cleanliness is not None:
        s["cleanliness"] = cleanliness
    return {"all": dict(s), "image": dict(s), "video": dict(s), "reference": dict(s)}


def _run(seed, overall, cleanliness=None, steps=10):
    history = [{"step": k, "seconds": 0.0, "eval": _scores(overall * k / steps)} for k in (0, steps)]
    return {"config": {"seed": seed, "steps": steps}, "seconds": 1.0, "history": history,
            "final": _scores(overall, cleanliness)}


def _write(path, run):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))


def test_report_shows_mean_and_each_seed(tmp_path):
    abl = tmp_path / "ablations"
    _write(abl / "seed0" / "kiwi.json", _run(0, 0.051, cleanliness=0.7))
    _write(abl / "seed1" / "kiwi.json", _run(1, 0.065, cleanliness=0.9))
    _write(abl / "concat.json", _run(0, 0.2))                       # older flat layout, no cleanliness score
    _write(abl / "seed0" / "concat.json", _run(0, 0.3))             # a seed folder wins over the flat file
    _write(abl / "seed2" / "concat.json", _run(2, 0.4))
    _write(abl / "none.json", _run(0, 0.1))                         # older flat layout only
    shipped = _run(0, 0.6, cleanliness=0.95)
    shipped["final"]["by_kind"] = {"remove": _scores(0.6)["all"]}
    _write(tmp_path / "shipped.json", shipped)
    toy_edit_report.write_report(tmp_path)
    lines = (tmp_path / "results.md").read_text().splitlines()
    kiwi = next(line for line in lines if line.startswith("| " + toy_edit_report.LABELS["kiwi"]))
    cells = [c.strip() for c in kiwi.split("|")[1:-1]]
    # model | compliance | preservation | temporal | overall | cleanliness | ... | seeds
    assert cells[4] == "0.058 (0.051, 0.065)"
    assert cells[5] == "0.800" and cells[-1] == "0, 1"
    concat = next(line for line in lines if line.startswith("| " + toy_edit_report.LABELS["concat"]))
    cells = [c.strip() for c in concat.split("|")[1:-1]]
    assert cells[4] == "0.350 (0.300, 0.400)" and cells[5] == "–" and cells[-1] == "0, 2"
    none = next(line for line in lines if line.startswith("| " + toy_edit_report.LABELS["none"]))
    assert none.split("|")[5].strip() == "0.100" and none.split("|")[-2].strip() == "0"
    shipped_row = next(line for line in lines if line.startswith("| shipped toy model"))
    assert shipped_row.split("|")[6].strip() == "0.950"
    assert any(line.startswith("| remove |") and line.endswith("| – |") for line in lines)   # kind table
    tables = "\n".join(line if line.startswith("|") else "" for line in lines).split("\n\n")
    for table in filter(None, (t.strip() for t in tables)):     # every row as wide as its header
        assert len({row.count("|") for row in table.splitlines()}) == 1, table
    assert (tmp_path / "toy_edit.png").stat().st_size > 0


def test_no_curve_evaluation_with_eval_every_0():
    from comfy_kiwi.toy.models import ToyModelConfig
    from comfy_kiwi.toy.train import ToyTrainConfig, train
    small = ToyModelConfig(dit_dim=48, dit_ffn=96, dit_heads=2, dit_layers=1, num_queries=4)
    cfg = ToyTrainConfig(steps=2, batch=1, pool=2, datasets=("image",), model=small, threads=1)
    calls = []
    _, info = train(cfg, log=lambda s: None, on_eval=lambda step, m: calls.append(step) or {}, eval_every=0)
    assert calls == [] and info["history"] == []
    _, info = train(cfg, log=lambda s: None, on_eval=lambda step, m: calls.append(step) or {}, eval_every=1)
    assert calls == [0, 1, 2] and len(info["history"]) == 3


def test_one_ablation_run_trains_with_its_seed_and_scores_with_seed(tmp_path, monkeypatch):
    """``--one`` end to end at tiny size (small model, 2 training examples per dataset): the training seed is
    ``--train-seed``, the evaluation's sampling seed ``--seed``, and ``--eval-every 0`` leaves no curve."""
    import functools

    import comfy_kiwi.toy.train as toy_train
    from comfy_kiwi.toy.models import ToyModelConfig
    small = ToyModelConfig(dit_dim=48, dit_ffn=96, dit_heads=2, dit_layers=1, num_queries=4)
    monkeypatch.setattr(toy_train, "ToyTrainConfig", functools.partial(toy_train.ToyTrainConfig, model=small,
                                                                        pool=2, batch=1))
    out = tmp_path / "ablations" / "seed3"
    assert toy_edit.main(["--one", "no_image", "--out", str(out), "--train-seed", "3", "--seed", "5", "--ablation-steps",
                          "1", "--eval-every", "0", "--final-count", "1", "--curve-count", "1"]) == 0
    run = json.loads((out / "no_image.json").read_text())
    assert run["config"]["seed"] == 3 and run["final_settings"]["seed"] == 5 and run["history"] == []
    assert set(run["final"]) >= {"all", "video", "reference"} and "cleanliness" in run["final"]["all"]


def test_plot_draws_final_bars_when_ablations_have_no_curves(tmp_path):
    """Ablations run with --eval-every 0 have no history: the right panel shows each variant's final overall
    as a bar (height ∝ the mean over seeds) instead of an empty chart."""
    from PIL import Image
    runs = {}
    for name, overall in (("kiwi", 0.08), ("none", 0.04)):
        runs[name] = {}
        for seed in (0, 1):
            run = _run(seed, overall)
            run["history"] = []
            runs[name][seed] = run
    toy_edit_report.plot(None, runs, None, tmp_path / "p.png")
    img = Image.open(tmp_path / "p.png").convert("RGB")
    column = lambda name: sum(1 for x in range(660, 1140) for y in range(60, 400)     # noqa: E731
                              if img.getpixel((x, y)) == toy_edit_report.COLOURS[name])
    kiwi, none = column("kiwi"), column("none")
    assert kiwi > 0 and kiwi == pytest.approx(2 * none, rel=0.05)
