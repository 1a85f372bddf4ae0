"""A real ComfyUI server for the layer-4 tests (tests/test_real_comfyui.py, tests/test_browser_comfyui.py).

:func:`prepare_base` builds a ComfyUI base directory: custom_nodes/comfy-kiwi (a symlink to this checkout),
tiny stand-in models where the shipped workflows look, and tiny input files. :func:`running_server` starts
``main.py --cpu`` (COMFYUI_PYTHON, default this interpreter) on 127.0.0.1 at a free port and always stops it.
"""

from __future__ import annotations

import contextlib
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

import comfy_harness as H

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfy-kiwi"               # the custom_nodes folder name (the template browser's module name)
START_TIMEOUT, RUN_TIMEOUT = 300, 600


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, data: dict | None = None, timeout: float = 30):
    """(status, parsed JSON) of a GET (``data`` None) or JSON POST."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw or b"null") if "json" in resp.headers.get("Content-Type", "json")
                                 else raw)
    except urllib.error.HTTPError as e:          # ComfyUI answers validation errors with 400 + JSON
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, raw


def log_tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def prepare_base(base: Path):
    """custom_nodes/comfy-kiwi, tiny models, inputs and an output folder under ``base``; returns the
    TinyKiwiModels description."""
    from comfy_kiwi.testing.tiny_release import write_tiny_models_dir
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
    models = write_tiny_models_dir(base / "models")
    H.write_judge_models(base / "models")
    H.write_method_models(models)
    H.write_inputs(base / "input")
    (base / "output").mkdir()
    return models


@contextlib.contextmanager
def running_server(base: Path, comfyui: str, extra_args=()):
    """Yield ``{"url", "base", "log"}`` of a ComfyUI server on ``base``; stopped on exit."""
    port, log = free_port(), base / "comfyui.log"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
           "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:", *extra_args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=comfyui, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {proc.returncode} while starting:\n{log_tail(log)}")
            try:
                if request(url + "/system_stats", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"ComfyUI did not answer within {START_TIMEOUT} s:\n{log_tail(log)}")
            time.sleep(1)
        yield {"url": url, "base": base, "log": log}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def submit(server, prompt: dict, client_id: str | None = None) -> tuple[int, dict]:
    return request(server["url"] + "/prompt", {"prompt": prompt, "client_id": client_id or str(uuid.uuid4())})


def wait_history(server, prompt_id: str, timeout: float = RUN_TIMEOUT) -> dict:
    """The /history entry of ``prompt_id`` once it finished (success or error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, hist = request(f"{server['url']}/history/{prompt_id}")
        entry = (hist or {}).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and \
                entry["status"].get("status_str") in ("success", "error"):
            return entry
        time.sleep(1)
    raise ServerError(f"prompt {prompt_id} did not finish within {timeout} s:\n{log_tail(server['log'])}")


def saved_files(entry: dict) -> list[dict]:
    """The file entries ({filename, subfolder, type}) of a history entry's outputs."""
    return [item for out in entry["outputs"].values() for key in ("images", "videos", "gifs", "animated")
            for item in (out.get(key) or []) if isinstance(item, dict) and "filename" in item]


def saved_path(server, item: dict) -> Path:
    folder = "temp" if item.get("type") == "temp" else "output"     # previews go to temp/
    return server["base"] / folder / item.get("subfolder", "") / item["filename"]
