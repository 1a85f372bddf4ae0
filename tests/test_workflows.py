"""Layer 3: every workflow in workflows/ runs end to end through the pack's NODE_CLASS_MAPPINGS on tiny models.

The pack is imported the way ComfyUI imports it; native video/image nodes are test doubles
(tests/comfy_harness.py). The committed JSON files must equal what tools/build_workflows.py writes.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import comfy_harness as H

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models = H.setup_environment(tmp_path_factory.mktemp("comfy"))
    pack = H.load_pack(ROOT)
    classes = {**pack.NODE_CLASS_MAPPINGS, **H.NATIVE_DOUBLES}
    return {"models": models, "pack": pack, "classes": classes, "defs": H.definitions(classes)}


def _load(name: str) -> dict:
    return json.loads((ROOT / "workflows" / name).read_text())


def test_there_are_the_six_workflows():
    names = {p.name for p in WORKFLOWS}
    assert {"kiwi_instruction_video_edit.json", "kiwi_reference_video_edit.json", "kiwi_image_edit.json",
            "kiwi_all_parts.json", "kiwi_reference_synthesis_then_edit.json", "kiwi_edit_then_judge.json"} <= names


def test_committed_workflows_match_the_builder(env):
    spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "tools" / "build_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    built = builder.build_all(env["pack"])
    for path in WORKFLOWS:
        assert json.loads(path.read_text()) == built[path.name], f"{path.name} is stale: run tools/build_workflows.py"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_format(path):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4 and {"nodes", "links", "groups", "config", "extra"} <= set(wf)
    ids = {n["id"] for n in wf["nodes"]}
    assert wf["last_node_id"] == max(ids) and wf["last_link_id"] == max(link[0] for link in wf["links"])
    for link_id, origin, o_slot, target, t_slot, typ in wf["links"]:
        src = next(n for n in wf["nodes"] if n["id"] == origin)
        dst = next(n for n in wf["nodes"] if n["id"] == target)
        assert link_id in src["outputs"][o_slot]["links"] and src["outputs"][o_slot]["type"] == typ
        assert dst["inputs"][t_slot]["link"] == link_id and dst["inputs"][t_slot]["type"] in (typ, "*")
    loaders = [n for n in wf["nodes"] if n["type"].startswith("Kiwi") and n["type"].endswith("Loader")
               and n["type"] not in ("KiwiLoraLoader", "KiwiToyModelLoader",       # the toy model is embedded
                                     "KiwiVIVALoader", "KiwiRVEDiTLoader",         # trained here, not downloaded
                                     "KiwiImVideoEditLoader")
               and n["widgets_values"][0] != "rvedit-dit.safetensors"]              # likewise (an RVEDiT run's DiT)
    if path.name.startswith("toy_"):
        assert any(n["type"] == "KiwiToyModelLoader" for n in wf["nodes"])
        return
    assert loaders
    for node in loaders:
        models = node["properties"].get("models")
        assert models, f"{node['type']} has no download hints"
        for m in models:
            assert set(m) == {"name", "url", "directory"} and m["url"].startswith("https://huggingface.co/")
            assert m["name"].endswith(".safetensors")


def _run(env, wf: dict) -> dict:
    prompt = H.ui_to_prompt(wf, env["defs"])
    return prompt, H.execute_prompt(prompt, env["classes"])


def _outputs_of(prompt, results, class_type):
    return [results[nid] for nid, node in prompt.items() if node["class_type"] == class_type]


@pytest.mark.parametrize("name", ["kiwi_instruction_video_edit.json", "kiwi_reference_video_edit.json",
                                  "kiwi_all_parts.json", "kiwi_reference_synthesis_then_edit.json",
                                  "kiwi_edit_then_judge.json", "kiwi_viva_edit.json", "kiwi_rvedit_edit.json",
                                  "kiwi_imvideoedit_edit.json"])
def test_video_workflow_runs(env, name):
    from comfy_kiwi.video_io import read_video
    before = len(H.SaveVideo.saved)
    prompt, results = _run(env, _load(name))
    (frames,) = _outputs_of(prompt, results, "KiwiVAEDecode")[0]
    assert tuple(frames.shape) == (5, 64, 64, 3) and frames.dtype.is_floating_point
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert len(H.SaveVideo.saved) == before + 1
    video, fps = read_video(H.SaveVideo.saved[-1])
    assert video.shape[0] == 5 and float(fps) == 8.0          # the source's frame rate is kept


def test_imvideoedit_workflow_is_the_library_edit(env):
    """The shipped ImVideoEdit workflow gives the latents of imvideoedit_pipeline.edit_with_imvideoedit (what
    `python -m comfy_kiwi edit --imvideoedit` runs) with the library's default sampling settings (steps, shift,
    schedule; text_len 512, as Wan) on the workflow's own models, frames, caption and seed."""
    from comfy_kiwi.methods.imvideoedit_pipeline import edit_with_imvideoedit
    from comfy_kiwi.pipeline import EditSettings
    prompt, results = _run(env, _load("kiwi_imvideoedit_edit.json"))

    def output(class_type):
        return _outputs_of(prompt, results, class_type)[0][0]

    def inputs(class_type):
        return next(n["inputs"] for n in prompt.values() if n["class_type"] == class_type)

    prep, sampler = inputs("KiwiPrepareFrames"), inputs("KiwiImVideoEditSampler")
    settings = EditSettings(seed=sampler["seed"], max_pixels=prep["max_pixels"], num_frames=prep["num_frames"],
                            progress=False)
    expected = edit_with_imvideoedit(output("KiwiDiTLoader").model, output("KiwiVAELoader"), output("KiwiUMT5Loader"),
                                     output("KiwiImVideoEditLoader").weights, output("GetVideoComponents"),
                                     inputs("KiwiUMT5Encode")["caption"], settings)
    latents = output("KiwiImVideoEditSampler")
    assert latents.shape == (1, 16, 2, 8, 8) and torch.equal(latents, expected.latents)


def test_image_workflow_runs(env):
    before = len(H.SaveImage.saved)
    prompt, results = _run(env, _load("kiwi_image_edit.json"))
    (frames,) = _outputs_of(prompt, results, "KiwiVAEDecode")[0]
    assert tuple(frames.shape) == (1, 64, 96, 3)
    assert len(H.SaveImage.saved) == before + 1 and H.SaveImage.saved[-1].exists()


def test_parts_workflow_with_lora_and_training_checkpoint(env):
    """The same graph with loose files: a Kiwi training checkpoint, a LoRA, a Qwen folder + checkpoint is
    not needed (the release MLLM stays); results differ from the run without LoRA."""
    wf = _load("kiwi_all_parts.json")
    prompt = H.ui_to_prompt(wf, env["defs"])
    plain = H.execute_prompt(prompt, env["classes"])
    for node in prompt.values():
        if node["class_type"] == "KiwiDiTLoader":
            node["inputs"]["dit_name"] = "kiwi_tiny_dit.safetensors"
    base = H.execute_prompt(prompt, env["classes"])
    for node in prompt.values():
        if node["class_type"] == "KiwiLoraLoader":
            node["inputs"]["lora_name"] = "kiwi_tiny_lora.safetensors"
    with_lora = H.execute_prompt(prompt, env["classes"])
    latent = {k: _outputs_of(prompt, r, "KiwiSampler")[0][0] for k, r in
              (("plain", plain), ("base", base), ("lora", with_lora))}
    assert latent["plain"].shape == latent["base"].shape == latent["lora"].shape
    assert not latent["base"].equal(latent["lora"])
    # the cached DiT is untouched by the LoRA run: sampling again without it gives the same latents
    for node in prompt.values():
        if node["class_type"] == "KiwiLoraLoader":
            node["inputs"]["lora_name"] = "none"
    again = H.execute_prompt(prompt, env["classes"])
    assert _outputs_of(prompt, again, "KiwiSampler")[0][0].equal(latent["base"])


def test_user_error_surfaces_as_a_clear_message(env):
    """A VAE file put into diffusion_models and picked in the DiT loader is refused at validation,
    naming the loader it belongs to; a file that vanished is named with the folders searched."""
    parts = env["models"].parts
    misplaced = parts["dit"].parent / "misplaced_vae.safetensors"
    shutil.copy(parts["vae"], misplaced)
    wf = _load("kiwi_all_parts.json")
    prompt = H.ui_to_prompt(wf, env["defs"])
    for node in prompt.values():
        if node["class_type"] == "KiwiDiTLoader":
            node["inputs"]["dit_name"] = "misplaced_vae.safetensors"
    try:
        with pytest.raises(H.WorkflowError) as e:
            H.execute_prompt(prompt, env["classes"])
    finally:
        misplaced.unlink()
    msg = str(e.value)
    assert "'misplaced_vae.safetensors' is a Wan VAE, not a Wan DiT" in msg and "Kiwi VAE Loader" in msg
    with pytest.raises(H.WorkflowError) as e:
        H.execute_prompt(prompt, env["classes"])
    assert "'misplaced_vae.safetensors' was not found in" in str(e.value) and "diffusion_models" in str(e.value)


def test_reference_with_an_instruction_only_release_is_explained(env):
    wf = _load("kiwi_reference_video_edit.json")
    prompt = H.ui_to_prompt(wf, env["defs"])
    for node in prompt.values():
        if node["class_type"] == "KiwiReleaseLoader":
            node["inputs"]["release"] = "kiwi-edit-5b-instruct-only-diffusers"
    with pytest.raises(H.WorkflowError) as e:
        H.execute_prompt(prompt, env["classes"])
    assert "no reference branch" in str(e.value) and "instruct-reference" in str(e.value)


def test_reference_synthesis_workflow_outputs(env):
    """The tiny VLM answers gibberish: Kiwi Ground falls back to the whole photo (on_failure = whole image),
    the quality check reports -1 (on_failure = report), and the edit runs with the synthesised reference."""
    import math
    H.PreviewAny.shown.clear()
    prompt, results = _run(env, _load("kiwi_reference_synthesis_then_edit.json"))
    mask, box, answers = _outputs_of(prompt, results, "KiwiGround")[0]
    assert tuple(mask.shape) == (1, 96, 128) and isinstance(box, str) and isinstance(answers, str)
    bbox = json.loads(box)["bbox"]
    assert 0 <= bbox[0] < bbox[2] <= 128 and 0 <= bbox[1] < bbox[3] <= 96
    ref, used = _outputs_of(prompt, results, "KiwiReferenceFromMask")[0]
    assert ref.ndim == 4 and ref.shape[0] == 1 and ref.shape[-1] == 3 and used.shape == (1, 96, 128)
    if json.loads(box).get("fallback"):
        assert tuple(ref.shape) == (1, 96 + 32, 128 + 32, 3) and bool((mask == 1).all())   # margin 16
    score, passed, _ = _outputs_of(prompt, results, "KiwiReferenceQuality")[0]
    assert (score == -1.0 and passed is False) or 1.0 <= score <= 10.0
    assert H.PreviewAny.shown == [score] and math.isfinite(score)
    assert tuple(_outputs_of(prompt, results, "KiwiVAEDecode")[0][0].shape) == (5, 64, 64, 3)


def test_edit_then_judge_workflow_outputs(env):
    import math
    H.PreviewAny.shown.clear()
    prompt, results = _run(env, _load("kiwi_edit_then_judge.json"))
    scores_json, overall, answers = _outputs_of(prompt, results, "KiwiJudge")[0]
    scores = json.loads(scores_json)
    assert scores["rubric"] == "vie-bench" and isinstance(answers, str)
    assert (overall == -1.0 and scores["ok"] is False) or 0.0 <= overall <= 10.0
    rewards = _outputs_of(prompt, results, "KiwiRewards")[0]
    assert len(rewards) == 5 and all(isinstance(r, float) and math.isfinite(r) for r in rewards)
    r_if, r_sp, pickscore, weighted, _ = rewards
    assert weighted == pytest.approx(r_if + r_sp, abs=1e-5) and pickscore != 0.0   # PickScore model connected
    assert H.PreviewAny.shown[0] == scores_json and H.PreviewAny.shown[1:] == [weighted, r_if, r_sp, pickscore]


def test_judge_loaders_list_their_folders_and_explain_wrong_ones(env):
    classes = env["classes"]
    vlm, clip = classes["KiwiVLMLoader"], classes["KiwiCLIPLoader"]
    assert H.JUDGE_VLM in vlm.INPUT_TYPES()["required"]["vlm_name"][0]
    assert set(H.JUDGE_CLIPS) <= set(clip.INPUT_TYPES()["required"]["clip_name"][0])
    assert vlm.VALIDATE_INPUTS(H.JUDGE_VLM) is True and clip.VALIDATE_INPUTS("PickScore_v1") is True
    missing = vlm.VALIDATE_INPUTS("Qwen2.5-VL-72B-Instruct")
    assert "'Qwen2.5-VL-72B-Instruct' was not found in" in missing and "text_encoders" in missing
    assert "load it with Kiwi VLM Loader" in clip.VALIDATE_INPUTS(str(env["models"].parts["mllm"]))
    assert "load it with Kiwi CLIP / PickScore Loader" in vlm.VALIDATE_INPUTS(
        str(env["models"].models_dir / "clip_vision" / "PickScore_v1"))
    release = vlm.VALIDATE_INPUTS(str(env["models"].releases["instruct-only"]))
    assert "Kiwi-Edit release" in release and "hf download Qwen/" in release
    assert "no model selected" in clip.VALIDATE_INPUTS("none")
