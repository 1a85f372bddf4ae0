"""``python -m trainer export``: a trained Kiwi run becomes a release folder that ``python -m comfy_kiwi edit``
and the release loader read (with the trained weights), a Kiwi training checkpoint, or a ComfyUI LoRA."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from comfy_kiwi.testing.tiny_release import tiny_video_frames
from trainer.__main__ import main as trainer_main
from trainer.config import load_config
from trainer.loop import train
from trainer_fixtures import tiny_preset, write_kiwi_data, write_kiwi_models, one_thread  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return root, write_kiwi_models(root / "models"), write_kiwi_data(root / "data", count=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def run(tiny, preset, name, **overrides):
    root, models, data = tiny
    toml = tiny_preset(preset, root / name, models, data, optimizer={"lr": 2e-3},
                       schedule={"max_steps": 2, "grad_accum": 0}, checkpoint={"every": 1}, **overrides)
    cfg = load_config(toml)
    return toml, cfg, train(cfg, log=lambda *a: None)["module"]


def test_release_export_edits_with_the_trained_weights(tiny, tmp_path):
    from comfy_kiwi.cli import main as kiwi_main
    from comfy_kiwi.frames import tensor_to_pil
    from comfy_kiwi.mllm.lora import merge_lora
    from comfy_kiwi.pipeline import EditPipeline
    toml, cfg, module = run(tiny, "kiwi-stage3", "stage3")
    out = tmp_path / "release"
    assert trainer_main(["export", "--config", str(toml), "--to", "release", "--out", str(out),
                         "--weights", str(cfg.output_dir / "kiwi.safetensors")]) == 0

    pipe = EditPipeline.from_pretrained(out, dtype=torch.float32, device="cpu")
    for k, v in module.dit.state_dict().items():
        assert torch.equal(pipe.dit.state_dict()[k], v), k
    assert pipe.dit.reference_first is False and pipe.dit.ref_embedder is not None
    frames = tiny_video_frames(5, 64, 64)
    merge_lora(module.mllm)
    module.mllm.eval()
    with torch.no_grad():
        ours = module.mllm.encode("Turn the square red.", frames)
        theirs = pipe.mllm.encode("Turn the square red.", frames)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)

    image = tmp_path / "src.png"
    tensor_to_pil(frames[0]).save(image)
    assert kiwi_main(["edit", "--model", str(out), "--video", str(image), "--instruction", "Turn the square red.",
                      "--out", str(tmp_path / "edited.png"), "--steps", "2", "--device", "cpu"]) == 0
    assert (tmp_path / "edited.png").is_file()

    # a mid-run checkpoint exported under the Kiwi training-checkpoint names = the final file's tensors
    kiwi = tmp_path / "step2.safetensors"
    assert trainer_main(["export", "--config", str(toml), "--to", "kiwi", "--out", str(kiwi)]) == 0
    final, exported = load_file(str(cfg.output_dir / "kiwi.safetensors")), load_file(str(kiwi))
    assert set(final) == set(exported) and all(torch.equal(final[k], exported[k]) for k in final)


def test_lora_run_exports_comfyui_lora_and_merged_release(tiny, tmp_path):
    from comfy_kiwi.loading.dit_loader import load_dit
    from comfy_kiwi.models.dit_lora import DiTHandle, load_dit_lora
    toml, cfg, module = run(tiny, "kiwi-lora-5b-480p", "lora")
    lora_file = tmp_path / "lora.safetensors"
    assert trainer_main(["export", "--config", str(toml), "--to", "comfyui-lora", "--out", str(lora_file)]) == 0
    assert set(load_file(str(lora_file))) == set(load_file(str(cfg.output_dir / "kiwi-dit-lora.safetensors")))
    out = tmp_path / "merged"
    assert trainer_main(["export", "--config", str(toml), "--to", "release", "--out", str(out)]) == 0
    merged = load_dit(out, dtype=torch.float32)
    base = load_dit(cfg.model.dit, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, 2, 4, 4, generator=g)
    ctx = torch.randn(1, 5, merged.config.dim, generator=g)
    src = torch.randn(1, 48, 2, 4, 4, generator=g)
    with torch.no_grad():
        expect = merged(x, torch.tensor([500.0]), ctx, source_latents=src)
        with DiTHandle(base).with_lora(load_dit_lora(lora_file), 1.0).applied():
            got = base(x, torch.tensor([500.0]), ctx, source_latents=src)
    assert torch.allclose(got, expect, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(merged.blocks[0].self_attn.q.weight, base.blocks[0].self_attn.q.weight)


def test_outputs_load_in_the_nodes(tiny, tmp_path):
    """A stage-3 kiwi.safetensors in models/diffusion_models/ loads in the DiT loader and (with the Qwen base
    folder) in the MLLM loader; the LoRA run's kiwi-dit-lora.safetensors in models/loras/ in the LoRA loader."""
    import shutil
    from pathlib import Path

    import comfy_harness as H
    models = H.setup_environment(tmp_path / "comfy")
    pack = H.load_pack(Path(__file__).resolve().parents[1])
    _, cfg, module = run(tiny, "kiwi-stage3", "nodes-stage3")
    _, lora_cfg, _ = run(tiny, "kiwi-lora-5b-480p", "nodes-lora")
    ckpt = models.models_dir / "diffusion_models" / "kiwi_trained_stage3.safetensors"
    lora = models.models_dir / "loras" / "kiwi_trained_lora.safetensors"
    shutil.copy2(cfg.output_dir / "kiwi.safetensors", ckpt)
    shutil.copy2(lora_cfg.output_dir / "kiwi-dit-lora.safetensors", lora)
    try:
        nodes = pack.NODE_CLASS_MAPPINGS
        assert nodes["KiwiDiTLoader"].VALIDATE_INPUTS(ckpt.name) is True
        (dit,) = nodes["KiwiDiTLoader"]().load(ckpt.name, "auto", "auto", "auto")
        for k, v in module.dit.state_dict().items():
            assert torch.equal(dit.model.state_dict()[k].float(), v.float()), k
        (mllm,) = nodes["KiwiMLLMLoader"]().load("qwen2.5-vl-tiny", ckpt.name, "auto", "auto")
        assert mllm.source_info["kind"] == "qwen-base+kiwi-checkpoint"
        assert torch.equal(mllm.ref_queries.float(), module.mllm.ref_queries.detach().float())
        assert nodes["KiwiLoraLoader"].VALIDATE_INPUTS(lora.name) is True
        (with_lora,) = nodes["KiwiLoraLoader"]().apply(dit, lora.name, 1.0)
        assert len(with_lora.loras) == 1 and len(with_lora.loras[0][0].layers) == 10 * len(dit.model.blocks)
    finally:
        ckpt.unlink(missing_ok=True)
        lora.unlink(missing_ok=True)
