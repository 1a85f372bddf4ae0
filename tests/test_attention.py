"""comfy_kiwi.attention: sdpa against a plain softmax reference, backend selection and its errors."""

import pytest
import torch

from comfy_kiwi.attention import BACKENDS, attention, available_backends, check_backend
from comfy_kiwi.errors import BackendUnavailableError, InputError


def naive_attention(q, k, v):
    """softmax(q·kᵀ/√d)·v on [B, L, H, D] tensors, in float64."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))          # [B, H, L, D]
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (w @ v).transpose(1, 2)


def qkv(b=2, lq=37, lk=11, h=3, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, lq, h, d, generator=g).to(dtype), torch.randn(b, lk, h, d, generator=g).to(dtype),
            torch.randn(b, lk, h, d, generator=g).to(dtype))


@pytest.mark.parametrize("lq,lk", [(37, 11), (5, 64), (1, 1)])
@pytest.mark.parametrize("backend", ["sdpa", "auto"])
def test_sdpa_matches_softmax_reference(lq, lk, backend):
    q, k, v = qkv(lq=lq, lk=lk)
    out = attention(q, k, v, backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert (out.double() - naive_attention(q, k, v)).abs().max() < 1e-5


def test_sdpa_is_per_head_not_mixed():
    q, k, v = qkv(h=2)
    v2 = v.clone()
    v2[:, :, 1] += 10.0                     # change only head 1's values
    a, b = attention(q, k, v), attention(q, k, v2)
    assert torch.equal(a[:, :, 0], b[:, :, 0]) and not torch.allclose(a[:, :, 1], b[:, :, 1])


def test_half_precision_inputs():
    q, k, v = qkv(dtype=torch.bfloat16)
    out = attention(q, k, v, "sdpa")
    assert out.dtype == torch.bfloat16
    assert (out.double() - naive_attention(q, k, v)).abs().max() < 3e-2


def test_auto_resolves_to_sdpa_on_cpu():
    assert check_backend("auto", "cpu") == "sdpa"
    assert available_backends("cpu") == ["sdpa"]


def test_unknown_backend_is_an_input_error():
    with pytest.raises(InputError, match="unknown attention backend 'fast'.*sdpa"):
        check_backend("fast")
    q, k, v = qkv()
    with pytest.raises(InputError, match="choose one of"):
        attention(q, k, v, "fast")


@pytest.mark.parametrize("backend", ["xformers", "flash", "sage"])
def test_gpu_backend_on_cpu_says_so(backend):
    with pytest.raises(BackendUnavailableError, match=f"{backend}.*needs a CUDA GPU.*'sdpa' or 'auto'"):
        check_backend(backend, "cpu")


def test_missing_package_names_the_install(monkeypatch):
    import comfy_kiwi.attention as att

    monkeypatch.setattr(att, "_has_package", lambda name: False)
    with pytest.raises(BackendUnavailableError, match="pip install flash-attn"):
        check_backend("flash", "cuda")           # a device name only: no GPU needed to check
    assert check_backend("auto", "cuda") == "sdpa"
    assert set(BACKENDS) >= {"auto", "sdpa", "xformers", "flash", "sage"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers runs on CUDA only")
def test_xformers_matches_reference_on_gpu():
    pytest.importorskip("xformers")
    q, k, v = (t.cuda().half() for t in qkv())
    out = attention(q, k, v, "xformers")
    assert (out.double().cpu() - naive_attention(q.cpu(), k.cpu(), v.cpu())).abs().max() < 5e-3
