"""Linear patch tokenizer and detokenizer over the p×p×p voxel slots of a patch (spec §1.1).

Inputs come from volt.ops.patchify (`TokenLayout`): `voxel2token` (V,) and `slot` (V,), with
slot = ox·p² + oy·p + oz, o = grid_coord mod p.

Tokenizer: token[t] = bias + W · x[t], where x[t] (p³·C, slot-major: entry slot·C + c, empty slots zero) is
the token's slot buffer. Two formulations of this one function ("dense" | "kernel"; `Tokenizer.mode`):
- dense (the reference's): the (T, p³·C) buffer filled by one index_add at row token·p³ + slot, then one
  Linear. For voxels at distinct slots it is bit-identical to the reference's layer.
- kernel (auto's choice on the CPU in float32 with volt's extension): `volt.ops.slot_matmul.tokenize_linear`
  adds W[:, slot·C : (slot+1)·C] · feat[v] per voxel as grouped GEMMs, never building the buffer: V·C·D
  multiply-adds instead of T·p³·C·D (4.3x fewer for a 2 cm room, 44x for a 5 cm LiDAR sweep: T·p³/V). Equal to the
  dense result up to float rounding (the sums run in another order).
Two voxels in the same slot of the same patch (possible after scene mixing, spec §5 item 5) are SUMMED by
both: a deliberate, defined rule (the reference's scatter keeps one of them, last write wins, order undefined).

Detokenizer ("transposed convolution" stride = kernel = p): Linear(U -> p³·U, no bias) read as p³ (U, U)
matrices, one per slot; voxel v receives matrix slot_v applied to its token, plus one shared bias U. The
reference computes the full (T, p³, U) product and gathers V rows of it; we evaluate only the V rows the
voxels need, as ONE grouped GEMM (torch.nn.functional.grouped_mm) over the voxels sorted by slot: V·U² instead
of T·p³·U² multiply-adds and no (T, p³, U) tensor (4.3x fewer for a 2 cm room, 44x for a 5 cm LiDAR sweep).
Where grouped_mm cannot take the operands (row strides must be multiples of 16 bytes, e.g. U = 4 in bf16) or
this torch has no F.grouped_mm (older releases), `detokenize_dense` (the reference's formulation, the same
function) runs instead. On the CPU in float32, when volt's extension is built, the same grouped product runs as
one fused kernel (`volt.ops.slot_matmul.detokenize_linear`: gather -> GEMM -> scatter per (token block, slot) group, no
(V, U) temporaries, the token gradient accumulated without atomics). On CUDA the dense product is the default: it
measured faster there than the grouped GEMM (`tools/bench_model.py --device cuda`, H100, Volt-S bf16, 2 cm room:
tokenize+detokenize forward 1.05 vs 1.31 ms best, fwd+bwd 2.30 vs 2.47 ms), where the (T, p³, U) product is one
large tensor-core GEMM and torch's grouped_mm has a fused kernel only for bf16 on sm90/sm100 (other dtypes loop
over the groups after a host sync). `Detokenizer.mode` ("auto" | "kernel" | "grouped" | "dense") overrides the
choice (benchmarks, tests); every mode computes the same function.

Inputs/outputs: `Tokenizer(C, D)(feat (V, C), voxel2token (V,), slot (V,), num_tokens) -> (T, D)`;
`Detokenizer(U)(tokens (T, U), voxel2token (V,), slot (V,)) -> (V, U)` in input order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from volt.ops import _ext
from volt.ops.slot_matmul import detokenize_linear, tokenize_linear

TOKENIZER_MODES = ("auto", "kernel", "dense")
DETOKENIZER_MODES = ("auto", "kernel", "grouped", "dense")


def _checked_mode(layer: str, mode: str, modes: tuple[str, ...]) -> str:
    if mode not in modes:
        raise ValueError(f"{layer} mode must be one of {modes}, got {mode!r}")
    return mode


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """What F.linear would compute in: the autocast dtype under autocast, else the weight's dtype
    (grouped_mm is not on autocast's lists, so the detokenizer casts by itself)."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _use_kernel(mode: str, weight: torch.Tensor, device: torch.device, layer: str) -> bool:
    """Whether a layer in `mode` runs volt's CPU slot kernel: mode "kernel" requires it (float32 on the CPU with
    the extension, else an error); "auto" takes it there; other modes never do."""
    if mode not in ("auto", "kernel"):
        return False
    dtype = _compute_dtype(weight)
    if device.type == "cpu" and dtype == torch.float32 and _ext.use_ext("slot_matmul", device):
        return True
    if mode == "kernel":
        raise RuntimeError(f"{layer} mode 'kernel' needs volt's CPU extension and float32 on the CPU, got {dtype} on "
                           f"{device.type} ({_ext.ext_info()['reason']})")
    return False


class _PermuteRows(torch.autograd.Function):
    """x[index] for a permutation `index` with inverse `inverse`. Autograd's own backward of a gather is a
    scatter-add into a zero-filled (V, U) tensor; for a permutation the gradient is simply grad[inverse]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class Tokenizer(nn.Module):
    """Linear(p³·C_in -> D) with bias over each patch's slot buffer (the reference's layer)."""

    def __init__(self, in_channels: int, embed_dim: int, patch: int = 5, mode: str = "auto"):
        super().__init__()
        self.in_channels = in_channels
        self.num_slots = patch**3
        self.mode = _checked_mode("Tokenizer", mode, TOKENIZER_MODES)
        self.proj = nn.Linear(self.num_slots * in_channels, embed_dim)

    def path(self, device: torch.device) -> str:
        """"kernel" (auto: the CPU in float32 with the extension's kernel) or "dense" (auto: otherwise)."""
        return "kernel" if _use_kernel(self.mode, self.proj.weight, device, "Tokenizer") else "dense"

    def forward(
        self, feat: torch.Tensor, voxel2token: torch.Tensor, slot: torch.Tensor, num_tokens: int
    ) -> torch.Tensor:
        if self.path(feat.device) == "kernel":
            return tokenize_linear(feat, self.proj.weight, self.proj.bias, voxel2token, slot, num_tokens)
        row = voxel2token * self.num_slots + slot  # (V,) row of the (T·p³, C) buffer
        buf = feat.new_zeros(num_tokens * self.num_slots, feat.shape[1]).index_add_(0, row, feat)
        return self.proj(buf.view(num_tokens, self.num_slots * feat.shape[1]))  # (T, D)


class Detokenizer(nn.Module):
    """Linear(U -> p³·U, no bias) as p³ (U, U) matrices, one per slot, plus one shared bias U."""

    def __init__(self, channels: int, patch: int = 5, mode: str = "auto"):
        super().__init__()
        self.channels = channels
        self.num_slots = patch**3
        self.mode = _checked_mode("Detokenizer", mode, DETOKENIZER_MODES)
        self.proj = nn.Linear(channels, self.num_slots * channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def path(self, device: torch.device) -> str:
        """The formulation forward takes on `device` under the current autocast state: "kernel" (auto: the CPU in
        float32 with the extension's kernel), "grouped" (auto: the CPU otherwise) or "dense" (auto: CUDA)."""
        dtype = _compute_dtype(self.proj.weight)
        if _use_kernel(self.mode, self.proj.weight, device, "Detokenizer"):
            return "kernel"
        if self.mode == "dense" or not hasattr(F, "grouped_mm") or (self.channels * dtype.itemsize) % 16:
            return "dense"
        return "grouped" if self.mode == "grouped" or device.type == "cpu" else "dense"

    def forward(self, tokens: torch.Tensor, voxel2token: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        path = self.path(tokens.device)
        if path == "kernel":
            return detokenize_linear(tokens, self.proj.weight, self.bias, voxel2token, slot)
        if path == "grouped":
            return detokenize_grouped(tokens, voxel2token, slot, self.proj.weight, self.bias,
                                      _compute_dtype(self.proj.weight))
        return detokenize_dense(tokens, voxel2token, slot, self.proj.weight, self.bias)


def detokenize_grouped(
    tokens: torch.Tensor, voxel2token: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One grouped GEMM in `dtype` over the voxels sorted by slot; weight (S·U, U) as S (U, U) matrices."""
    u = tokens.shape[1]
    s = weight.shape[0] // u
    sorted_slot, order = torch.sort(slot, stable=True)  # (V,) voxels grouped by slot
    # end of each slot's run, computed on the device (no host sync; grouped_mm wants int32)
    ends = torch.searchsorted(sorted_slot, torch.arange(1, s + 1, device=slot.device), out_int32=True)
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    w = weight.to(dtype).view(s, u, u).transpose(1, 2)  # (S, U_in, U_out), a view
    token_sorted = voxel2token.index_select(0, order)  # (V,) each voxel's token, in slot order
    # (V, U): token rows times their slot's matrix. The gathered rows are a temporary: freed at once in
    # inference (peak 2 (V, U) tensors, not 3), kept by autograd for the weight gradient in training.
    per_voxel = F.grouped_mm(tokens.index_select(0, token_sorted).to(dtype), w, offs=ends)
    if per_voxel.dtype == torch.promote_types(per_voxel.dtype, bias.dtype):
        per_voxel = per_voxel.add_(bias)  # in place: one (V, U) tensor fewer to allocate
    else:  # low-precision product + float32 bias -> float32, as the reference's `full[...] + bias`
        per_voxel = per_voxel + bias
    return _PermuteRows.apply(per_voxel, inverse, order)  # back to input order


def detokenize_dense(
    tokens: torch.Tensor, voxel2token: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """The reference: full (T, S, U) product, then each voxel reads row (its token, its slot), plus bias."""
    u = tokens.shape[1]
    full = F.linear(tokens, weight).view(tokens.shape[0], -1, u)  # (T, S, U)
    return full[voxel2token, slot] + bias
