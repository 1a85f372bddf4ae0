"""How the pack hangs together: it loads from a plain copy in custom_nodes/ (no pip install) without importing
model code, every registered node is documented, every static import names something that exists, and the
trainer does not reach into the command line."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# never imported by loading the pack or by listing its nodes' inputs (ComfyUI does both at start)
MODEL_CODE = ("transformers", "diffusers", "comfy_kiwi.pipeline", "comfy_kiwi.models", "comfy_kiwi.methods",
              "comfy_kiwi.loading", "comfy_kiwi.text_encoders")
# all of the library that loading the pack imports: the ComfyUI glue and three small modules
AT_LOAD = ("comfy_kiwi.comfyui", "comfy_kiwi.errors", "comfy_kiwi.dtypes", "comfy_kiwi.frames")

# Run in a fresh interpreter from a temp folder: loads <tmp>/custom_nodes/comfy-kiwi/__init__.py as ComfyUI's
# load_custom_node does (a path-like module name), with `comfy_kiwi` made unimportable from anywhere but the
# copy (an installed or editable comfy_kiwi in site-packages is refused), then reports what got imported.
_DRIVER = textwrap.dedent('''
    import importlib.machinery, importlib.util, json, sys
    pack = sys.argv[1]

    class OnlyTheCopy:
        """Wraps a meta-path finder: `comfy_kiwi` is found only on sys.path entries inside the copied pack."""
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name != "comfy_kiwi":
                return self.finder.find_spec(name, path, target)
            if self.finder is importlib.machinery.PathFinder:
                return self.finder.find_spec(name, [p for p in sys.path if p.startswith(pack)], target)
            return None

        def invalidate_caches(self):
            getattr(self.finder, "invalidate_caches", lambda: None)()

    sys.meta_path[:] = [OnlyTheCopy(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
    assert importlib.util.find_spec("comfy_kiwi") is None      # as on a machine without pip install
    name = (pack + "/__init__.py").replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, pack + "/__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    after_load = sorted(sys.modules)
    for cls in module.NODE_CLASS_MAPPINGS.values():      # what /object_info asks every node
        cls.INPUT_TYPES()
    import comfy_kiwi
    print(json.dumps({"library": comfy_kiwi.__file__, "nodes": sorted(module.NODE_CLASS_MAPPINGS),
                      "after_load": after_load, "after_input_types": sorted(sys.modules)}))
''')


def _copy_pack(dest: Path) -> Path:
    pack = dest / "custom_nodes" / "comfy-kiwi"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    pack.mkdir(parents=True)
    shutil.copy2(ROOT / "__init__.py", pack / "__init__.py")
    for folder in ("nodes", "comfy_kiwi"):
        shutil.copytree(ROOT / folder, pack / folder, ignore=ignore)
    return pack


def test_pack_loads_from_custom_nodes_without_pip_install_and_without_model_code(tmp_path):
    pack = _copy_pack(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KIWI_MODELS_DIR": str(tmp_path / "models")}
    run = subprocess.run([sys.executable, str(driver), str(pack)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(out["library"]).resolve() == (pack / "comfy_kiwi" / "__init__.py").resolve()
    from nodes import NODE_CLASS_MAPPINGS
    assert out["nodes"] == sorted(NODE_CLASS_MAPPINGS)
    for when in ("after_load", "after_input_types"):
        loaded = [m for m in out[when] if m.split(".")[0] in MODEL_CODE or m.startswith(MODEL_CODE)]
        assert not loaded, f"{when}: the pack imported model code {loaded}"
    more = [m for m in out["after_load"] if m.startswith("comfy_kiwi.") and not m.startswith(AT_LOAD)]
    assert not more, f"loading the pack imported {more}; import them inside the node functions"


def test_the_entry_point_leaves_sys_path_alone_when_comfy_kiwi_is_importable():
    """With comfy_kiwi importable (as here, the checkout on sys.path), the entry point leaves sys.path alone."""
    import comfy_harness as H
    before = list(sys.path)
    H.load_pack(ROOT)
    assert sys.path == before


def _documented_nodes() -> set[str]:
    doc = (ROOT / "docs" / "COMFYUI.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| \*\*([^*]+)\*\* \|", doc, re.M))


def test_every_registered_node_is_listed_in_the_comfyui_doc():
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    missing = sorted(name for name in NODE_DISPLAY_NAME_MAPPINGS.values() if name not in _documented_nodes())
    assert not missing, f"nodes missing from the node tables of docs/COMFYUI.md: {missing}"


def _imports(folder: str):
    """(file, line, module, names) of every `from comfy_kiwi... import ...` / `import comfy_kiwi...` under folder
    (relative imports inside comfy_kiwi/ resolved to their absolute names)."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).parent.parts)      # what a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level and folder == "comfy_kiwi":
                    module = importlib.util.resolve_name("." * node.level + module, package)
                if node.level and folder != "comfy_kiwi" or not module.startswith("comfy_kiwi"):
                    continue
                yield path, node.lineno, module.rstrip("."), [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("comfy_kiwi"):
                        yield path, node.lineno, a.name, []


@pytest.mark.parametrize("folder", ["nodes", "comfy_kiwi", "trainer", "bench", "tools"])
def test_every_static_import_of_the_library_resolves(folder):
    """Imports inside functions run only when a node runs: a stale path (a moved module) must fail here."""
    bad = []
    for path, line, module, names in _imports(folder):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            bad.append(f"{path.relative_to(ROOT)}:{line}: {module}: {e}")
            continue
        for name in names:
            if not hasattr(mod, name) and importlib.util.find_spec(f"{module}.{name}") is None:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} has no {name}")
    assert not bad, "\n".join(bad)


def test_nodes_use_no_string_importer():
    for path in sorted((ROOT / "nodes").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "import_module" not in text and "__import__" not in text, path.name


COMMAND_LINE = ("comfy_kiwi.cli", "comfy_kiwi.edit_command", "comfy_kiwi.memory.plan_command",
                "comfy_kiwi.judging.judge_command", "comfy_kiwi.toy.command", "comfy_kiwi.toy.plugin")


def test_the_trainer_does_not_import_the_command_line():
    found = [f"{p.relative_to(ROOT)}:{line}: {m}" for p, line, m, _ in _imports("trainer")
             if m.startswith(COMMAND_LINE)]
    assert not found, found
