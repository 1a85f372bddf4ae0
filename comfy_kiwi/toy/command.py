"""``python -m comfy_kiwi toy-data``: write toy source/target pairs as a Kiwi CSV dataset;
``python -m comfy_kiwi toy-init``: write untrained toy models as a release folder for ``python -m trainer``."""

from __future__ import annotations

import json


def add_toy_data_parser(sub) -> None:
    from .data import DATASETS
    p = sub.add_parser("toy-data", help="write toy-world edit pairs (videos or images) as a Kiwi CSV dataset")
    p.add_argument("--out", required=True, help="folder for the files and metadata.csv")
    p.add_argument("--dataset", choices=list(DATASETS), default="video",
                   help="image: 1-frame pairs; video: 17-frame pairs; reference: video pairs with a reference image")
    p.add_argument("--split", choices=["train", "test", "demo"], default="train",
                   help="seed range (test = the benchmark's held-out edits)")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--start", type=int, default=0, help="first example index within the split")
    p.set_defaults(run=run_toy_data)
    p = sub.add_parser("toy-init", help="write untrained toy models (DiT, MLLM, codec) as the release folder the "
                                        "toy training presets start from")
    p.add_argument("--out", required=True, help="new folder for the release")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.set_defaults(run=run_toy_init)


def run_toy_data(args) -> int:
    from ..errors import InputError
    from .data import dataset_examples
    from .examples import write_csv_dataset
    if args.count < 1:
        raise InputError(f"--count must be ≥ 1, got {args.count}.")
    csv_path = write_csv_dataset(args.out, dataset_examples(args.dataset, args.split, args.count, args.start))
    print(json.dumps({"csv": str(csv_path), "examples": args.count, "dataset": args.dataset, "split": args.split}))
    return 0


def run_toy_init(args) -> int:
    from pathlib import Path

    import torch

    from ..errors import InputError
    from .release import write_toy_release
    from .train import ToyTrainConfig, build_models
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not empty; choose a new folder.")
    models = build_models(ToyTrainConfig(seed=args.seed))
    write_toy_release(out, models.dit, models.encoder, dit_dtype=torch.float32)
    print(json.dumps({"release": str(out), "seed": args.seed}))
    return 0
