"""Layer 4: the pack inside a real ComfyUI (skipped unless COMFYUI_PATH points at a ComfyUI checkout).

Starts ``main.py --cpu`` on 127.0.0.1 (a free port) with COMFYUI_PYTHON (default: this interpreter;
it needs ComfyUI's requirements and comfy_kiwi installed) and a temporary base directory holding
custom_nodes/comfy-kiwi (a symlink to this checkout), tiny models and tiny input files. Checks that
/object_info lists every Kiwi node, converts each workflow to the API format with the server's own
node definitions, submits it, expects ``node_errors == {}`` and a successful run. The server is
always stopped. Interop with ComfyUI's own nodes: its VAE Decode / Encode, Latent Multiply and Save Latent
on Kiwi latents, its LoRA code on a trainer-exported LoRA, its progress bar and cancel (websocket
``progress`` messages and ``/interrupt``).
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


def _run_prompt(server, prompt: dict) -> dict:
    status, answer = S.submit(server, prompt)
    assert status == 200 and answer.get("node_errors") == {}, json.dumps(answer, indent=2)[:3000]
    entry = S.wait_history(server, answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", \
        json.dumps(entry["status"].get("messages"), indent=1)[-3000:] + "\n" + S.log_tail(server["log"])
    return entry


def _saved_image(server, entry, node_id: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image
    item = entry["outputs"][node_id]["images"][0]
    return torch.from_numpy(np.array(Image.open(S.saved_path(server, item)))).float()


def test_comfyuis_own_vae_decodes_kiwi_latents(server, object_info):
    """Native Load VAE + VAE Encode → LATENT → Kiwi latent → Kiwi VAE Decode gives the same picture as
    Kiwi latent → LATENT → Latent Multiply (×1) → native VAE Decode: the two scales convert exactly.
    A Wan2.1 layout VAE (ComfyUI reads its width from the file; its Wan2.2 VAE width is fixed at the
    released 160, too big for a test)."""
    from dataclasses import replace

    from comfy_kiwi.models.wan_vae import WAN21_VAE, WanVAE
    from comfy_kiwi.testing.tiny_vae import randomize_, write_original_file
    name = "wan2.1_tiny_vae.safetensors"
    write_original_file(randomize_(WanVAE(replace(WAN21_VAE, dim=8, decoder_dim=8)), 4).eval(),
                        server["base"] / "models" / "vae" / name)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "kiwi_source.png"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": name}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 0]}},
        "4": {"class_type": "KiwiVAELoader", "inputs": {"vae_name": name, "dtype": "fp32", "device": "auto"}},
        "5": {"class_type": "KiwiLatentFromLATENT", "inputs": {"vae": ["4", 0], "latent": ["3", 0]}},
        "6": {"class_type": "KiwiVAEDecode", "inputs": {"vae": ["4", 0], "latent": ["5", 0], "tiled": False}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "interop/kiwi_decode"}},
        "8": {"class_type": "KiwiLatentToLATENT", "inputs": {"vae": ["4", 0], "kiwi_latent": ["5", 0]}},
        "9": {"class_type": "LatentMultiply", "inputs": {"samples": ["8", 0], "multiplier": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["2", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "interop/native"}},
    }
    entry = _run_prompt(server, prompt)
    kiwi_img, native_img = _saved_image(server, entry, "7"), _saved_image(server, entry, "11")
    assert kiwi_img.shape == native_img.shape == (80, 96, 3)
    assert kiwi_img.std() > 5                                     # a picture, not a flat field
    assert (kiwi_img - native_img).abs().max() <= 1, (kiwi_img - native_img).abs().max()


def test_a_kiwi_sampler_latent_goes_through_comfyuis_latent_nodes(server, object_info):
    """The edit latent of the all-parts workflow → LATENT → Save Latent and Latent Multiply → back → Kiwi VAE
    Decode: ComfyUI's latent nodes take it, and the saved latent is the raw-scale Wan2.2 latent."""
    from safetensors.torch import load_file
    prompt = H.ui_to_prompt(json.loads((ROOT / "workflows" / "kiwi_all_parts.json").read_text()), object_info)
    ids = {node["class_type"]: nid for nid, node in prompt.items()}
    vae, sampler = [ids["KiwiVAELoader"], 0], [ids["KiwiSampler"], 0]
    prompt.update({
        "100": {"class_type": "KiwiLatentToLATENT", "inputs": {"vae": vae, "kiwi_latent": sampler}},
        "101": {"class_type": "SaveLatent", "inputs": {"samples": ["100", 0], "filename_prefix": "latents/kiwi"}},
        "102": {"class_type": "LatentMultiply", "inputs": {"samples": ["100", 0], "multiplier": 1.0}},
        "103": {"class_type": "KiwiLatentFromLATENT", "inputs": {"vae": vae, "latent": ["102", 0]}},
        "104": {"class_type": "KiwiVAEDecode", "inputs": {"vae": vae, "latent": ["103", 0], "tiled": False}},
        "105": {"class_type": "SaveImage", "inputs": {"images": ["104", 0], "filename_prefix": "interop/roundtrip"}},
    })
    entry = _run_prompt(server, prompt)
    saved = sorted((server["base"] / "output" / "latents").glob("kiwi*.latent"))
    latent = load_file(str(saved[-1]))["latent_tensor"]
    assert latent.ndim == 5 and latent.shape[1] == 48, latent.shape
    assert entry["outputs"]["105"]["images"]


class _Listener:
    """ComfyUI's websocket messages for one client id, collected by tests/comfy_ws_listen.py."""

    def __init__(self, server):
        import threading
        import uuid
        self.client_id, self.messages = str(uuid.uuid4()), []
        cmd = [os.environ.get("COMFYUI_PYTHON", sys.executable), str(ROOT / "tests" / "comfy_ws_listen.py"),
               server["url"], self.client_id]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda m: m["type"] == "connected", 60)

    def _read(self):
        for line in self.proc.stdout:
            self.messages.append(json.loads(line))

    def wait_for(self, accept, timeout: float) -> dict:
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((m for m in list(self.messages) if accept(m)), None)
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no such websocket message within {timeout} s; got {self.messages[-5:]}")

    def progress(self, prompt_id: str) -> dict[str, list[tuple[int, int]]]:
        """{node id: [(value, max), ...]} of the prompt's progress messages."""
        out: dict = {}
        for m in self.messages:
            if m["type"] == "progress" and m["data"].get("prompt_id") == prompt_id:
                out.setdefault(m["data"]["node"], []).append((m["data"]["value"], m["data"]["max"]))
        return out

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def listener(server):
    lst = _Listener(server)
    yield lst
    lst.close()


def _fresh_prompt(object_info, workflow: str, tag: str) -> dict:
    """A shipped workflow's prompt with new widget values on its Kiwi nodes, so nothing comes from ComfyUI's
    cache and every node runs again."""
    prompt = H.ui_to_prompt(json.loads((ROOT / "workflows" / workflow).read_text()), object_info)
    for node in prompt.values():
        inputs = node["inputs"]
        if isinstance(inputs.get("instruction"), str):
            inputs["instruction"] = f"{inputs['instruction']} ({tag})"
        if node["class_type"] == "KiwiEncodeSource":
            inputs["reference_position"] = "first" if inputs["reference_position"] != "first" else "last"
        if "seed" in inputs and not isinstance(inputs["seed"], list):
            inputs["seed"] = inputs["seed"] + 1 + len(tag)
    return prompt


LONG_NODES = ("KiwiMLLMEncode", "KiwiEncodeSource", "KiwiSampler", "KiwiVAEDecode", "KiwiJudge", "KiwiVIVAEncode",
              "KiwiVIVASampler", "KiwiImVideoEditSampler")


@pytest.mark.parametrize("workflow", ["kiwi_all_parts.json", "kiwi_edit_then_judge.json", "kiwi_viva_edit.json",
                                      "kiwi_imvideoedit_edit.json"])
def test_long_nodes_report_progress_on_comfyuis_bar(server, object_info, listener, workflow):
    prompt = _fresh_prompt(object_info, workflow, "progress")
    status, answer = S.submit(server, prompt, listener.client_id)
    assert status == 200 and answer.get("node_errors") == {}, answer
    entry = S.wait_history(server, answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", S.log_tail(server["log"])
    listener.wait_for(lambda m: m["type"] == "executing" and m["data"].get("node") is None, 30)
    progress = listener.progress(answer["prompt_id"])
    for nid, node in prompt.items():
        if node["class_type"] not in LONG_NODES:
            continue
        steps = progress.get(nid)
        assert steps, f"{node['class_type']} #{nid} sent no progress; progress came from {sorted(progress)}"
        value, total = steps[-1]
        assert value == total > 0, (node["class_type"], steps)
        if node["class_type"] in ("KiwiSampler", "KiwiImVideoEditSampler"):
            assert total == node["inputs"]["steps"], steps


def test_comfyuis_cancel_stops_a_long_sampling_run(server, object_info, listener):
    prompt = _fresh_prompt(object_info, "kiwi_all_parts.json", "interrupt")
    sampler = next(nid for nid, n in prompt.items() if n["class_type"] == "KiwiSampler")
    prompt[sampler]["inputs"]["steps"] = 1000
    status, answer = S.submit(server, prompt, listener.client_id)
    assert status == 200, answer
    pid = answer["prompt_id"]
    listener.wait_for(lambda m: m["type"] == "progress" and m["data"].get("node") == sampler
                      and m["data"]["prompt_id"] == pid and m["data"]["value"] >= 2, S.RUN_TIMEOUT)
    assert S.request(server["url"] + "/interrupt", {})[0] == 200
    entry = S.wait_history(server, pid, timeout=120)
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    done = max(v for v, _ in listener.progress(pid)[sampler])
    assert done < 1000, f"the sampler ran {done} of 1000 steps after cancel"
