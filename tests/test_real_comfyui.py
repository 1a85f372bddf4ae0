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
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

import comfy_harness as H

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run these tests")]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
START_TIMEOUT, RUN_TIMEOUT = 300, 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: dict | None = None, timeout: float = 30):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:          # ComfyUI answers validation errors with 400 + JSON
        return e.code, json.loads(e.read() or b"null")


def _log_tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from comfy_kiwi.testing.tiny_release import write_tiny_models_dir
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfy-kiwi").symlink_to(ROOT, target_is_directory=True)
    models = write_tiny_models_dir(base / "models")
    H.write_judge_models(base / "models")
    H.write_method_models(models)
    H.write_inputs(base / "input")
    (base / "output").mkdir()
    port, log = _free_port(), base / "comfyui.log"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
           "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=COMFYUI, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} while starting:\n{_log_tail(log)}")
            try:
                if _request(url + "/system_stats", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT} s:\n{_log_tail(log)}")
            time.sleep(1)
        yield {"url": url, "base": base, "log": log, "models": models}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def object_info(server):
    status, info = _request(server["url"] + "/object_info", timeout=120)
    assert status == 200
    return info


def test_object_info_lists_every_kiwi_node(object_info):
    ours = set(H.load_pack(ROOT).NODE_CLASS_MAPPINGS)
    missing = ours - set(object_info)
    assert not missing, f"not registered in ComfyUI: {sorted(missing)}"
    for name in ours:
        assert object_info[name]["category"].startswith("Kiwi Edit")


def _submit(server, prompt: dict) -> tuple[int, dict]:
    return _request(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})


def _wait(server, prompt_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        _, hist = _request(f"{server['url']}/history/{prompt_id}")
        entry = (hist or {}).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and \
                entry["status"].get("status_str") in ("success", "error"):
            return entry
        time.sleep(1)
    pytest.fail(f"prompt {prompt_id} did not finish within {RUN_TIMEOUT} s:\n{_log_tail(server['log'])}")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs_in_comfyui(server, object_info, path):
    prompt = H.ui_to_prompt(json.loads(path.read_text()), object_info)
    status, answer = _submit(server, prompt)
    assert status == 200 and answer.get("node_errors") == {}, json.dumps(answer, indent=2)[:3000]
    entry = _wait(server, answer["prompt_id"])
    messages = json.dumps(entry["status"].get("messages"), indent=1)[-3000:]
    assert entry["status"]["status_str"] == "success", messages + "\n" + _log_tail(server["log"])
    saved = [item for out in entry["outputs"].values() for key in ("images", "videos", "gifs", "animated")
             for item in (out.get(key) or []) if isinstance(item, dict) and "filename" in item]
    assert saved, f"nothing saved: {entry['outputs']}"
    for nid, node in prompt.items():         # Preview as Text shows its value in the UI
        if node["class_type"] == "PreviewAny":
            assert entry["outputs"][nid]["text"], f"PreviewAny #{nid} showed nothing"
    for item in saved:                       # previews go to temp/, saved files to output/
        folder = "temp" if item.get("type") == "temp" else "output"
        assert (server["base"] / folder / item.get("subfolder", "") / item["filename"]).exists()


def test_a_wrong_model_is_refused_with_our_message(server, object_info):
    wf = json.loads((ROOT / "workflows" / "kiwi_all_parts.json").read_text())
    prompt = H.ui_to_prompt(wf, object_info)
    loader = next(n for n in prompt.values() if n["class_type"] == "KiwiVAELoader")
    loader["inputs"]["vae_name"] = "kiwi_tiny_dit.safetensors"     # not in models/vae
    status, answer = _submit(server, prompt)
    assert status == 400 and answer["node_errors"], answer
    assert "was not found" in json.dumps(answer["node_errors"])
