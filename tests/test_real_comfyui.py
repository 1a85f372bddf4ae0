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
from pathlib import Path

import pytest

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
