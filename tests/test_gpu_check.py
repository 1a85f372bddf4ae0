"""``bench/gpu_check.py --tiny``: the GPU check's code path on the CPU with the tiny models, so it cannot rot
between GPU runs. Every part must finish (ok, or skipped with a reason), the report must name the CUDA-only
tests that were skipped, and a part cut off by its time box must still report the rows it measured."""

import json
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))
    import gpu_check
    yield gpu_check
    sys.path.remove(str(BENCH))


def test_tiny_run_reports_every_part(gpu_check, tmp_path):
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    parts = {p["part"]: p for p in report["parts"]}
    assert list(parts) == list(gpu_check.PARTS)
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part["reason"])
        assert part["rows"], name
    cuda_rows = parts["cuda_tests"]["rows"]
    skipped = {r["test"].split(":")[0] for r in cuda_rows if r["result"] == "skipped" and r["reason"]}
    assert {"tests/test_attention.py", "tests/test_memory_block_swap.py"} <= skipped      # CUDA-only tests named
    assert "skipped" in cuda_rows[-1]["result"]                                          # pytest's summary line
    backends = {r["backend"]: r for r in parts["dit_backends"]["rows"]}
    assert backends["sdpa"]["status"] == "ok" and backends["sdpa"]["max_abs_diff_vs_sdpa"] == 0.0
    assert backends["xformers"]["status"] == "skipped" and "CUDA" in backends["xformers"]["reason"]
    stages = [r["stage"] for r in parts["edit_12gb"]["rows"]]
    assert stages[0] == "plan" and stages[1:3] == ["MLLM encode", "VAE encode"] and stages[4] == "VAE decode"
    assert parts["edit_12gb"]["rows"][-1]["stage"] == "EditPipeline.edit (one call)"
    assert all(r["measured_MiB"] > 0 for r in parts["edit_24gb"]["rows"][1:])
    assert parts["fp8"]["rows"][1]["velocity_rel_l2_vs_bf16"] < 0.2
    swap = parts["block_swap"]["rows"]
    assert swap[1]["swapped"] > 0 and all(r["exact"] for r in swap[1:])
    md = (tmp_path / "results.md").read_text()
    assert "## edit_24gb: ok" in md and "| stage |" in md


def test_a_part_past_its_time_box_keeps_its_rows(gpu_check, tmp_path):
    out = gpu_check.run_part("fp8", gpu_check.M.TINY, "cpu", time.time() - 1, tmp_path / "r.json")
    assert out["status"] == "timeout" and "bf16" in out["reason"]
    assert [r["storage"] for r in out["rows"]] == ["bf16"]
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == out["rows"]
