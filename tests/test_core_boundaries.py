"""Who may import whom: the core (models/, sampling/, pipeline.py) knows no method and no toy world;
the real paths reach the toy world only through the folder-kind registry; toy/ uses only public names
of testing/. Plus the registry itself: a registered kind is what load_vae, describe and edit consult."""

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "comfy_kiwi"
CORE = [*sorted((PACKAGE / "models").rglob("*.py")), *sorted((PACKAGE / "sampling").rglob("*.py")),
        PACKAGE / "pipeline.py"]


def imported_modules(path: Path, root: Path = ROOT):
    """(line, absolute module, names) of every import in the file, inside functions too; relative imports
    resolved; ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name counted as well."""
    package = ".".join(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = importlib.util.resolve_name("." * node.level + module, package)
            yield node.lineno, module.rstrip("."), [a.name for a in node.names]
            for a in node.names:                 # `from comfy_kiwi import methods` names the package too
                yield node.lineno, f"{module.rstrip('.')}.{a.name}", []
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value, []


def _imports_of(paths, packages):
    return [f"{p.relative_to(ROOT)}:{line}: {module}" for p in paths for line, module, _ in imported_modules(p)
            if module in packages or module.startswith(tuple(f"{x}." for x in packages))]


def test_the_core_imports_no_method_and_no_toy():
    assert len(CORE) > 5 and all(p.is_file() for p in CORE)
    found = _imports_of(CORE, ("comfy_kiwi.methods", "comfy_kiwi.toy"))
    assert not found, "the core must not name a method or the toy world:\n" + "\n".join(found)


# a core that names no paper: no identifier (name, attribute, argument, keyword, def or class) of the core may
# name a method or one of its parts; a method attaches its pieces (a source strategy, a per-step context hook)
METHOD_WORDS = ("viva", "refiner", "rvedit", "imvideoedit", "instructx")


def identifiers(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        for name in (getattr(node, "id", None), getattr(node, "attr", None), getattr(node, "arg", None),
                     getattr(node, "name", None) if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else None):
            if isinstance(name, str):
                yield node.lineno, name


def test_the_core_names_no_method_in_its_code():
    found = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in CORE for line, name in identifiers(p)
             if any(word in name.lower() for word in METHOD_WORDS)]
    assert not found, "the core must not name a method (attach a strategy or hook instead):\n" + "\n".join(found)


def test_the_identifier_scan_sees_attributes_and_keywords(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f(cond):\n    return g(cond.refiner, viva_mask=1)\n")
    assert {n for _, n in identifiers(probe)} >= {"refiner", "viva_mask", "cond", "f"}


def test_the_scan_sees_imports_inside_functions(tmp_path):
    """The scanner itself: a late, relative import inside a function is found."""
    sub = tmp_path / "comfy_kiwi" / "models"
    sub.mkdir(parents=True)
    probe = sub / "probe.py"
    probe.write_text("def f():\n    from ..methods.viva_source import X\n    import comfy_kiwi.toy.world\n")
    modules = [m for _, m, _ in imported_modules(probe, tmp_path)]
    assert "comfy_kiwi.methods.viva_source" in modules and "comfy_kiwi.toy.world" in modules


def test_real_paths_reach_the_toy_world_only_through_the_registry():
    outside = [p for p in sorted(PACKAGE.rglob("*.py"))
               if not p.is_relative_to(PACKAGE / "toy") and not p.is_relative_to(PACKAGE / "testing")]
    found = _imports_of(outside, ("comfy_kiwi.toy",))
    assert not found, "\n".join(found)
    from comfy_kiwi.loading.registry import BUILTIN_PLUGINS
    assert "comfy_kiwi.toy.plugin" in BUILTIN_PLUGINS


def test_toy_uses_no_private_name_of_testing():
    found = [f"{p.relative_to(ROOT)}:{line}: {module}.{name}" for p in sorted((PACKAGE / "toy").rglob("*.py"))
             for line, module, names in imported_modules(p) if module.startswith("comfy_kiwi.testing")
             for name in names if name.startswith("_")]
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------

def test_the_toy_world_is_a_registered_kind():
    from comfy_kiwi.loading.registry import default_model_kind, model_folder_kind, vae_folder_kind
    from comfy_kiwi.toy.release import DEFAULT_MODEL_DIR
    kind = default_model_kind()
    assert kind is not None and kind.name == "kiwi-toy" and kind.default_model == DEFAULT_MODEL_DIR
    if (DEFAULT_MODEL_DIR / "vae").is_dir():
        assert model_folder_kind(DEFAULT_MODEL_DIR) is kind
        assert vae_folder_kind(DEFAULT_MODEL_DIR / "vae") is kind
    assert model_folder_kind(ROOT / "docs") is None and model_folder_kind(ROOT / "README.md") is None


def test_loaders_and_info_consult_a_registered_kind(tmp_path, monkeypatch):
    from comfy_kiwi.loading import registry
    from comfy_kiwi.loading.inspect import describe
    from comfy_kiwi.loading.vae_loader import load_vae
    registry.kinds()                                         # built-ins first, then the probe kind
    marker = "probe-kind.txt"
    folder = tmp_path / "model"
    (folder / "vae").mkdir(parents=True)
    (folder / "vae" / marker).write_text("")
    codec = torch.nn.Identity()
    kind = registry.FolderKind(
        name="probe", is_model_folder=lambda p: (p / "vae" / marker).is_file(),
        load_pipeline=lambda p, device, dtype: ("pipeline", p), describe=lambda p: {"kind": "probe", "path": str(p)},
        is_vae_folder=lambda p: (p / marker).is_file(), load_vae=lambda p, device: codec)
    monkeypatch.setitem(registry._KINDS, "probe", kind)
    assert describe(folder) == {"kind": "probe", "path": str(folder)}
    assert load_vae(folder) is codec and load_vae(folder / "vae") is codec
    assert registry.model_folder_kind(folder) is kind
    with pytest.raises(TypeError, match="FolderKind"):
        registry.register({"name": "not a kind"})


def test_edit_runs_a_registered_kinds_pipeline_and_hooks(tmp_path, monkeypatch, capsys):
    """`edit --model FOLDER` of a registered kind: its pipeline, its frame preparation, every kind's report."""
    import json

    from comfy_kiwi.cli import main
    from comfy_kiwi.loading import registry
    from comfy_kiwi.pipeline import EditResult
    registry.kinds()
    calls = []

    class Pipe:
        def edit(self, frames, instruction, refs, settings):
            calls.append(("edit", float(frames.mean())))
            return EditResult(frames, None, None, settings)

    folder = tmp_path / "probe_model"
    folder.mkdir()
    (folder / "probe.txt").write_text("")
    hooks = registry.EditHooks(prepare_frames=lambda f: torch.zeros_like(f),
                               report=lambda video, instruction, refs, edited: {"probe_report": instruction})
    kind = registry.FolderKind(name="probe", is_model_folder=lambda p: (p / "probe.txt").is_file(),
                               load_pipeline=lambda p, device, dtype: calls.append(("load", p)) or Pipe(),
                               describe=lambda p: {}, edit=hooks)
    monkeypatch.setitem(registry._KINDS, "probe", kind)
    video = ROOT / "comfy_kiwi" / "toy" / "examples" / "toy_scene.mp4"
    out = tmp_path / "out.mp4"
    assert main(["edit", "--model", str(folder), "--video", str(video), "--instruction", "probe it",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert calls[0] == ("load", folder) and calls[1] == ("edit", 0.0)       # prepared frames reached the pipe
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["probe_report"] == "probe it" and out.is_file()
