"""Layer 3: the node pack as ComfyUI sees it — import, definitions, validation messages, caching, memory."""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

import pytest
import torch

import comfy_harness as H

ROOT = Path(__file__).resolve().parents[1]
OWN_MODULES = ("load_release", "load_parts", "lora", "prepare_frames", "mllm_encode", "source_encode", "sampler",
               "long_video", "decode")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models = H.setup_environment(tmp_path_factory.mktemp("comfy"))
    return {"models": models, "pack": H.load_pack(ROOT)}


def test_pack_imports_like_comfyui_without_shadowing(env):
    pack = env["pack"]
    assert pack.__name__ == str(ROOT).replace(".", "_x_")
    assert pack.NODE_CLASS_MAPPINGS and set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    # our nodes/ is imported under the pack's name: a top-level "nodes" would shadow ComfyUI's own module
    assert f"{pack.__name__}.nodes" in sys.modules
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        assert cls.__module__.startswith(f"{pack.__name__}.nodes."), cls.__module__
    # and the installed distribution holds the library and the trainer under its own name, no top-level nodes/trainer
    setup_py = (ROOT / "setup.py").read_text()
    assert 'find_packages(include=["comfy_kiwi", "comfy_kiwi.*"])' in setup_py
    assert 'TRAINER = "comfy_kiwi_trainer"' in setup_py


def _check_spec(node: str, name: str, spec) -> list[str]:
    problems = []
    if not isinstance(spec, tuple) or not 1 <= len(spec) <= 2:
        return [f"{node}.{name}: spec must be a (type, options) tuple"]
    kind, opts = spec[0], (spec[1] if len(spec) == 2 else {})
    if not (isinstance(kind, str) or isinstance(kind, list)):
        problems.append(f"{node}.{name}: type must be a string or a list of choices")
    if not str(opts.get("tooltip", "")).strip():
        problems.append(f"{node}.{name}: no tooltip")
    if kind in ("INT", "FLOAT"):
        if "default" not in opts:
            problems.append(f"{node}.{name}: no default")
        elif not opts.get("min", -float("inf")) <= opts["default"] <= opts.get("max", float("inf")):
            problems.append(f"{node}.{name}: default {opts['default']} outside [{opts.get('min')}, {opts.get('max')}]")
        if kind == "INT" and not all(isinstance(opts.get(k, 0), int) for k in ("default", "min", "max")):
            problems.append(f"{node}.{name}: INT bounds must be ints")
    if kind == "BOOLEAN" and not isinstance(opts.get("default"), bool):
        problems.append(f"{node}.{name}: BOOLEAN needs a bool default")
    if kind == "STRING" and not isinstance(opts.get("default", ""), str):
        problems.append(f"{node}.{name}: STRING default must be a string")
    if isinstance(kind, list) and "default" in opts and kind and opts["default"] not in kind:
        problems.append(f"{node}.{name}: default {opts['default']!r} not among the choices")
    return problems


def test_every_node_is_well_formed(env):
    problems = []
    for node, cls in env["pack"].NODE_CLASS_MAPPINGS.items():
        if not node.startswith("Kiwi"):
            problems.append(f"{node}: id must start with 'Kiwi'")
        if not str(getattr(cls, "CATEGORY", "")).startswith("Kiwi Edit"):
            problems.append(f"{node}: CATEGORY must start with 'Kiwi Edit'")
        if not str(getattr(cls, "DESCRIPTION", "")).strip():
            problems.append(f"{node}: no DESCRIPTION")
        types_ = cls.INPUT_TYPES()
        if not set(types_) <= {"required", "optional", "hidden"}:
            problems.append(f"{node}: INPUT_TYPES sections {sorted(types_)}")
        names = []
        for section in ("required", "optional"):
            for name, spec in types_.get(section, {}).items():
                problems += _check_spec(node, name, spec)
                names.append(name)
        returns = cls.RETURN_TYPES
        if not isinstance(returns, tuple) or not all(isinstance(t, str) and t for t in returns):
            problems.append(f"{node}: RETURN_TYPES must be a tuple of type names")
        if len(getattr(cls, "RETURN_NAMES", returns)) != len(returns):
            problems.append(f"{node}: RETURN_NAMES and RETURN_TYPES differ in length")
        fn = getattr(cls, cls.FUNCTION, None)
        if not callable(fn):
            problems.append(f"{node}: FUNCTION {cls.FUNCTION!r} is not a method")
            continue
        params = inspect.signature(fn).parameters
        required = {p for p, v in params.items() if v.default is inspect.Parameter.empty and p != "self"}
        if not required <= set(types_.get("required", {})) and not any(
                v.kind == inspect.Parameter.VAR_KEYWORD for v in params.values()):
            problems.append(f"{node}: {cls.FUNCTION}() requires {sorted(required - set(types_['required']))}")
        if not set(names) <= set(params) and not any(v.kind == inspect.Parameter.VAR_KEYWORD for v in params.values()):
            problems.append(f"{node}: {cls.FUNCTION}() does not take {sorted(set(names) - set(params))}")
    assert not problems, "\n".join(problems)


def test_custom_types_are_ours(env):
    """KIWI_* everywhere between our nodes; only IMAGE crosses to native nodes (no fake LATENT/MODEL)."""
    pack = env["pack"]
    for name in OWN_MODULES:
        for cls in sys.modules[f"{pack.__name__}.nodes.{name}"].NODE_CLASS_MAPPINGS.values():
            types_ = [spec[0] for sec in cls.INPUT_TYPES().values() for spec in sec.values()] + list(cls.RETURN_TYPES)
            for t in types_:
                assert isinstance(t, list) or t.startswith("KIWI_") or t in ("IMAGE", "INT", "FLOAT", "STRING",
                                                                             "BOOLEAN"), (cls.__name__, t)


def test_model_lists_show_the_tiny_models(env):
    classes = env["pack"].NODE_CLASS_MAPPINGS
    releases = classes["KiwiReleaseLoader"].INPUT_TYPES()["required"]["release"][0]
    assert releases == sorted(env["models"].releases[k].name for k in env["models"].releases)
    dits = classes["KiwiDiTLoader"].INPUT_TYPES()["required"]["dit_name"][0]
    assert "kiwi_tiny_dit.safetensors" in dits and "kiwi release: kiwi-edit-5b-instruct-only-diffusers" in dits
    assert "qwen2.5-vl-tiny" in classes["KiwiMLLMLoader"].INPUT_TYPES()["required"]["mllm_name"][0]
    # the method workflows' VIVA / RVEDiT weights in models/loras/ are listed by their own loaders only
    assert classes["KiwiLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0] == ["none", "kiwi_tiny_lora.safetensors"]


def test_loader_validation_messages(env):
    c = env["pack"].NODE_CLASS_MAPPINGS
    assert c["KiwiVAELoader"].VALIDATE_INPUTS("wan2.2_vae.safetensors") is True
    assert c["KiwiDiTLoader"].VALIDATE_INPUTS("kiwi release: kiwi-edit-5b-reference-only-diffusers") is True
    msg = c["KiwiVAELoader"].VALIDATE_INPUTS("kiwi_missing.safetensors")
    assert "'kiwi_missing.safetensors' was not found" in msg and "Press R" in msg
    msg = c["KiwiReleaseLoader"].VALIDATE_INPUTS("no-such-release")
    assert "was not found" in msg
    lora = c["KiwiLoraLoader"]
    assert lora.VALIDATE_INPUTS("none") is True and lora.VALIDATE_INPUTS("kiwi_tiny_lora.safetensors") is True


def test_mllm_loader_with_base_folder_and_training_checkpoint(env):
    from comfy_kiwi.testing.tiny_qwen import write_tiny_training_checkpoint
    ckpt = env["models"].parts["dit"].parent / "kiwi_tiny_stage3.safetensors"
    write_tiny_training_checkpoint(ckpt)
    try:
        loader = env["pack"].NODE_CLASS_MAPPINGS["KiwiMLLMLoader"]
        assert loader.VALIDATE_INPUTS("qwen2.5-vl-tiny", ckpt.name) is True
        (mllm,) = loader().load("qwen2.5-vl-tiny", ckpt.name, "auto", "auto")
        assert mllm.source_info["kind"] == "qwen-base+kiwi-checkpoint" and mllm.config.has_reference
    finally:
        ckpt.unlink()


def _frames(n, h=64, w=64):
    return torch.rand(n, h, w, 3)


def test_frame_and_size_errors_name_the_fix(env):
    c = env["pack"].NODE_CLASS_MAPPINGS
    (_, vae, _) = c["KiwiReleaseLoader"]().load("kiwi-edit-5b-instruct-reference-diffusers", "auto", "auto", "auto")
    encode = c["KiwiEncodeSource"]()
    with pytest.raises(Exception, match=r"6 frames.*4k\+1.*5 and 9.*Kiwi Prepare Frames"):
        encode.encode(vae, _frames(6), "model default", False)
    with pytest.raises(Exception, match=r"72×64.*multiples of 32.*Kiwi Prepare Frames"):
        encode.encode(vae, _frames(5, 64, 72), "model default", False)
    with pytest.raises(Exception, match=r"reference input holds 2 images"):
        encode.encode(vae, _frames(5), "model default", False, reference=_frames(2, 40, 40))
    prep = c["KiwiPrepareFrames"]()
    with pytest.raises(Exception, match=r"not a valid count.*77 and 81"):
        prep.prepare(_frames(80, 32, 32), 921600, 0, "error")
    out, n, w, h = prep.prepare(_frames(80, 40, 70), 921600, 0, "trim")
    assert (n, w, h) == (77, 64, 32) and tuple(out.shape) == (77, 32, 64, 3)
    # a reference of another size than the source is fitted onto the source canvas
    (src,) = encode.encode(vae, _frames(5), "first", False, reference=_frames(1, 40, 100))
    assert src.reference_latents.shape[3:] == src.source_latents.shape[3:] and src.reference_first is True


def test_sampler_refuses_mismatched_parts(env):
    c = env["pack"].NODE_CLASS_MAPPINGS
    dit, vae, mllm = c["KiwiReleaseLoader"]().load("kiwi-edit-5b-instruct-reference-diffusers", "auto", "auto", "auto")
    only_dit, _, only_mllm = c["KiwiReleaseLoader"]().load("kiwi-edit-5b-instruct-only-diffusers", "auto", "auto",
                                                           "auto")
    frames = _frames(5)
    (cond,) = c["KiwiMLLMEncode"]().encode(mllm, frames, "make it red", False)
    (src,) = c["KiwiEncodeSource"]().encode(vae, frames, "model default", False, reference=_frames(1, 64, 64))
    sampler = c["KiwiSampler"]()
    with pytest.raises(Exception, match=r"not trained with references.*Disconnect the reference"):
        sampler.sample(only_dit, cond, src, 0, 2, 5.0, 1.0, 1.0, "kiwi")
    with pytest.raises(Exception, match=r"cfg is 2 .*encode_negative"):
        sampler.sample(dit, cond, src, 0, 2, 5.0, 2.0, 1.0, "kiwi")
    with pytest.raises(Exception, match=r"instruction is empty"):
        c["KiwiMLLMEncode"]().encode(mllm, frames, "   ", False)
    with pytest.raises(Exception, match=r"no reference branch"):
        c["KiwiMLLMEncode"]().encode(only_mllm, frames, "make it red", False, reference=_frames(1))
    (cond2,) = c["KiwiMLLMEncode"]().encode(mllm, frames, "make it red", True)
    (latent,) = sampler.sample(dit, cond2, src, 0, 2, 5.0, 2.0, 1.0, "diffusers")
    assert latent.shape == src.source_latents.shape



def test_sampler_block_swap_is_exact_and_auto_is_off_on_cpu(env):
    c = env["pack"].NODE_CLASS_MAPPINGS
    dit, vae, mllm = c["KiwiReleaseLoader"]().load("kiwi-edit-5b-instruct-reference-diffusers", "auto", "auto", "auto")
    frames = _frames(5)
    (cond,) = c["KiwiMLLMEncode"]().encode(mllm, frames, "make it red", False)
    (src,) = c["KiwiEncodeSource"]().encode(vae, frames, "model default", False)
    sampler = c["KiwiSampler"]()
    (plain,) = sampler.sample(dit, cond, src, 0, 2, 5.0, 1.0, 1.0, "kiwi", block_swap=0)
    (swapped,) = sampler.sample(dit, cond, src, 0, 2, 5.0, 1.0, 1.0, "kiwi", block_swap=2)
    assert torch.equal(plain, swapped)
    assert sampler.swap_count(dit, src, "cpu", -1, False) == 0
    assert all(p.device.type == "cpu" for p in dit.model.parameters())


def test_long_video_node_covers_every_frame(env):
    c = env["pack"].NODE_CLASS_MAPPINGS
    dit, vae, mllm = c["KiwiReleaseLoader"]().load("kiwi-edit-5b-instruct-only-diffusers", "auto", "auto", "auto")
    node = c["KiwiLongVideoEdit"]()
    (out,) = node.edit(dit, vae, mllm, _frames(13), "make it red", 5, 921600, 0, 1, 5.0, 1.0, "kiwi")
    assert out.shape == (13, 64, 64, 3)          # windows 0-4, 4-8, 8-12 sharing their boundary frames
    with pytest.raises(Exception, match="4k"):
        node.edit(dit, vae, mllm, _frames(13), "make it red", 6, 921600, 0, 1, 5.0, 1.0, "kiwi")

def test_models_are_cached_and_reloaded_when_files_change(env):
    from comfy_kiwi.comfyui.model_cache import default_cache
    loader = env["pack"].NODE_CLASS_MAPPINGS["KiwiVAELoader"]()
    (a,) = loader.load("wan2.2_vae.safetensors", "auto", "auto")
    (b,) = loader.load("wan2.2_vae.safetensors", "auto", "auto")
    assert a is b
    (c32,) = loader.load("wan2.2_vae.safetensors", "fp16", "auto")
    assert c32 is not a and c32.encoder.conv1.weight.dtype == torch.float16
    assert not any(k.source.endswith("wan2.2_vae.safetensors") and ("dtype", "torch.float32") in k.options
                   for k in default_cache.keys()), "a superseded copy should be dropped"
    path = env["models"].parts["vae"]
    path.touch()
    import os
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    (d,) = loader.load("wan2.2_vae.safetensors", "fp16", "auto")
    assert d is not c32


def test_register_model_folder_keeps_existing_entries(monkeypatch, tmp_path):
    from comfy_kiwi.comfyui import adapter as comfy_adapter
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "models")
    fake.folder_names_and_paths = {"kiwi": (["/custom/kiwi"], set())}

    def add_model_folder_path(name, path, is_default=False):
        paths = fake.folder_names_and_paths.setdefault(name, ([], set()))[0]
        if path not in paths:
            paths.append(path)

    fake.add_model_folder_path = add_model_folder_path
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert comfy_adapter.register_model_folder("kiwi") is True
    assert comfy_adapter.register_model_folder("kiwi") is True
    assert fake.folder_names_and_paths["kiwi"][0] == ["/custom/kiwi", str(tmp_path / "models" / "kiwi")]


def test_stage_moves_model_and_sends_it_home(monkeypatch):
    """on_device moves a model to the compute device for one stage and back home afterwards, asking
    ComfyUI's memory manager for room first (the moves are recorded: there is no GPU here)."""
    from comfy_kiwi.comfyui import adapter as comfy_adapter, placement
    calls = []
    monkeypatch.setattr(comfy_adapter, "free_memory", lambda n, d: calls.append(("free", n, str(d))))
    monkeypatch.setattr(comfy_adapter, "soft_empty_cache", lambda: calls.append(("empty",)))

    class Recorder(torch.nn.Linear):
        def to(self, device):
            calls.append(("to", str(device)))
            return self

    model = Recorder(4, 4)
    with placement.on_device(model, "cuda:0") as dev:
        assert str(dev) == "cuda:0"
    assert [c[0] for c in calls] == ["free", "to", "to", "empty"]
    assert calls[0][1] >= placement.module_bytes(model) and calls[1] == ("to", "cuda:0") and calls[2] == ("to", "cpu")
    calls.clear()
    with placement.on_device(model, "cpu"):
        pass
    assert calls == []          # already home: nothing moves
