"""Toy editing benchmark: the Kiwi stack learns to edit on a CPU, and which design choices matter.

    python bench/toy_edit.py --install             # everything (~1.5 h on 2 cores), then the report
    python bench/toy_edit.py --runs shipped        # only the shipped model's run (and the baselines)
    python bench/toy_edit.py --runs kiwi,concat --seeds 0 1   # ablations, each trained with two seeds
    python bench/toy_edit.py --report              # tables + plot from the runs already in --out
    python bench/toy_edit.py --evaluate comfy_kiwi/toy/default_model   # score a saved toy model folder

Jobs:

- ``shipped``: the shipped default, trained by the project's trainer with the Kiwi curriculum presets
  (``bench/toy_train_default.py``: ``python -m trainer train`` on toy data, three curriculum stages of 3000
  steps and a settling stage of 300; every
  checkpoint scored for the curve); ``--install`` makes it the embedded default.
- the ablations, each trained from scratch for ``--ablation-steps`` (400) by the in-memory toy driver
  ``comfy_kiwi.toy.train`` (same models, same Kiwi loss and curriculum as the trainer —
  tests/test_toy_trainer.py checks loss and gradients are equal — without files or caches, so several
  variants fit in an hour):
  ``kiwi`` (σ-scaled source add, image + video + reference data: the shipped configuration),
  ``plain_add`` / ``concat`` / ``none`` (other source injections; ``concat`` is ``WanDiT.source_mode = "concat"``),
  ``no_image`` (σ add without image co-training), ``image_only`` (image pairs only, ImVideoEdit's data regime,
  evaluated on videos too).

``--seeds 0 1`` trains and scores each ablation once per seed (the training seed: initial weights, batches,
noise), so a difference between variants can be told from one seed's noise. The evaluation's sampling seed
stays ``--seed`` for every training seed: all runs are scored on the same held-out edits with the same
sampling noise, so the spread over seeds is the training's alone.

Held-out toy edits (seed split "test") are scored by the toy judge during training (20 sampling steps,
``--curve-count`` examples per dataset; ablations every ``--eval-every`` steps, 0 = no curve) and at the end
as the command line samples (50 steps, ``--final-count`` per dataset; ``--ablation-count`` for ablations).
Baselines: ``identity`` (return the source unchanged) and ``random`` (untrained model with random weights).
Output in ``--out``: one JSON per run (ablations in ``ablations/seed{N}/{name}.json``), ``results.md``
(tables) and ``toy_edit.png`` (curves).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "kiwi": {},
    "plain_add": {"source_mode": "plain_add"},
    "concat": {"source_mode": "concat"},
    "none": {"source_mode": "none"},
    "no_image": {"datasets": ("video", "reference")},
    "image_only": {"datasets": ("image",)},
}
EVAL_DATASETS = ("image", "video", "reference")


def eval_pools(encoder, count: int):
    from comfy_kiwi.toy.data import dataset_examples, prepare_samples
    return {name: prepare_samples(dataset_examples(name, "test", count), encoder) for name in EVAL_DATASETS}


def run_one(name: str, args) -> dict:
    import torch

    from comfy_kiwi.toy.evaluate import evaluate
    from comfy_kiwi.toy.train import ToyTrainConfig, build_models, train
    torch.set_num_threads(args.threads)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    cfg = ToyTrainConfig(steps=args.ablation_steps, threads=args.threads, seed=train_seed, **RUNS[name])
    models = build_models(cfg)
    curve_pools = eval_pools(models.encoder, args.curve_count)

    def on_eval(step, m):
        t = time.time()
        r = evaluate(m.dit, m.encoder, curve_pools, m.source_mode, steps=20, seed=args.seed)
        print(f"[{name}] eval step {step}: overall {r['all']['overall']:.3f} ({time.time() - t:.0f}s)", flush=True)
        return r

    models, info = train(cfg, log=lambda s: print(f"[{name}] {s}", flush=True), on_eval=on_eval,
                         eval_every=args.eval_every, models=models)
    final = evaluate(models.dit, models.encoder, eval_pools(models.encoder, args.final_count), models.source_mode,
                     steps=50, seed=args.seed)
    info.update(name=name, final=final, final_settings={"steps": 50, "shift": 5.0, "count": args.final_count,
                                                            "seed": args.seed})
    return info


def baselines(args) -> dict:
    import torch

    from comfy_kiwi.toy.evaluate import evaluate, identity_baseline
    from comfy_kiwi.toy.train import ToyTrainConfig, build_models
    torch.set_num_threads(args.threads)
    models = build_models(ToyTrainConfig(seed=args.seed))
    with torch.no_grad():       # "random model": every weight random (the training init zeroes the head)
        g = torch.Generator().manual_seed(args.seed)
        for p in list(models.dit.head.parameters()) + list(models.dit.source_embedder.parameters()) + \
                list(models.dit.ref_embedder.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    pools = eval_pools(models.encoder, args.final_count)
    return {"identity": identity_baseline(pools),
            "random": evaluate(models.dit, models.encoder, pools, "sigma_add", steps=50, seed=args.seed)}


def evaluate_folder(folder, count: int, seed: int = 0, denoise: float = 1.0) -> dict:
    """Scores of a saved toy release folder, loaded the way the command line loads it (50 sampling steps)."""
    from comfy_kiwi.toy.evaluate import evaluate
    from comfy_kiwi.toy.release import load_toy_pipeline
    pipe = load_toy_pipeline(folder)
    return evaluate(pipe.dit, pipe.mllm, eval_pools(pipe.mllm, count), "sigma_add", steps=50, seed=seed,
                    denoise=denoise)


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="shipped," + ",".join(RUNS),
                   help="comma-separated jobs: shipped (the trainer's run of the shipped model) and the ablations: "
                        + ", ".join(RUNS))
    p.add_argument("--ablation-steps", type=int, default=400, help="optimizer steps of each ablation run")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds of the ablations, each variant trained once per seed (default: --seed)")
    p.add_argument("--ablation-count", type=int, default=16,
                   help="held-out examples per dataset for each ablation's final score")
    p.add_argument("--eval-every", type=int, default=200,
                   help="curve evaluation every N optimizer steps of each ablation (0: none, only the final score)")
    p.add_argument("--curve-count", type=int, default=12, help="held-out examples per dataset for the curves")
    p.add_argument("--final-count", type=int, default=32, help="held-out examples per dataset for the table")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1 behaves best on a busy CPU)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "toy_edit"))
    p.add_argument("--install", action="store_true", help="install the shipped run's model as the embedded default")
    p.add_argument("--report", action="store_true", help="only write the tables and plot from --out")
    p.add_argument("--evaluate", default=None, metavar="FOLDER",
                   help="only score a saved toy model folder (e.g. comfy_kiwi/toy/default_model) on the held-out edits")
    p.add_argument("--denoise", type=float, nargs="+", default=[1.0], help="with --evaluate: denoise values")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)          # internal: one run in this process
    p.add_argument("--train-seed", type=int, default=None, help=argparse.SUPPRESS)   # internal: with --one
    args = p.parse_args(argv)
    if min(args.ablation_steps, args.ablation_count) < 1 or args.eval_every < 0:
        p.error(f"--ablation-steps and --ablation-count must be >= 1 and --eval-every >= 0, got "
                f"{args.ablation_steps}, {args.ablation_count}, {args.eval_every}")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must not repeat a seed, got {args.seeds}")
    return p, args


def main(argv=None) -> int:
    p, args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.evaluate:
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps({f"denoise {d}": evaluate_folder(args.evaluate, args.final_count, args.seed, d)
                          for d in args.denoise}, indent=2))
        return 0
    if args.one:
        result = baselines(args) if args.one == "baselines" else run_one(args.one, args)
        (out / f"{args.one}.json").write_text(json.dumps(result, indent=2, default=str))
        return 0
    if not args.report:
        jobs = _jobs(p, args)
        _run_parallel(jobs, args)
    from toy_edit_report import write_report    # bench/toy_edit_report.py
    write_report(out)
    print(f"wrote {out / 'results.md'} and {out / 'toy_edit.png'}")
    return 0


def _jobs(p, args) -> list[tuple[str, list[str]]]:
    """(log name, command) of each process: the baselines, the shipped model's trainer run and the ablations."""
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS and n != "shipped"]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from shipped, {', '.join(RUNS)}")
    me = [sys.executable, __file__]
    common = ["--threads", str(args.threads), "--seed", str(args.seed), "--curve-count", str(args.curve_count)]
    jobs = [("baselines", me + common + ["--out", args.out, "--final-count", str(args.final_count), "--one",
                                         "baselines"])]
    if "shipped" in names:
        jobs.append(("shipped", [sys.executable, str(Path(__file__).with_name("toy_train_default.py")), "--out",
                                 args.out, "--curve-count", str(args.curve_count), "--final-count",
                                 str(args.final_count), "--seed", str(args.seed)] + (["--install"] if args.install else [])))
    seeds = [args.seed] if args.seeds is None else args.seeds
    for seed in seeds:
        abl = str(Path(args.out) / "ablations" / f"seed{seed}")
        for n in names:
            if n != "shipped":
                jobs.append((f"ablation_{n}_seed{seed}", me + common + [
                    "--out", abl, "--train-seed", str(seed), "--ablation-steps", str(args.ablation_steps),
                    "--eval-every", str(args.eval_every), "--final-count", str(args.ablation_count), "--one", n]))
    return jobs


def _run_parallel(jobs, args) -> None:
    """Each job in its own process, at most ``--jobs`` at once; logs in --out/NAME.log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, cmd = pending.pop(0)
            log = open(Path(args.out) / f"{name}.log", "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            print(f"started {name}", flush=True)
        time.sleep(2)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"finished {name} (exit {proc.returncode})", flush=True)
                if proc.returncode:
                    raise SystemExit(f"run {name} failed; see {Path(args.out) / (name + '.log')}")


if __name__ == "__main__":
    sys.exit(main())
