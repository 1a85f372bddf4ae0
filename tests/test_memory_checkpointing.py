"""``dit.gradient_checkpointing``: same loss and gradients, blocks recomputed only while training."""

import torch

from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_dit


def _grads(dit, inputs):
    dit.zero_grad()
    loss = dit(**inputs).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in dit.named_parameters() if p.grad is not None}


def test_checkpointing_gives_the_same_gradients_and_recomputes_blocks():
    dit = tiny_dit("2.1", seed=6).train()
    inputs = random_inputs(dit, batch=2)
    loss, grads = _grads(dit, inputs)
    calls = []
    hook = dit.blocks[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    dit.gradient_checkpointing = True
    loss_ckpt, grads_ckpt = _grads(dit, inputs)
    assert len(calls) == 2                              # forward + recomputation in backward
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    assert all(torch.allclose(grads[k], grads_ckpt[k], atol=1e-6, rtol=1e-5) for k in grads)
    calls.clear()
    dit.eval()                                          # the flag only acts in training mode
    with torch.no_grad():
        dit(**inputs)
    hook.remove()
    assert len(calls) == 1
