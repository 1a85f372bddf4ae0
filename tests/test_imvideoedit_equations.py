"""ImVideoEdit Eqs. 3–10, one test each, against independent re-computations on a tiny Wan DiT.

The module records its intermediates in ``PredictUpdate.trace``; each test recomputes one equation from
the recorded inputs of that equation with code written here (Φ by explicit loops, LayerNorm by
``torch.nn.functional``), so changing any one equation in comfy_kiwi/methods/imvideoedit.py fails the test
that names it. The mutation tried for each test is in its docstring.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from comfy_kiwi.methods import imvideoedit as ive
from comfy_kiwi.models.wan_dit import rope_tables
from comfy_kiwi.testing.tiny_dit import tiny_dit

B, FRAMES, H, W = 2, 2, 4, 6           # latent grid; patch (1, 2, 2) → tokens f 2, h 2, w 3
BLOCK = 1


def phi_ref(t, grid):
    """Φ by loops: row (b, frame) = [source frame | target frame] side by side, h × 2w."""
    f, h, w = grid
    b = t.shape[0] // 2
    rows = []
    for i in range(b):
        for fi in range(f):
            sl = slice(fi * h * w, (fi + 1) * h * w)
            src, tgt = t[i, sl].reshape(h, w, -1), t[b + i, sl].reshape(h, w, -1)
            rows.append(torch.cat([src, tgt], dim=1).reshape(h * 2 * w, -1))
    return torch.stack(rows)


def phi_inv_ref(t, grid):
    f, h, w = grid
    b = t.shape[0] // f
    out = torch.empty(2 * b, f * h * w, t.shape[-1], dtype=t.dtype)
    for i in range(b):
        for fi in range(f):
            img = t[i * f + fi].reshape(h, 2 * w, -1)
            sl = slice(fi * h * w, (fi + 1) * h * w)
            out[i, sl] = img[:, :w].reshape(h * w, -1)
            out[b + i, sl] = img[:, w:].reshape(h * w, -1)
    return out


def ln(norm, x):
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)


def joint_2d_attention_ref(attn, norm, t, grid, cfg):
    """Φ⁻¹(Attn(LN(Φ(t)))) with Φ by loops and the 2D RoPE of the h × 2w joint grid at frame 0."""
    rope = rope_tables(cfg, 1, grid[1], 2 * grid[2])
    return phi_inv_ref(attn(ln(norm, phi_ref(t, grid)).to(t.dtype), rope), grid)


def attached_dit(g):
    """A tiny DiT with ImVideoEdit attached and every adapter weight moved off its initial value."""
    dit = tiny_dit(seed=3)
    torch.manual_seed(0)
    adapter = ive.attach(dit)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return dit, adapter


def traced_run(seed=0):
    """A perturbed adapter on a tiny DiT; returns (module of BLOCK with its trace, grid, cfg, the output of
    that block's self-attention as the DiT saw it, the DiT with the paired context it was given)."""
    g = torch.Generator().manual_seed(seed)
    dit, adapter = attached_dit(g)
    module = adapter.blocks[BLOCK]
    module.trace = {}
    seen = {}
    dit.blocks[BLOCK].self_attn.register_forward_hook(lambda m, a, out: seen.update(out=out))   # after the adapter's
    src, tgt = torch.randn(B, 16, FRAMES, H, W, generator=g), torch.randn(B, 16, FRAMES, H, W, generator=g)
    t = torch.rand(B, generator=g) * 1000
    ctx = torch.randn(2 * B, 5, 32, generator=g)            # a different caption per row: row alignment shows
    dit(torch.cat([src, tgt]), torch.cat([torch.zeros_like(t), t]), ctx)
    grid = (FRAMES, H // 2, W // 2)
    return module, grid, dit.config, seen["out"], (dit, ctx)


def test_phi_is_the_joint_side_by_side_layout():
    """Mutation tried: target on the left of the source in ``phi`` → fails; ``phi_inv`` must undo it exactly."""
    grid = (2, 3, 4)
    t = torch.randn(4, 2 * 3 * 4, 5)
    assert torch.equal(ive.phi(t, grid), phi_ref(t, grid))
    assert torch.equal(ive.phi_inv(ive.phi(t, grid), grid), t)
    assert torch.equal(ive.phi_inv(phi_ref(t, grid), grid), phi_inv_ref(phi_ref(t, grid), grid))


def test_eq4_first_2d_attention_on_the_joint_layout():
    """Eq. 4: H_2D⁽¹⁾ = Φ⁻¹(Attn2D₁(LN₁(Φ(X)))), RoPE over the h × 2w joint grid at frame 0.
    Mutations tried: attention per image (h × w, no side-by-side) → fails; LN₁ dropped → fails."""
    m, grid, cfg, _, _ = traced_run()
    expected = joint_2d_attention_ref(m.attn2d_1, m.ln1, m.trace["x"], grid, cfg)
    torch.testing.assert_close(m.trace["h2d_1"], expected, atol=1e-5, rtol=1e-5)


def test_eq5_prediction_adds_the_zero_linear_of_h2d_to_h3d():
    """Eq. 5: H_pred = H_3D + ZeroLinear₁(H_2D⁽¹⁾). Mutation tried: H_pred = H_3D + H_2D⁽¹⁾ (no linear) → fails."""
    m, *_ = traced_run()
    tr = m.trace
    torch.testing.assert_close(tr["h_pred"], tr["h3d"] + F.linear(tr["h2d_1"], m.zero_1.weight, m.zero_1.bias))


def test_eq6_residual_is_prediction_minus_first_2d_output():
    """Eq. 6: H_res = H_pred − H_2D⁽¹⁾ on every row. Mutation tried: the former reading, target H_pred minus
    the source H_pred at the same position → fails (also in shape: B rows instead of 2B)."""
    m, *_ = traced_run()
    tr = m.trace
    assert tr["h_res"].shape == tr["h_pred"].shape
    torch.testing.assert_close(tr["h_res"], tr["h_pred"] - tr["h2d_1"], atol=0, rtol=0)


def test_eq7_second_2d_attention_on_the_joint_layout():
    """Eq. 7: H_diff = Φ⁻¹(Attn2D₂(LN₂(Φ(H_res)))) with the same joint operator as Eq. 4.
    Mutation tried: Attn2D₂ per target frame over h × w (the former code) → fails."""
    m, grid, cfg, _, _ = traced_run()
    expected = joint_2d_attention_ref(m.attn2d_2, m.ln2, m.trace["h_res"], grid, cfg)
    torch.testing.assert_close(m.trace["h_diff"], expected, atol=1e-5, rtol=1e-5)


def test_eq8_cross_attention_of_h_diff_to_each_rows_text():
    """Eq. 8: C = CrossAttn(LN₃(H_diff), text), each row reading its own embedded caption.
    Mutations tried: LN₃ dropped → fails; every row reading the target rows' text → fails."""
    m, *_ = traced_run()
    tr = m.trace
    assert tr["context"].shape[0] == tr["h_diff"].shape[0]
    expected = m.cross_attn(ln(m.ln3, tr["h_diff"]).to(tr["h_diff"].dtype), tr["context"])
    torch.testing.assert_close(tr["c"], expected, atol=1e-5, rtol=1e-5)
    rows = tr["h_diff"].shape[0]
    assert not torch.allclose(tr["context"][: rows // 2], tr["context"][rows // 2:])   # the test can tell rows apart


def test_eq8_text_is_the_dits_embedded_context_of_each_row():
    """The text of Eq. 8 is the DiT's ``text_embedding`` of the caption rows [source; target], in order.
    Mutation tried: the block hook storing the context of row 0 for all rows → fails."""
    m, _, _, _, (dit, ctx) = traced_run()
    torch.testing.assert_close(m.trace["context"], dit.embed_context(ctx, 2 * B))


def test_eq9_gate_is_sigmoid_of_mlp_of_c():
    """Eq. 9: G = sigmoid(MLP₂(C)). Mutations tried: tanh instead of sigmoid → fails; MLP₂ on H_diff → fails."""
    m, *_ = traced_run()
    tr = m.trace
    mlp = m.gate_mlp
    hidden = F.gelu(F.linear(tr["c"], mlp[0].weight, mlp[0].bias), approximate="tanh")
    torch.testing.assert_close(tr["gate"], torch.sigmoid(F.linear(hidden, mlp[2].weight, mlp[2].bias)))


def test_eq10_update_on_all_2b_rows_is_what_the_block_uses():
    """Eq. 10: H_update = H_pred + G ⊙ ZeroLinear₂(H_diff) on all 2B rows, replacing the block's
    self-attention output. Mutation tried: source rows left at H_3D (the former code) → fails."""
    m, _, _, seen, _ = traced_run()
    tr = m.trace
    expected = tr["h_pred"] + tr["gate"] * F.linear(tr["h_diff"], m.zero_2.weight, m.zero_2.bias)
    torch.testing.assert_close(seen, expected.to(seen.dtype), atol=0, rtol=0)
    assert not torch.allclose(seen[:B], tr["h3d"][:B], atol=1e-4)             # the source rows are updated


def _method():
    from trainer.methods.imvideoedit import ImVideoEditMethod
    return ImVideoEditMethod(SimpleNamespace(method=SimpleNamespace(options=None)))


def test_eq3_draws_t_uniform_on_0_1():
    """Eq. 3: t ~ U(0, 1), continuous and unshifted. Mutation tried: the base class's draws (1000-step
    schedule with shift 5: P(σ < 0.5) ≈ 0.17) → fails the CDF check."""
    method = _method()
    draws = method.draws({"target": torch.zeros(20000, 1)}, torch.Generator().manual_seed(0))
    t = draws["sigma"]
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() < 1
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs((t < q).float().mean().item() - q) < 0.015, q
    assert t.unique().numel() > 15000                       # continuous, not the 1000 schedule entries


def test_eq3_loss_is_target_velocity_mse_at_x_t():
    """Eq. 3: L = ‖v_θ(x_t, t | source) − (ε − x0)‖², x_t = (1 − t)·x0 + t·ε, DiT timestep 1000·t, target
    rows only. Mutations tried: x_t = t·x0 + (1 − t)·ε → fails; the loss over all 2B rows → fails."""
    from trainer.methods.imvideoedit import ImVideoEditModule
    g = torch.Generator().manual_seed(4)
    dit, adapter = attached_dit(g)
    x0, src = torch.randn(B, 16, 1, H, W, generator=g), torch.randn(B, 16, 1, H, W, generator=g)
    ctx = torch.randn(B, 5, 32, generator=g)
    draws = _method().draws({"target": x0}, g)
    loss = ImVideoEditModule(dit, adapter)({"target": x0, "source": src, "context": ctx}, draws)

    t, eps = draws["sigma"], draws["noise"]
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    full = dit(torch.cat([src, x_t]), torch.cat([torch.zeros(B), 1000 * t]), torch.cat([ctx, ctx]))
    expected = ((full[B:] - (eps - x0)) ** 2).mean()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)


def test_preset_carries_the_papers_recipe():
    """The preset is the paper's recipe: lr 1e-5, global batch 16, 5 epochs of 13K pairs, 480×832 buckets.
    Mutation tried: lr 1e-4 (the former value) → fails."""
    import math
    import tomllib
    from pathlib import Path

    from trainer.data.datasets import make_buckets
    path = Path(__file__).resolve().parents[1] / "trainer/presets/imvideoedit-wan2.1-1.3b.toml"
    cfg = tomllib.loads(path.read_text())
    s = cfg["schedule"]
    assert cfg["optimizer"]["lr"] == 1e-5
    assert s["batch_size"] * s["grad_accum"] == 16
    assert s["max_steps"] == math.ceil(5 * 13_000 / 16)
    d = cfg["data"]
    assert (832, 480) in make_buckets(d["resolution"], d["multiple"], d["max_aspect"])
