"""The suite runs from a checkout in any folder, including the ``comfy-kiwi`` folder the docs name: a
folder holding ``__init__.py`` is a package to pytest, and when its name is not a Python name pytest
imports that file as a plain module (no parent package for its relative imports)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_root_init_imports_as_a_plain_module():
    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")     # what pytest does
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {} and module.__all__ == ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def test_tests_collect_and_run_from_a_folder_named_comfy_kiwi(tmp_path):
    checkout = tmp_path / "comfy-kiwi"
    checkout.mkdir()
    for name in ("__init__.py", "pyproject.toml"):
        (checkout / name).write_bytes((ROOT / name).read_bytes())
    for name in ("comfy_kiwi", "nodes"):
        (checkout / name).symlink_to(ROOT / name)
    (checkout / "tests").mkdir()
    (checkout / "tests" / "test_frames.py").write_bytes((ROOT / "tests" / "test_frames.py").read_bytes())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=-q", "-x",
                          "tests/test_frames.py"],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    last = run.stdout.strip().splitlines()[-1]
    assert " passed" in last and "error" not in last, last
