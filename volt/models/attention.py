"""Global self-attention within each scene of a packed token list, with several interchangeable kernels.

`attention(q, k, v, cu_seqlens, max_seqlen, backend)` computes, for every scene b (tokens
cu_seqlens[b]:cu_seqlens[b+1]), softmax(q kᵀ / √Dh) v over that scene only: non-causal, no dropout,
scenes never attend to each other. q, k, v and the result are (T, H, Dh). Backends (spec §5 item 1):
- "sdpa":   torch's scaled_dot_product_attention called once per scene; runs anywhere, the CPU default.
- "flash":  flash-attn's varlen kernel (CUDA, fp16/bf16; optional extra `volt[flash]`, imported lazily).
- "varlen": torch.nn.attention.varlen.varlen_attn (CUDA, fp16/bf16; torch >= 2.9).
- "auto":   flash, else varlen, when the inputs are half precision on CUDA; sdpa otherwise.
All backends compute the same function (tests/test_attention.py). The working dtype is the inputs' dtype,
or the autocast dtype when autocast is on; it is never forced to fp16 (the reference always does).

`Attention` is the module of one block: qkv Linear(D, 3D) -> per-head q/k LayerNorm(Dh) -> 3D RoPE ->
attention -> proj Linear(D, D), with the reference's parameter names.
"""

from __future__ import annotations

import importlib.util
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from volt.errors import require
from volt.models.rope import apply_rope

BACKENDS = ("auto", "sdpa", "flash", "varlen")
_HALF = (torch.float16, torch.bfloat16)


def _torch_varlen():
    """torch's varlen attention function, or None when this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def available_backends(device: torch.device | str) -> list[str]:
    """The explicit backends usable on this device with this installation."""
    found = ["sdpa"]
    if torch.device(device).type == "cuda":
        if _flash_installed():
            found.append("flash")
        if _torch_varlen() is not None:
            found.append("varlen")
    return found


def _working_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype a fused kernel runs in: the autocast dtype for float32 inputs under autocast, else q's."""
    device_type = q.device.type
    if q.dtype == torch.float32 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return q.dtype


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The concrete backend `attention` will use for q (device, dtype, installed packages)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend '{backend}'; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    if q.is_cuda and _working_dtype(q) in _HALF:
        if _flash_installed():
            return "flash"
        if _torch_varlen() is not None:
            return "varlen"
    return "sdpa"


def _sdpa_per_scene(q, k, v, bounds: list[int]) -> torch.Tensor:
    outs = []
    for lo, hi in itertools.pairwise(bounds):
        if hi == lo:
            continue
        # (L, H, Dh) -> (1, H, L, Dh) for SDPA and back
        qs, ks, vs = (t[lo:hi].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1))
    if not outs:
        return q.new_empty(q.shape)
    return torch.cat(outs, dim=0)


def _fused_inputs(q, k, v, cu_seqlens, name: str):
    if not q.is_cuda:
        raise ValueError(f"attention backend '{name}' runs on CUDA only; use 'sdpa' on {q.device.type}")
    dtype = _working_dtype(q)
    if dtype not in _HALF:
        raise ValueError(
            f"attention backend '{name}' needs float16/bfloat16 inputs (or autocast), got {dtype}; "
            "use backend 'sdpa' or 'auto' for float32"
        )
    q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))  # v is a strided view into the packed qkv
    return q, k, v, cu_seqlens.to(device=q.device, dtype=torch.int32)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-scene softmax(q kᵀ/√Dh) v for packed (T, H, Dh) tensors; cu_seqlens (B+1,) int, max_seqlen int."""
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must be equal (T, H, Dh) tensors, got {q.shape}, {k.shape}, {v.shape}")
    name = resolve_backend(backend, q)
    if name == "sdpa":
        bounds = [int(b) for b in cu_seqlens.tolist()]
        if bounds[0] != 0 or bounds[-1] != q.shape[0]:
            raise ValueError(f"cu_seqlens must run from 0 to T={q.shape[0]}, got {bounds[0]}..{bounds[-1]}")
        return _sdpa_per_scene(q, k, v, bounds)
    if name == "flash":
        flash_attn = require("flash_attn", "flash", "Attention backend 'flash'")
        qh, kh, vh, cu = _fused_inputs(q, k, v, cu_seqlens, name)
        return flash_attn.flash_attn_varlen_func(
            qh, kh, vh, cu, cu, int(max_seqlen), int(max_seqlen), dropout_p=0.0, causal=False
        )
    varlen_attn = _torch_varlen()
    if varlen_attn is None:
        raise RuntimeError(f"attention backend 'varlen' needs torch >= 2.9 (this is torch {torch.__version__})")
    qh, kh, vh, cu = _fused_inputs(q, k, v, cu_seqlens, name)
    return varlen_attn(qh, kh, vh, cu, cu, int(max_seqlen), int(max_seqlen))


class Attention(nn.Module):
    """Multi-head self-attention with per-head q/k LayerNorm and 3D RoPE, over packed scenes."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend '{backend}'; choose one of {BACKENDS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
    ) -> torch.Tensor:
        t, d = x.shape
        qkv = self.qkv(x).view(t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)  # (T, H, Dh) each
        # LayerNorm may run in float32 under autocast; the rotated q, k go back to v's (working) dtype
        q = apply_rope(self.q_norm(q), *rope).to(v.dtype)
        k = apply_rope(self.k_norm(k), *rope).to(v.dtype)
        out = attention(q, k, v, cu_seqlens, max_seqlen, self.backend)  # (T, H, Dh)
        return self.proj(out.reshape(t, d))
