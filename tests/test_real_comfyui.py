"""Layer 4: the pack inside a real ComfyUI (skipped unless COMFYUI_PATH points at a ComfyUI checkout).

Starts ``main.py --cpu`` on 127.0.0.1 (a free port) with COMFYUI_PYTHON (default: this interpreter;
it needs ComfyUI's requirements and comfy_kiwi installed) and a temporary base directory holding
custom_nodes/comfy-kiwi (a symlink to this checkout), tiny models and tiny input files. Checks that
/object_info lists every Kiwi node, converts each workflow to the API format with the server's own
node definitions, submits it, expects ``node_errors == {}`` and a successful run. The server is
always stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import comfy_harness as H
import comfy_server as S

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run these tests")]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui-base")
    models = S.prepare_base(base)
    try:
        with S.running_server(base, COMFYUI) as srv:
            yield {**srv, "models": models}
    except S.ServerError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def object_info(server):
    status, info = S.request(server["url"] + "/object_info", timeout=120)
    assert status == 200
    return info


def test_object_info_lists_every_kiwi_node(object_info):
    ours = set(H.load_pack(ROOT).NODE_CLASS_MAPPINGS)
    missing = ours - set(object_info)
    assert not missing, f"not registered in ComfyUI: {sorted(missing)}"
    for name in ours:
        assert object_info[name]["category"].startswith("Kiwi Edit")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs_in_comfyui(server, object_info, path):
    prompt = H.ui_to_prompt(json.loads(path.read_text()), object_info)
    status, answer = S.submit(server, prompt)
    assert status == 200 and answer.get("node_errors") == {}, json.dumps(answer, indent=2)[:3000]
    entry = S.wait_history(server, answer["prompt_id"])
    messages = json.dumps(entry["status"].get("messages"), indent=1)[-3000:]
    assert entry["status"]["status_str"] == "success", messages + "\n" + S.log_tail(server["log"])
    saved = S.saved_files(entry)
    assert saved, f"nothing saved: {entry['outputs']}"
    for nid, node in prompt.items():         # Preview as Text shows its value in the UI
        if node["class_type"] == "PreviewAny":
            assert entry["outputs"][nid]["text"], f"PreviewAny #{nid} showed nothing"
    for item in saved:
        assert S.saved_path(server, item).exists()


def test_a_wrong_model_is_refused_with_our_message(server, object_info):
    wf = json.loads((ROOT / "workflows" / "kiwi_all_parts.json").read_text())
    prompt = H.ui_to_prompt(wf, object_info)
    loader = next(n for n in prompt.values() if n["class_type"] == "KiwiVAELoader")
    loader["inputs"]["vae_name"] = "kiwi_tiny_dit.safetensors"     # not in models/vae
    status, answer = S.submit(server, prompt)
    assert status == 400 and answer["node_errors"], answer
    assert "was not found" in json.dumps(answer["node_errors"])


def _comfy_native_dit(kiwi_dit_file: Path, out: Path) -> Path:
    """The trainer's base DiT (original Wan key names) with the ``config`` metadata ComfyUI's model detection
    reads for sizes its key shapes do not tell (a tiny DiT's head count, text width, frequency width)."""
    from safetensors.torch import load_file, save_file

    from comfy_kiwi.loading.dit_loader import load_dit
    cfg = load_dit(kiwi_dit_file, dtype=torch.float32).config
    meta = {"transformer": {"num_heads": cfg.num_heads, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim}}
    save_file(load_file(str(kiwi_dit_file)), str(out), metadata={"config": json.dumps(meta)})
    return out


def test_a_trainer_exported_lora_loads_in_comfyuis_own_lora_loader(tmp_path):
    """``python -m trainer export --to comfyui-lora`` → ComfyUI's LoRA code on ComfyUI's own Wan model: every
    key mapped (0 unmapped), every LoRA'd weight patched to W + alpha/rank · B·A."""
    from trainer.__main__ import main as trainer_main
    from trainer.config import load_config
    from trainer.loop import train
    from trainer_fixtures import tiny_preset, write_kiwi_data, write_kiwi_models
    models, data = write_kiwi_models(tmp_path / "models"), write_kiwi_data(tmp_path / "data", count=2)
    toml = tiny_preset("kiwi-lora-5b-480p", tmp_path / "run", models, data, optimizer={"lr": 2e-3},
                       schedule={"max_steps": 2, "grad_accum": 0}, checkpoint={"every": 1})
    train(load_config(toml), log=lambda *a: None)
    lora = tmp_path / "kiwi_lora.safetensors"
    assert trainer_main(["export", "--config", str(toml), "--to", "comfyui-lora", "--out", str(lora)]) == 0
    dit = _comfy_native_dit(models["dit"], tmp_path / "wan_dit.safetensors")
    cmd = [os.environ.get("COMFYUI_PYTHON", sys.executable), str(ROOT / "tests" / "comfy_native_lora.py"),
           COMFYUI, str(dit), str(lora), "0.8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print("ComfyUI LoraLoader:", json.dumps(result))
    assert result["unmapped"] == [], result
    assert result["loaded"] > 0 and result["patched"] == result["loaded"] == result["checked"], result
    assert result["max_abs_err"] < 1e-5, result
