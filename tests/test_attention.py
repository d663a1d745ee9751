"""Attention backends: every available one equals exact per-scene softmax attention; scenes stay isolated."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch
from conftest import DEVICES

from volt.errors import MissingExtraError
from volt.models.attention import Attention, attention, available_backends, resolve_backend
from volt.models.rope import AxialRoPE

SCENES = [37, 0, 64, 5]  # tokens per scene, including an empty scene


def naive_attention(q, k, v, cu_seqlens):
    """softmax(Q Kᵀ / √d) V per scene, per head, in float64."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    bounds = cu_seqlens.tolist()
    for lo, hi in itertools.pairwise(bounds):
        qs, ks, vs = (t[lo:hi].double().cpu().transpose(0, 1) for t in (q, k, v))  # (H, L, Dh)
        weights = torch.softmax(qs @ ks.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        out[lo:hi] = (weights @ vs).transpose(0, 1)
    return out


def packed(device, heads=3, head_dim=64, scenes=SCENES, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(scenes)
    q, k, v = (torch.randn(total, heads, head_dim, generator=g).to(device) for _ in range(3))
    cu = torch.tensor([0] + torch.tensor(scenes).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return q, k, v, cu, max(scenes)


def _cases():
    for device in DEVICES:
        for backend in ["auto"] + available_backends(device):
            yield pytest.param(device, backend, id=f"{device}-{backend}")


def _dtype_for(device, backend):
    """Fused CUDA kernels need half precision; sdpa is checked in exact float32."""
    if device == "cuda" and backend in ("flash", "varlen", "auto"):
        return torch.bfloat16
    return torch.float32


def _packed_for(device, backend):
    """`packed(device)` with q, k, v cast to the dtype the backend is checked in; returns them and that dtype."""
    q, k, v, cu, max_len = packed(device)
    dtype = _dtype_for(device, backend)
    return q.to(dtype), k.to(dtype), v.to(dtype), cu, max_len, dtype


@pytest.mark.parametrize("device, backend", list(_cases()))
def test_backend_matches_exact_attention(device, backend):
    q, k, v, cu, max_len, dtype = _packed_for(device, backend)
    out = attention(q, k, v, cu, max_len, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double().cpu(), naive_attention(q, k, v, cu), atol=tol, rtol=tol)


@pytest.mark.parametrize("device, backend", list(_cases()))
def test_scenes_do_not_attend_to_each_other(device, backend):
    q, k, v, cu, max_len, _ = _packed_for(device, backend)
    base = attention(q, k, v, cu, max_len, backend=backend)
    lo, hi = int(cu[2]), int(cu[3])  # scene 2
    k2, v2 = k.clone(), v.clone()
    k2[lo:hi] = torch.randn_like(k2[lo:hi]) * 3
    v2[lo:hi] = torch.randn_like(v2[lo:hi]) * 3
    changed = attention(q, k2, v2, cu, max_len, backend=backend)
    others = torch.ones(q.shape[0], dtype=torch.bool)
    others[lo:hi] = False
    torch.testing.assert_close(changed[others], base[others], atol=1e-6, rtol=0)
    assert not torch.allclose(changed[lo:hi], base[lo:hi])


def test_sdpa_gradients_match_exact():
    q, k, v, cu, max_len = packed("cpu", heads=2, head_dim=16)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    attention(*leaves, cu, max_len, backend="sdpa").square().sum().backward()
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    naive_attention(*ref_leaves, cu).square().sum().backward()
    for got, ref in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, ref.grad)


def test_bf16_autocast_is_respected_on_cpu():
    """Under CPU bf16 autocast the attention runs in bf16 (never forced to fp16 as in the reference)."""
    torch.manual_seed(0)
    module = Attention(128, 2, qk_norm=True, backend="sdpa")
    x = torch.randn(20, 128)
    cu = torch.tensor([0, 12, 20], dtype=torch.int32)
    rope = AxialRoPE(64)(torch.randint(0, 10, (20, 3)))
    seen = {}

    def record(mod, args):
        seen["dtype"] = args[0].dtype  # the attention output entering proj

    module.proj.register_forward_pre_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x, rope, cu, 12)
    assert seen["dtype"] == torch.bfloat16 and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), module(x, rope, cu, 12), atol=5e-2, rtol=5e-2)
    # bf16 inputs outside autocast stay bf16 too
    q, k, v, cu4, max_len = packed("cpu")
    assert attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu4, max_len).dtype == torch.bfloat16


def test_auto_backend_on_cpu_is_sdpa():
    assert resolve_backend("auto", torch.zeros(1, 1, 8)) == "sdpa"
    with pytest.raises(ValueError):
        resolve_backend("xformers", torch.zeros(1, 1, 8))


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_missing_flash_attn_names_the_extra():
    q, k, v, cu, max_len = packed("cpu")
    with pytest.raises(MissingExtraError, match=r"volt\[flash\]"):
        attention(q, k, v, cu, max_len, backend="flash")


def test_fused_backends_refuse_cpu_or_float32():
    q, k, v, cu, max_len = packed("cpu")
    with pytest.raises((ValueError, RuntimeError)):
        attention(q, k, v, cu, max_len, backend="varlen")


def test_bad_cu_seqlens_rejected():
    q, k, v, cu, max_len = packed("cpu")
    with pytest.raises(ValueError):
        attention(q, k, v, cu[:-1], max_len, backend="sdpa")
