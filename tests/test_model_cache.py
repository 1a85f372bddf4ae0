"""The model cache: reuse on the same key, reload on changed files or options, superseded copies dropped, LRU."""

from __future__ import annotations

import os

from comfy_kiwi.comfyui.model_cache import ModelCache, files_stamp


def _bump_mtime(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))


def test_reuse_reload_and_supersede(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    cache, made = ModelCache(capacity=3), []

    def load():
        made.append(object())
        return made[-1]

    a = cache.get_or_load("dit", f, load, dtype="bf16", device="cuda")
    assert cache.get_or_load("dit", f, load, dtype="bf16", device="cuda") is a and cache.loads == 1
    b = cache.get_or_load("dit", f, load, dtype="fp16", device="cuda")       # other options: new load ...
    assert b is not a and len(cache) == 1                                   # ... and the old copy is dropped
    _bump_mtime(f)
    c = cache.get_or_load("dit", f, load, dtype="fp16", device="cuda")
    assert c is not b and cache.loads == 3


def test_lru_capacity_and_folder_stamps(tmp_path):
    cache = ModelCache(capacity=2)
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}"
        p.mkdir()
        (p / "w.safetensors").write_bytes(b"x" * i)
        paths.append(p)
        cache.get_or_load("vae", p, object)
    assert [k.source for k in cache.keys()] == [str(paths[1].resolve()), str(paths[2].resolve())]
    stamp = files_stamp(paths[2])
    (paths[2] / "sub").mkdir()
    (paths[2] / "sub" / "extra.json").write_text("{}")
    assert files_stamp(paths[2]) != stamp                   # any file in the folder changes the stamp
    cache.clear()
    assert len(cache) == 0
