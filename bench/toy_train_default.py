"""Train the shipped toy model with the project's trainer (the Kiwi curriculum presets) and score it.

    python bench/toy_train_default.py             # data, init, 4 stages, export, scores (about 1 h 45 min on a CPU)
    python bench/toy_train_default.py --install   # ... and install the result as comfy_kiwi/toy/default_model

Every step is a command a user can type (run from the repository root; RUN is ``--out``/run):

    python -m comfy_kiwi toy-data --out RUN/data/image --dataset image --count 1000      # also video, reference
    python -m comfy_kiwi toy-init --out RUN/init
    python -m trainer train --config RUN/toy-kiwi-stage1.toml                          # then stages 2, 3, 4
    python -m trainer export --config RUN/toy-kiwi-stage4.toml --to release --out RUN/release

The presets are trainer/presets/toy-kiwi-stage{1,2,3,4}.toml (the Kiwi curriculum and a settling stage), copied into RUN unchanged except that every
checkpoint is kept (``keep = 0``), so each one (every 200 steps) is scored on held-out edits for the curve
(20 sampling steps, ``--curve-count`` per dataset). The final release is scored like the command line
samples (50 steps, ``--final-count`` per dataset). ``--install`` stores the release as the embedded default
(the DiT in float16, which halves the package) and scores the installed folder. Output: ``OUT/shipped.json``
(read by ``bench/toy_edit_report.py``) and the logs of every command in ``OUT/``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = (1, 2, 3, 4)
DATASETS = ("image", "video", "reference")


def _run(cmd: list[str], log: Path) -> None:
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        if subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)} (see {log})")


def prepare(run: Path, count: int, log: Path) -> None:
    """Toy data, the untrained models and the presets (keeping every checkpoint) in ``run``."""
    py = sys.executable
    for name in DATASETS:
        if not (run / "data" / name / "metadata.csv").is_file():
            _run([py, "-m", "comfy_kiwi", "toy-data", "--out", str(run / "data" / name), "--dataset", name,
                  "--split", "train", "--count", str(count)], log)
    if not (run / "init").is_dir():
        _run([py, "-m", "comfy_kiwi", "toy-init", "--out", str(run / "init")], log)
    for n in STAGES:
        text = (ROOT / "trainer" / "presets" / f"toy-kiwi-stage{n}.toml").read_text()
        (run / f"toy-kiwi-stage{n}.toml").write_text(re.sub(r"(?m)^keep = \d+", "keep = 0", text))


def _checkpoints(run: Path, n: int) -> list[tuple[int, Path]]:
    folder = run / "runs" / f"toy-kiwi-stage{n}" / "checkpoints"
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("step-*") if p.is_dir()]
    return sorted(found)


def curve(run: Path, curve_count: int, seed: int, max_steps: int | None = None) -> list[dict]:
    """Held-out scores of every kept checkpoint, at the curriculum's global step."""
    import torch

    from comfy_kiwi.toy.evaluate import evaluate
    from trainer.config import load_config
    from trainer.export import load_trained
    from toy_edit import eval_pools       # bench/toy_edit.py
    history, offset, pools = [], 0, None
    for n in STAGES:
        cfg = load_config(run / f"toy-kiwi-stage{n}.toml")
        for step, path in _checkpoints(run, n):
            _, module = load_trained(cfg, path)
            pools = pools or eval_pools(module.mllm, curve_count)
            with torch.no_grad():
                scores = evaluate(module.dit, module.mllm, pools, "sigma_add", steps=20, seed=seed)
            history.append({"step": offset + step, "stage": n, "eval": scores})
            print(f"stage {n} step {step}: overall {scores['all']['overall']:.3f}", flush=True)
        offset += max_steps or cfg.schedule.max_steps
    return history


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "toy_edit"))
    p.add_argument("--count", type=int, default=1000, help="training pairs per dataset")
    p.add_argument("--curve-count", type=int, default=12, help="held-out examples per dataset per checkpoint")
    p.add_argument("--final-count", type=int, default=32, help="held-out examples per dataset for the table")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the evaluation")
    p.add_argument("--install", action="store_true", help="install the release as comfy_kiwi/toy/default_model")
    p.add_argument("--install-dir", default=None, help="install it here instead")
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)   # smoke tests: steps per stage
    args = p.parse_args(argv)
    out = Path(args.out)
    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    log = out / "shipped.log"
    prepare(run, args.count, log)
    py = sys.executable
    timings = run / "train_seconds.json"          # wall time of each stage's command (kept across reruns)
    seconds = json.loads(timings.read_text()) if timings.is_file() else {}
    for n in STAGES:
        if not (run / "runs" / f"toy-kiwi-stage{n}" / "kiwi.safetensors").is_file():
            extra = ["--schedule-steps", str(args.max_steps)] if args.max_steps else []
            t = time.time()
            _run([py, "-m", "trainer", "train", "--config", str(run / f"toy-kiwi-stage{n}.toml")] + extra, log)
            seconds[str(n)] = time.time() - t
            timings.write_text(json.dumps(seconds))
    release = run / "release"
    if release.exists():
        shutil.rmtree(release)
    _run([py, "-m", "trainer", "export", "--config", str(run / f"toy-kiwi-stage{STAGES[-1]}.toml"), "--to", "release",
          "--out", str(release)], log)
    from toy_edit import evaluate_folder
    final_folder = release
    if args.install or args.install_dir:
        from comfy_kiwi.toy.release import DEFAULT_MODEL_DIR, load_toy_pipeline, write_toy_release
        target = Path(args.install_dir) if args.install_dir else DEFAULT_MODEL_DIR
        pipe = load_toy_pipeline(release)
        info = {"trained_by": "python -m trainer (trainer/presets/toy-kiwi-stage1/2/3/4.toml), exported with "
                              "python -m trainer export --to release; DiT stored in float16",
                "reproduce": "python bench/toy_train_default.py --install"}
        write_toy_release(target, pipe.dit, pipe.mllm, info)
        final_folder = target
        print(f"installed the toy model in {target}", flush=True)
    t = time.time()
    history = curve(run, args.curve_count, args.seed, args.max_steps)
    final = evaluate_folder(final_folder, args.final_count, args.seed)
    steps = history[-1]["step"]
    result = {"name": "shipped", "config": {"steps": steps, "trainer": "trainer/presets/toy-kiwi-stage{1,2,3,4}.toml",
                                            "pairs_per_dataset": args.count},
              "seconds": sum(seconds.values()), "history": history, "final": final,
              "final_settings": {"steps": 50, "shift": 5.0, "count": args.final_count, "folder": str(final_folder)},
              "evaluation_seconds": time.time() - t}
    (out / "shipped.json").write_text(json.dumps(result, indent=2, default=str))
    a = final["all"]
    print(f"shipped model: compliance {a['compliance']:.3f} preservation {a['preservation']:.3f} "
          f"temporal {a['temporal']:.3f} overall {a['overall']:.3f}; wrote {out / 'shipped.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
