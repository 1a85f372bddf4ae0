"""Block swap: outputs equal the plain forward exactly, and few blocks are resident at once.

On this CPU-only machine compute and storage are both "cpu", but loading a block makes a real
copy, so residency is observable: a swapped block is on the "compute device" exactly when its
tensors are not the storage masters. A probe hook on every block counts resident blocks while
that block runs, independently of BlockSwap's own bookkeeping.
"""

import pytest
import torch

from comfy_kiwi.errors import InputError
from comfy_kiwi.memory import BlockSwap, block_swap, kv_cache
from comfy_kiwi.testing.tiny_dit import random_inputs, tiny_config, tiny_dit

LAYERS = 6


@pytest.fixture(scope="module")
def dit():
    return tiny_dit(config=tiny_config("2.1", num_layers=LAYERS), seed=9)


@pytest.fixture(scope="module")
def inputs(dit):
    return random_inputs(dit, batch=2)


def _storage_ptrs(block):
    return [t.untyped_storage().data_ptr() for t in (*block.parameters(), *block.buffers())]


def _probe(dit, swap, storage):
    """Pre-hooks that record, while each block runs, how many blocks hold compute copies."""
    seen = []

    def hook(i):
        def fn(mod, args):
            resident = sum(1 for j, b in enumerate(dit.blocks)
                           if j not in swap.swapped or _storage_ptrs(b) != storage[j])
            seen.append((i, resident, i in swap.swapped and _storage_ptrs(dit.blocks[i]) == storage[i]))
        return fn
    return seen, [b.register_forward_pre_hook(hook(i)) for i, b in enumerate(dit.blocks)]


@pytest.mark.parametrize("n,prefetch", [(2, False), (2, True), (4, True), (LAYERS, False), (LAYERS, True)])
def test_block_swap_is_exact_and_bounds_residency(dit, inputs, n, prefetch):
    with torch.no_grad():
        ref = dit(**inputs)
        swap = BlockSwap(dit, n, prefetch=prefetch).install()
        storage = {j: _storage_ptrs(dit.blocks[j]) for j in range(LAYERS)}
        seen, hooks = _probe(dit, swap, storage)
        try:
            out1, out2 = dit(**inputs), dit(**inputs)
        finally:
            for h in hooks:
                h.remove()
        after = [_storage_ptrs(dit.blocks[j]) == storage[j] for j in swap.swapped]
        swap.remove()
    assert torch.equal(out1, ref) and torch.equal(out2, ref)
    limit = LAYERS - n + (2 if prefetch else 1)
    worst = max(r for _, r, _ in seen)
    print(f"[block swap] N={n} prefetch={prefetch}: at most {worst} of {LAYERS} blocks resident "
          f"(bound {limit}); peak {swap.peak_resident_bytes} B; uploaded {swap.bytes_uploaded} B in 2 forwards")
    assert worst <= limit and swap.peak_resident_blocks <= limit
    assert not any(running_from_storage for *_, running_from_storage in seen)   # ran on compute copies
    assert all(after)                                   # all swapped blocks back on storage after a forward
    block_bytes = sum(t.numel() * t.element_size() for t in dit.blocks[0].parameters())
    assert swap.bytes_uploaded == 2 * n * block_bytes    # each swapped block uploaded once per forward
    if prefetch and n < LAYERS:
        assert worst == limit                           # prefetch really overlaps one extra block


def test_block_swap_with_kv_cache_over_steps(dit, inputs):
    with torch.no_grad():
        ref = [dit(**{**inputs, "timestep": t}) for t in (900.0, 500.0, 100.0)]
        with block_swap(dit, 3) as swap, kv_cache(dit) as cache:
            got = [dit(**{**inputs, "timestep": t}) for t in (900.0, 500.0, 100.0)]
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert cache.hits == 2 * (LAYERS + 1)               # swapping does not invalidate the cached K/V
    assert swap.resident_blocks == LAYERS - 3


def test_block_swap_rejects_bad_counts(dit):
    with pytest.raises(InputError, match="from 0 to the DiT's 6 blocks"):
        BlockSwap(dit, LAYERS + 1)
    with pytest.raises(InputError, match="whole number"):
        BlockSwap(dit, 1.5)
    with pytest.raises(InputError, match="no .blocks"):
        BlockSwap(torch.nn.Linear(2, 2), 1)
    with block_swap(dit, 0) as none:
        assert none is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (side-stream prefetch)")
def test_block_swap_on_cuda(dit, inputs):
    gpu = tiny_dit(config=tiny_config("2.1", num_layers=LAYERS), seed=9)
    with torch.no_grad():
        ref = gpu.cuda()(**{k: v.cuda() for k, v in inputs.items()})
        gpu.cpu()
        with block_swap(gpu, 4, compute_device="cuda") as swap:
            out = gpu(**{k: v.cuda() for k, v in inputs.items()})
    assert torch.equal(out, ref) and swap.peak_resident_blocks <= LAYERS - 4 + 2
