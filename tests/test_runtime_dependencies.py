"""diffusers is a test-only dependency ([test] extra): nothing a user runs may import it. A subprocess
with diffusers made unimportable loads the node pack, the trainer's methods and the library, and runs a
whole edit (the toy model, through the command line)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.modules["diffusers"] = None          # any `import diffusers` now raises ImportError
sys.path.insert(0, "tests")
import comfy_harness
pack = comfy_harness.load_pack(__import__("pathlib").Path.cwd())
assert len(pack.NODE_CLASS_MAPPINGS) > 20
import trainer.methods, trainer.loop, trainer.export, trainer.data.datasets
from comfy_kiwi.cli import main
sys.exit(main(["edit", "--video", "comfy_kiwi/toy/examples/toy_scene.mp4", "--instruction", "remove the red circle",
               "--out", sys.argv[1], "--steps", "2"]))
"""


def test_diffusers_is_only_a_test_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("diffusers") for d in project["dependencies"])
    assert any(d.startswith("diffusers") for d in project["optional-dependencies"]["test"])


def test_runtime_paths_never_import_diffusers(tmp_path):
    out = tmp_path / "edited.mp4"
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.stat().st_size > 0 and '"frames": 17' in run.stdout
