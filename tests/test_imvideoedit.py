"""ImVideoEdit modules on a tiny Wan DiT: exact identity at start, frozen base keys, save/attach, video inference."""

from __future__ import annotations

import pytest
import torch

from comfy_kiwi.errors import CheckpointError, InputError
from comfy_kiwi.methods import imvideoedit as ive
from comfy_kiwi.testing.tiny_dit import tiny_dit


def inputs(frames=1, batch=2, h=6, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 16, frames, h, w, generator=g), torch.randn(batch, 16, frames, h, w, generator=g),
            torch.rand(batch, generator=g) * 1000, torch.randn(batch, 7, 32, generator=g))


def perturb(adapter, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_zero_init_equals_base_model_exactly():
    dit = tiny_dit(seed=2)
    src, tgt, t, ctx = inputs()
    paired = (torch.cat([src, tgt]), torch.cat([torch.zeros_like(t), t]), torch.cat([ctx, ctx]))
    adapter = ive.attach(dit)
    adapter.enabled = False
    base = dit(*paired)
    adapter.enabled = True
    assert torch.equal(dit(*paired), base)                      # bit-identical on the same batch
    adapter.enabled = False
    target_only = dit(tgt, t, ctx)
    adapter.enabled = True
    assert torch.allclose(ive.paired_velocity(dit, src, tgt, t, ctx), target_only, atol=1e-5)


def test_both_halves_change_after_training():
    """Eq. 10 updates all 2B rows: once the zero linears move, source and target outputs both leave the base's."""
    dit = tiny_dit(seed=2)
    src, tgt, t, ctx = inputs()
    paired = (torch.cat([src, tgt]), torch.cat([torch.zeros_like(t), t]), torch.cat([ctx, ctx]))
    adapter = ive.attach(dit)
    adapter.enabled = False
    base = dit(*paired)
    adapter.enabled = True
    perturb(adapter)
    out = dit(*paired)
    assert not torch.allclose(out[2:], base[2:], atol=1e-3)     # the target half is edited
    assert not torch.allclose(out[:2], base[:2], atol=1e-3)     # and so is the source stream (Eq. 10, all rows)


def test_state_dict_keys_of_dit_unchanged_and_adapter_saved_separately(tmp_path):
    dit = tiny_dit()
    keys = list(dit.state_dict())
    adapter = ive.attach(dit)
    assert list(dit.state_dict()) == keys
    perturb(adapter)
    path = adapter.save(tmp_path / "ive.safetensors")
    from safetensors.torch import load_file
    saved = load_file(str(path))
    assert all(k.startswith("imvideoedit.blocks.") for k in saved) and "imvideoedit.blocks.1.zero_2.weight" in saved

    src, tgt, t, ctx = inputs()
    expected = ive.paired_velocity(dit, src, tgt, t, ctx)
    fresh = tiny_dit()
    ive.attach(fresh, path)
    assert torch.equal(ive.paired_velocity(fresh, src, tgt, t, ctx), expected)
    ive.attach(tiny_dit(), {k[len("imvideoedit."):]: v for k, v in saved.items()})   # prefix optional


def test_wrong_weights_and_inputs_are_clear_errors(tmp_path):
    dit = tiny_dit()
    with pytest.raises(CheckpointError, match="do not fit this DiT"):
        ive.attach(dit, {"imvideoedit.blocks.0.ln1.weight": torch.ones(3)})
    ive.attach(dit)
    src, tgt, t, ctx = inputs(batch=1)
    with pytest.raises(InputError, match="paired batch"):
        dit(tgt, t, ctx)
    with pytest.raises(InputError, match="same shape"):
        ive.paired_velocity(dit, src[:, :, :, :4], tgt, t, ctx)


def test_detach_restores_plain_model():
    dit = tiny_dit()
    src, tgt, t, ctx = inputs(batch=1)
    before = dit(tgt, t, ctx)
    adapter = ive.attach(dit)
    perturb(adapter)
    adapter.detach()
    assert torch.equal(dit(tgt, t, ctx), before)


def test_video_inference_applies_the_modules_per_frame():
    """Trained on 1-frame pairs; at inference every frame of the source video feeds its own target frame."""
    dit = tiny_dit(seed=5)
    adapter = ive.attach(dit)
    perturb(adapter)
    src, _, _, ctx = inputs(frames=3, batch=1)
    out = ive.sample(dit, src, ctx, steps=3, seed=1, progress=False)
    assert out.shape == src.shape and torch.isfinite(out).all()
    # the 2D operator folds frames into the batch: changing frame 2 of the source leaves the 2D branch of
    # frame 0 alone, but the 3D self-attention still mixes frames, so only check the run is deterministic
    assert torch.equal(ive.sample(dit, src, ctx, steps=3, seed=1, progress=False), out)


def test_gradient_checkpointing_gives_the_same_gradients():
    from trainer.methods.imvideoedit import enable_gradient_checkpointing
    grads = []
    for ckpt in (False, True):
        dit = tiny_dit(seed=3).requires_grad_(False)
        torch.manual_seed(0)                                 # the gate MLP starts from torch's default init
        adapter = ive.attach(dit).requires_grad_(True)
        perturb(adapter)
        if ckpt:
            enable_gradient_checkpointing(dit)
        src, tgt, t, ctx = inputs()
        ive.paired_velocity(dit, src, tgt, t, ctx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k


def test_loader_node(tmp_path):
    from comfy_kiwi.models.dit_lora import DiTHandle
    from nodes.imvideoedit import NODE_CLASS_MAPPINGS
    dit = tiny_dit()
    torch.manual_seed(0)
    adapter = ive.attach(dit)
    perturb(adapter)
    src, tgt, t, ctx = inputs()
    expected = ive.paired_velocity(dit, src, tgt, t, ctx)
    path = adapter.save(tmp_path / "ive.safetensors")
    adapter.detach()
    plain = dit(tgt, t, ctx)

    node = NODE_CLASS_MAPPINGS["KiwiImVideoEditLoader"]
    assert node.CATEGORY == "Kiwi Edit/ImVideoEdit"
    (handle,) = node().load(str(path), DiTHandle(dit))
    assert torch.equal(dit(tgt, t, ctx), plain)                 # the shared DiT is not hooked outside applied()
    with handle.applied():
        assert torch.equal(ive.paired_velocity(dit, src, tgt, t, ctx), expected)
    assert torch.equal(dit(tgt, t, ctx), plain)
    bad = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(CheckpointError, match="not an ImVideoEdit weights file"):
        node().load(str(bad), DiTHandle(dit))
