"""Trainer core, generalised: several datasets mixed round robin or by weights, grad accumulation per
dataset, Kiwi's ConstantLR warm-up, init_from a previous stage, mask / target-caption columns."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from comfy_kiwi.errors import InputError
from trainer.config import load_config
from trainer.data.cache import CachedDataset, build_cache, collate
from trainer.data.datasets import read_records
from trainer.data.order import BatchOrder, MixedOrder
from trainer.loop import _loaders, train
from trainer_fixtures import run_config, shape_image, tiny_setup, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mixed_order_round_robin_and_weights_are_pure_functions_of_position():
    orders = [BatchOrder([(64, 64)] * n, 1, 1, seed=i) for i, n in enumerate((5, 3, 4))]
    rr = MixedOrder(orders)
    assert [rr.batch(p)[0] for p in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    weighted = MixedOrder(orders, [2, 1, 1])
    picks = [weighted.batch(p) for p in range(400)]
    counts = Counter(d for d, _ in picks)
    assert counts[0] == 200 and counts[1] == 100 and counts[2] == 100
    again = MixedOrder(orders, [2, 1, 1])                  # a resumed run asks for a late position first
    assert again.batch(399) == picks[399] and again.batch(17) == picks[17]
    # each dataset walks through its own order: dataset 1's k-th pick is its batch k
    ones = [idx for d, idx in picks if d == 1]
    assert ones[:6] == [orders[1].batch(k) for k in range(6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    toml = tiny_setup(root, count=8)
    data = root / "data"
    for i in range(8):                                      # masks: white where the shape is
        m = shape_image((255, 255, 255), "square" if i % 2 else "circle", offset=i % 3)
        m = m.point(lambda v: 255 if v == 255 else 0)
        m.save(data / f"mask{i}.png")
    rows = (data / "pairs.csv").read_text().splitlines()
    head, body = rows[0], rows[1:]
    with_cols = [head + ",mask,target_caption"] + [f"{r},mask{i}.png,caption {i}" for i, r in enumerate(body)]
    (data / "a.csv").write_text("\n".join(with_cols[:5]) + "\n")
    (data / "b.csv").write_text("\n".join([head] + body[4:]) + "\n")
    return root, toml


def test_mask_and_target_caption_columns_reach_the_batch(setup):
    root, _ = setup
    cfg = run_config(setup, "cols")
    records = read_records(root / "data" / "a.csv")
    assert records[1].target_caption == "caption 1" and records[1].mask.endswith("mask1.png")
    path = build_cache(records, cfg, *_loaders(cfg, "cpu"), log=lambda *a: None)
    ds = CachedDataset(path)
    item = ds[0]
    assert item["mask"].shape == (1, 1) + tuple(item["target"].shape[2:])
    assert 0 < float(item["mask"].mean()) < 1 and float(item["mask"].min()) >= 0 and float(item["mask"].max()) <= 1
    batch = collate([ds[0], ds[1]], cfg.data.text_len)
    assert batch["target_caption"] == ["caption 0", "caption 1"] and batch["mask"].shape[0] == 2
    assert batch["prompt"][1].startswith("a ") and batch["context"].shape[1] == cfg.data.text_len

    # a method asking for the umT5 encoding of the target caption gets it as target_context
    from trainer.methods.imvideoedit import ImVideoEditMethod

    class CaptionMethod(ImVideoEditMethod):
        encode_target_caption = True
    method = CaptionMethod(cfg)
    with_caption = CachedDataset(build_cache(records, cfg, *_loaders(cfg, "cpu"), log=lambda *a: None, method=method))
    assert with_caption.path != ds.path
    batch = method.collate([with_caption[0], with_caption[1]])
    assert batch["target_context"].shape == batch["context"].shape
    assert not torch.equal(batch["target_context"], batch["context"])


def test_two_datasets_accumulate_one_micro_step_each_with_kiwi_lr(setup):
    root, _ = setup
    cfg = run_config(setup, "two", schedule={"max_steps": 6, "batch_size": 1, "grad_accum": 0,
                                         "lr_schedule": "kiwi_constant"},
                 data={"datasets": [{"dataset": str(root / "data" / "a.csv")},
                                    {"dataset": str(root / "data" / "b.csv")}]})
    cfg.checkpoint.every = 3
    result = train(cfg, log=lambda *a: None)
    assert result["step"] == 6 and all(torch.isfinite(torch.tensor(result["losses"])))
    lines = [json.loads(x) for x in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [x["lr"] for x in lines]
    assert lrs[:5] == pytest.approx([cfg.optimizer.lr / 3] * 5) and lrs[5] == pytest.approx(cfg.optimizer.lr)
    state = json.loads((cfg.output_dir / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["position"] == 12                        # 2 datasets → 2 micro-steps per optimiser step

    # a later stage starts from this run's final weights
    final = load_file(str(cfg.output_dir / "imvideoedit.safetensors"))
    nxt = run_config(setup, "next", schedule={"max_steps": 1, "batch_size": 1})
    nxt.checkpoint.init_from = str(cfg.output_dir / "imvideoedit.safetensors")
    nxt.optimizer.lr = 1e-12
    nxt.optimizer.weight_decay = 0.0
    module = train(nxt, log=lambda *a: None)["module"]
    after = module.adapter.prefixed_state_dict()
    assert all(torch.allclose(after[k].float(), final[k].float(), atol=1e-6) for k in final)


def test_mix_weights_must_match_the_datasets(setup):
    root, toml = setup
    text = toml.read_text().replace("[data]\n", '[data]\nmix_weights = [2, 1]\n', 1)
    bad = toml.with_name("bad.toml")
    bad.write_text(text)
    with pytest.raises(InputError, match="data.mix_weights must hold one positive number per dataset"):
        load_config(bad)


def test_pairs_csv_from_folders_of_clips(tmp_path):
    from trainer.data.__main__ import main
    for d in ("src", "tgt", "refs"):
        (tmp_path / d).mkdir()
    for name in ("a", "b", "c"):
        shape_image((200, 30, 30), "square").save(tmp_path / "src" / f"{name}.png")
        shape_image((30, 30, 200), "square").save(tmp_path / "refs" / f"{name}.png")
    for name in ("a", "b"):
        shape_image((30, 30, 200), "square").save(tmp_path / "tgt" / f"{name}.png")
    (tmp_path / "tgt" / "a.txt").write_text("Make the square  blue.\n")
    out = tmp_path / "data" / "pairs.csv"
    assert main(["pairs-csv", "--source-dir", str(tmp_path / "src"), "--target-dir", str(tmp_path / "tgt"),
                 "--out", str(out), "--prompt", "Recolour it.", "--reference-dir", str(tmp_path / "refs")]) == 0
    records = read_records(out, "kiwi")
    assert [r.prompt for r in records] == ["Make the square blue.", "Recolour it."]      # c has no edited clip
    assert records[0].reference.endswith("refs/a.png") and records[1].target.endswith("tgt/b.png")
    assert out.read_text().splitlines()[1].startswith("../src/a.png,../tgt/a.png,")
    assert main(["pairs-csv", "--source-dir", str(tmp_path / "src"), "--target-dir", str(tmp_path / "refs" / "x"),
                 "--out", str(out)]) == 2


def test_short_clips_keep_their_largest_4k_plus_1_prefix(tmp_path):
    from comfy_kiwi.video_io import write_video
    from trainer.data.datasets import load_pixels
    write_video(tmp_path / "seven.mp4", torch.rand(7, 32, 32, 3), fps=8)
    assert load_pixels(str(tmp_path / "seven.mp4"), (32, 32), frames=9).shape[2] == 5
    assert load_pixels(str(tmp_path / "seven.mp4"), (32, 32), frames=5).shape[2] == 5


def test_dataset_base_path_as_the_kiwi_scripts(tmp_path):
    """Published Kiwi CSVs name files relative to --dataset_base_path, not to the CSV."""
    (tmp_path / "media").mkdir()
    (tmp_path / "meta").mkdir()
    for n in ("s", "t"):
        shape_image((200, 30, 30), "square").save(tmp_path / "media" / f"{n}.png")
    (tmp_path / "meta" / "k.csv").write_text("src_video,tgt_video,prompt\ns.png,t.png,Make it blue.\n")
    with pytest.raises(InputError, match="src_video file .* does not exist"):
        read_records(tmp_path / "meta" / "k.csv", "kiwi")
    (rec,) = read_records(tmp_path / "meta" / "k.csv", "kiwi", base_path=tmp_path / "media")
    assert rec.source == str((tmp_path / "media" / "s.png").resolve())
