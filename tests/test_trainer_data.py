"""Dataset formats, buckets, batch order, presets and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_kiwi.errors import InputError
from trainer.config import load_config
from trainer.data.datasets import make_buckets, nearest_bucket, read_records
from trainer.data.order import BatchOrder
from trainer.memory import estimate
from trainer_fixtures import shape_image

PRESETS = Path(__file__).resolve().parent.parent / "trainer" / "presets"


def test_image_pairs_jsonl_and_kiwi_csv(tmp_path):
    for n in ("a.png", "b.png", "r.png"):
        shape_image((200, 0, 0), "square").save(tmp_path / n)
    (tmp_path / "p.jsonl").write_text('{"source_image": "a.png", "edited_image": "b.png", '
                                      '"edited_prompt": "blue", "source_prompt": "red"}\n')
    (rec,) = read_records(tmp_path / "p.jsonl", "image_pairs")
    assert rec.source == str((tmp_path / "a.png").resolve()) and rec.prompt == "blue" and rec.source_prompt == "red"
    (tmp_path / "k.csv").write_text("src_video,tgt_video,prompt,ref_image\na.png,b.png,make it blue,r.png\n")
    (rec,) = read_records(tmp_path / "k.csv", "kiwi")
    assert rec.reference.endswith("r.png") and rec.prompt == "make it blue"
    (tmp_path / "bad.csv").write_text("src_video,tgt_video,prompt\na.png,missing.png,x\n")
    with pytest.raises(InputError, match="row 1: tgt_video file .*missing.png does not exist"):
        read_records(tmp_path / "bad.csv", "kiwi")
    (tmp_path / "bad2.csv").write_text("src_video,prompt\na.png,x\n")
    with pytest.raises(InputError, match="row 1: missing tgt_video"):
        read_records(tmp_path / "bad2.csv", "kiwi")


def test_buckets_and_order():
    buckets = make_buckets(632, 16, 2.0)
    assert (832, 480) in buckets and all(w % 16 == 0 and h % 16 == 0 for w, h in buckets)
    assert nearest_bucket(1920, 1080, buckets) == (832, 480)
    order = BatchOrder([(64, 64)] * 5 + [(96, 48)] * 4, batch_size=2, world_size=1, seed=3)
    seen = [tuple(order.batch(p)) for p in range(order.per_epoch)]
    assert order.per_epoch == 4 and len({i for b in seen for i in b}) == 8
    assert all(len({order.buckets[i] for i in b}) == 1 for b in seen)       # one size per batch
    again = BatchOrder(order.buckets, 2, 1, 3)
    assert [again.batch(p) for p in range(6)] == [order.batch(p) for p in range(6)]   # resumable
    two = BatchOrder(order.buckets, 1, 2, 3)
    assert two.batch(0, 0) + two.batch(0, 1) == order.batch(0)
    with pytest.raises(InputError, match="no bucket holds a full global batch"):
        BatchOrder([(64, 64)], batch_size=2)


def test_presets_parse():
    for preset in PRESETS.glob("*.toml"):
        cfg = load_config(preset, check_files=False)
        assert cfg.method.name


def test_memory_estimate_fits_24gb():
    e = estimate("wan2.1-t2v-1.3b", 480, 832)
    assert 1.3e9 < e.base_params < 1.5e9 and e.total_gib < 24
    assert estimate("wan2.1-t2v-1.3b", 480, 832, checkpointing=False).total_gib > e.total_gib


def test_kiwi_video_rows_are_cached_as_multi_frame_latents(tmp_path):
    import torch

    from comfy_kiwi.testing import tiny_vae
    from comfy_kiwi.testing.tiny_umt5 import write_tiny_umt5
    from comfy_kiwi.video_io import write_video
    from trainer.data.cache import CachedDataset, build_cache
    from trainer.loop import _loaders
    from trainer_fixtures import write_config

    frames = torch.rand(5, 64, 64, 3)
    write_video(tmp_path / "src.mp4", frames, fps=8)
    write_video(tmp_path / "tgt.mp4", frames.flip(-1), fps=8)
    (tmp_path / "kiwi.csv").write_text("src_video,tgt_video,prompt\nsrc.mp4,tgt.mp4,make it blue\n")
    models = {"dit": tmp_path / "kiwi.csv",       # not read by the cache
              "vae": tiny_vae.write_original_file(tiny_vae.tiny_vae("2.1"), tmp_path / "vae.safetensors"),
              "umt5": write_tiny_umt5(tmp_path / "umt5")}
    cfg = load_config(write_config(tmp_path, models, tmp_path / "kiwi.csv", data={"format": "kiwi", "frames": 5}))
    path = build_cache(read_records(cfg.data.dataset, "kiwi"), cfg, *_loaders(cfg, "cpu"), log=lambda *a: None)
    item = CachedDataset(path)[0]
    assert item["source"].shape == (1, 16, 2, 8, 8) and item["target"].shape == item["source"].shape
    assert item["context"].shape == (4, 32)                     # "make it blue" + </s>
