"""Sparse 3-D convolution over a `KernelMap`: gather -> GEMM -> scatter per kernel offset, with autograd.

`sparse_conv(feat (N_in, C_in), weight (C_out, kx, ky, kz, C_in), kmap, bias=None) -> (N_out, C_out)` computes
out[o] = sum_k sum_{(i, o) in pairs_k} weight[:, k, :] @ feat[i] (+ bias), the function of spconv's SubMConv3d,
SparseConv3d and SparseInverseConv3d (weights in spconv's (out, kx, ky, kz, in) layout).

Determinism: within one kernel offset every output row receives at most one input row (true for all maps built
by volt.ops.kernel_map), and the offsets are summed in a fixed order, so results are bit-reproducible and do not
depend on the thread count. No atomics race across offsets.

Precision: float32 and float64 compute in their own dtype. float16/bfloat16 on the CPU compute in float32 and
cast the result back. On CUDA the per-offset GEMMs run in the input dtype (cuBLAS accumulates in float32) and
the sum over offsets is kept in float32. Under autocast, feat and weight are cast to the autocast dtype first
(like torch's convolutions); otherwise mixed dtypes are promoted (torch.promote_types).

Backends: `sparse_conv_forward_reference` / `sparse_conv_weight_grad_reference` (pure PyTorch) are the
specification; `volt::sparse_conv_forward` / `volt::sparse_conv_weight_grad` (C++ CPU, CUDA) compute the same.
The backward uses the same kernels: grad_feat = forward of grad_out through the transposed map with the
transposed per-offset weights (for a submanifold map: through the map itself with the taps reversed, which is
the same sum); grad_weight[k] = feat[in_k]^T @ grad_out[out_k].
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from volt.ops._ext import has_ext, use_ext
from volt.ops.kernel_map import KernelMap

__all__ = ["sparse_conv", "sparse_conv_forward_reference", "sparse_conv_weight_grad_reference"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def sparse_conv_forward_reference(
    feat: torch.Tensor,
    weight: torch.Tensor,
    in_idx: torch.Tensor,
    out_idx: torch.Tensor,
    offsets: torch.Tensor,
    num_out: int,
) -> torch.Tensor:
    """out (num_out, C_out) = sum_k scatter(out_idx_k, feat[in_idx_k] @ weight[k]); weight is (K, C_in, C_out)."""
    acc = _acc_dtype(feat.dtype)
    gemm_dtype = feat.dtype if feat.is_cuda else acc  # CPU: reduced precision computes in float32
    out = torch.zeros(num_out, weight.shape[2], dtype=acc, device=feat.device)
    bounds = offsets.tolist()
    for k in range(weight.shape[0]):
        lo, hi = bounds[k], bounds[k + 1]
        if hi == lo:
            continue
        rows = feat.index_select(0, in_idx[lo:hi]).to(gemm_dtype)
        out.index_add_(0, out_idx[lo:hi].long(), (rows @ weight[k].to(gemm_dtype)).to(acc))
    return out.to(feat.dtype)


def sparse_conv_weight_grad_reference(
    feat: torch.Tensor, grad_out: torch.Tensor, in_idx: torch.Tensor, out_idx: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """grad_weight (K, C_in, C_out) with grad_weight[k] = feat[in_idx_k]^T @ grad_out[out_idx_k]."""
    kvol = offsets.numel() - 1
    gemm_dtype = feat.dtype if feat.is_cuda else _acc_dtype(feat.dtype)
    grad = torch.zeros(kvol, feat.shape[1], grad_out.shape[1], dtype=gemm_dtype, device=feat.device)
    bounds = offsets.tolist()
    for k in range(kvol):
        lo, hi = bounds[k], bounds[k + 1]
        if hi > lo:
            f = feat.index_select(0, in_idx[lo:hi]).to(gemm_dtype)
            g = grad_out.index_select(0, out_idx[lo:hi]).to(gemm_dtype)
            grad[k] = f.t() @ g
    return grad.to(feat.dtype)


def _forward(feat, weight, in_idx, out_idx, offsets, num_out):
    if use_ext("sparse_conv_forward", feat.device):
        return torch.ops.volt.sparse_conv_forward(feat, weight, in_idx, out_idx, offsets, num_out)
    return sparse_conv_forward_reference(feat, weight, in_idx, out_idx, offsets, num_out)


def _weight_grad(feat, grad_out, in_idx, out_idx, offsets):
    if use_ext("sparse_conv_weight_grad", feat.device):
        return torch.ops.volt.sparse_conv_weight_grad(feat, grad_out, in_idx, out_idx, offsets)
    return sparse_conv_weight_grad_reference(feat, grad_out, in_idx, out_idx, offsets)


class _SparseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat, weight, in_idx, out_idx, offsets, num_out, symmetric):
        ctx.save_for_backward(feat, weight, in_idx, out_idx, offsets)
        ctx.symmetric = symmetric
        return _forward(feat, weight, in_idx, out_idx, offsets, num_out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        feat, weight, in_idx, out_idx, offsets = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_feat = grad_weight = None
        if ctx.needs_input_grad[0]:
            w_t = weight.transpose(1, 2)
            if ctx.symmetric:  # the transposed map is this map with taps reversed: keep its output-sorted pairs
                grad_feat = _forward(grad_out, w_t.flip(0).contiguous(), in_idx, out_idx, offsets, feat.shape[0])
            else:
                grad_feat = _forward(grad_out, w_t.contiguous(), out_idx, in_idx, offsets, feat.shape[0])
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(feat, grad_out, in_idx, out_idx, offsets)
        return grad_feat, grad_weight, None, None, None, None, None


def _check(feat: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, bias: torch.Tensor | None) -> None:
    if feat.dim() != 2:
        raise ValueError(f"feat must be (N, C_in), got shape {tuple(feat.shape)}")
    if not feat.dtype.is_floating_point or not weight.dtype.is_floating_point:
        raise ValueError(f"feat and weight must be floating point, got {feat.dtype} and {weight.dtype}")
    if weight.dim() != 5:
        raise ValueError(f"weight must be (C_out, kx, ky, kz, C_in) (spconv layout), got shape {tuple(weight.shape)}")
    if tuple(weight.shape[1:4]) != tuple(kmap.kernel_size):
        raise ValueError(f"weight kernel {tuple(weight.shape[1:4])} does not match the map's {kmap.kernel_size}")
    if weight.shape[4] != feat.shape[1]:
        raise ValueError(f"weight expects C_in={weight.shape[4]} but feat has {feat.shape[1]} channels")
    if feat.shape[0] != kmap.num_in:
        raise ValueError(f"feat has {feat.shape[0]} rows but the map expects num_in={kmap.num_in}")
    if feat.device != weight.device or feat.device != kmap.device:
        raise ValueError(f"feat ({feat.device}), weight ({weight.device}) and map ({kmap.device}) must share a device")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.device != feat.device):
        raise ValueError(
            f"bias must be ({weight.shape[0]},) on {feat.device}, got {tuple(bias.shape)} on {bias.device}"
        )


def sparse_conv(
    feat: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Sparse convolution: (N_in, C_in) features -> (N_out, C_out) over `kmap`; weight (C_out, kx, ky, kz, C_in)."""
    _check(feat, weight, kmap, bias)
    kind = feat.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
    else:
        dtype = torch.promote_types(feat.dtype, weight.dtype)
    c_out = weight.shape[0]
    # (C_out, kx, ky, kz, C_in) -> (K, C_in, C_out): tap k is the flattened (kx, ky, kz) index.
    w = weight.to(dtype).reshape(c_out, kmap.kernel_volume, -1).permute(1, 2, 0).contiguous()
    with torch.autocast(kind, enabled=False):
        out = _SparseConvFunction.apply(
            feat.to(dtype).contiguous(), w, kmap.in_idx, kmap.out_idx, kmap.offsets, kmap.num_out, kmap.symmetric
        )
        if bias is not None:
            out = out + bias.to(dtype)
    return out


def _register_fakes() -> None:
    """Shape-only kernels so torch.compile can trace through the extension ops."""

    @torch.library.register_fake("volt::sparse_conv_forward")
    def _(feat, weight, in_idx, out_idx, offsets, num_out):
        return feat.new_empty(num_out, weight.shape[2])

    @torch.library.register_fake("volt::sparse_conv_weight_grad")
    def _(feat, grad_out, in_idx, out_idx, offsets):
        return feat.new_empty(offsets.shape[0] - 1, feat.shape[1], grad_out.shape[1])


if has_ext() and hasattr(torch.ops.volt, "sparse_conv_forward"):
    _register_fakes()
