"""Each loader of a file in models/loras/ lists only the files it reads (DiT LoRA, VIVA, RVEDiT, ImVideoEdit
weights), told apart by their safetensors headers and re-read only when a file changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import comfy_harness as H
from comfy_kiwi.comfyui import adapter as comfy_adapter, model_folders
from comfy_kiwi.methods import imvideoedit, viva
from comfy_kiwi.methods.rvedit_streams import RVEDiTStreams
from comfy_kiwi.testing.tiny_qwen import TINY_HIDDEN
from comfy_kiwi.testing.tiny_release import tiny_dit_lora, tiny_kiwi_dit

ROOT = Path(__file__).resolve().parents[1]
LOADERS = {"KiwiLoraLoader": ("lora_name", "lora"), "KiwiVIVALoader": ("weights_name", "viva"),
           "KiwiRVEDiTLoader": ("weights_name", "rvedit"), "KiwiImVideoEditLoader": ("weights_name", "imvideoedit")}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    folder = models / "loras"
    (folder / "sub").mkdir(parents=True)
    dit = tiny_kiwi_dit(seed=1)
    save_file(tiny_dit_lora(dit), str(folder / "sub" / "dit_lora.safetensors"))
    viva.save_viva(folder / "viva.safetensors", dit, viva.attach_viva(tiny_kiwi_dit(seed=1), TINY_HIDDEN))
    RVEDiTStreams.for_dit(tiny_kiwi_dit(seed=1)).save(folder / "rvedit.safetensors")
    imvideoedit.attach(tiny_kiwi_dit(seed=1)).save(folder / "imvideoedit.safetensors")
    save_file({"decoder.conv1.weight": torch.zeros(2, 2)}, str(folder / "not_a_lora.safetensors"))
    (folder / "broken.safetensors").write_bytes(b"\x00" * 12)
    comfy_adapter.set_models_dir(models)
    yield folder
    comfy_adapter.set_models_dir(None)


def test_each_loader_lists_only_its_own_files(loras):
    expected = {"lora": ["sub/dit_lora.safetensors"], "viva": ["viva.safetensors"],
                "rvedit": ["rvedit.safetensors"], "imvideoedit": ["imvideoedit.safetensors"]}
    classes = H.load_pack(ROOT).NODE_CLASS_MAPPINGS
    for node, (widget, kind) in LOADERS.items():
        listed = [n for n in classes[node].INPUT_TYPES()["required"][widget][0] if n != "none"]
        assert listed == expected[kind], (node, listed)


def test_a_changed_file_is_read_again(loras):
    path = loras / "changing.safetensors"
    save_file({"rvedit.video_embedder.patch_embedding.weight": torch.zeros(1)}, str(path))
    assert model_folders.weights_kind("changing.safetensors") == "rvedit"
    save_file(tiny_dit_lora(tiny_kiwi_dit(seed=1)), str(path))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))    # a later write, even on coarse clocks
    assert model_folders.weights_kind("changing.safetensors") == "lora"
    assert "changing.safetensors" in model_folders.choices("lora")
    assert "changing.safetensors" not in model_folders.choices("rvedit")
    path.unlink()
