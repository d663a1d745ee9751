"""Slot-wise products of the patch tokenizer and detokenizer as fused CPU kernels (spec §1.1).

Voxel v sits in token t_v at slot s_v (volt.ops.patchify); both layers apply one matrix per slot:
- `tokenize_linear(feat (V, C), weight (D, S·C), bias (D,), voxel2token, slot, num_tokens) -> (T, D)`:
  token[t] = bias + sum over the voxels v of t of weight[:, s_v·C : (s_v+1)·C] @ feat[v], the Linear over the
  dense (T, S·C) slot buffer (volt.models.tokenizer.Tokenizer) without building the buffer;
- `detokenize_linear(tokens (T, U_in), weight (S·U_out, U_in), bias (U_out,), voxel2token, slot) -> (V, U_out)`:
  out[v] = weight.view(S, U_out, U_in)[s_v] @ tokens[t_v] + bias (volt.models.tokenizer.Detokenizer).
Both have autograd (inputs, weight, bias). Float32 on the CPU with volt's extension; the layers keep other dtypes
and devices on their torch formulations.

The kernels (csrc/cpu/slot_matmul.cpp): `slot_plan` sorts the voxels by (token block, slot), a token's block being
floor(voxels in earlier tokens / 4096), so each (block, slot) group is one gather -> GEMM -> scatter with one
matrix and one task owns each block's token rows: `slot_matmul` writes voxel rows (to_tokens=False) or adds into
token rows (to_tokens=True) without atomics; `slot_outer` (weight gradients) takes one task per slot. Tasks are
fixed by the plan, so results do not depend on the thread count. Only the occupied slots cost work: the tokenizer
does V·C·D multiply-adds instead of T·S·C·D, the detokenizer V·U² instead of T·S·U², and neither allocates a
(T, S, ·) buffer or a (V, U) temporary besides its output.

Each op has a pure-PyTorch reference here that defines its result: `slot_plan_reference` returns equal tensors;
the float references compute the same sums in another order (equal up to rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from volt.ops import _ext

__all__ = ["BLOCK_VOXELS", "detokenize_linear", "slot_matmul_reference", "slot_outer_reference", "slot_plan",
           "slot_plan_reference", "tokenize_linear"]

BLOCK_VOXELS = 4096  # csrc/cpu/slot_matmul.cpp kBlockVoxels


def slot_plan_reference(voxel2token: Tensor, slot: Tensor, num_tokens: int,
                        num_slots: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(order int32 (V,), token int32 (V,), groups int64 (B·S+1,), blocks int64 (B+1,)): voxels sorted by
    (block of their token, slot), stable in voxel index; group (b, s) is order[groups[b·S+s] : groups[b·S+s+1]];
    block b holds tokens [blocks[b], blocks[b+1]); token t's block is floor(voxels in tokens < t / BLOCK_VOXELS)."""
    tok, slot = voxel2token.long().cpu(), slot.long().cpu()
    if tok.numel() and not (0 <= int(tok.min()) and int(tok.max()) < num_tokens):
        raise ValueError(f"voxel2token must lie in [0, {num_tokens})")
    if slot.numel() and not (0 <= int(slot.min()) and int(slot.max()) < num_slots):
        raise ValueError(f"slot must lie in [0, {num_slots})")
    per_token = torch.bincount(tok, minlength=num_tokens)
    before = torch.cumsum(per_token, 0) - per_token  # voxels in earlier tokens
    block_of = torch.div(before, BLOCK_VOXELS, rounding_mode="floor")
    num_blocks = int(block_of[-1]) + 1 if num_tokens else 1
    blocks = torch.searchsorted(block_of, torch.arange(num_blocks + 1))
    key = block_of[tok] * num_slots + slot
    order = torch.sort(key, stable=True).indices
    counts = torch.bincount(key, minlength=num_blocks * num_slots)
    groups = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return order.int(), tok[order].int(), groups, blocks


def _plan_slots(groups: Tensor, num_slots: int) -> Tensor:
    """(V,) slot of each position of the plan's order."""
    counts = groups[1:] - groups[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel()) % num_slots, counts)


def slot_matmul_reference(x: Tensor, weight: Tensor, bias: Tensor | None, order: Tensor, token: Tensor,
                          groups: Tensor, blocks: Tensor, num_out: int, to_tokens: bool) -> Tensor:
    """weight (S, C_in, C_out). to_tokens=False: out (num_out = V, C_out), out[order[p]] = bias + x[token[p]] @
    weight[slot of p]. to_tokens=True: out (num_out = T, C_out), out[t] = bias + sum over p with token[p] = t of
    x[order[p]] @ weight[slot of p]. (`blocks` is the kernel's; the result does not depend on it.)"""
    slots = _plan_slots(groups, weight.shape[0])
    src, dst = (order, token) if to_tokens else (token, order)
    rows = torch.bmm(x[src.long()].unsqueeze(1), weight[slots]).squeeze(1)
    out = x.new_zeros(num_out, weight.shape[2])
    out = out.index_add_(0, dst.long(), rows) if to_tokens else out.index_copy_(0, dst.long(), rows)
    return out if bias is None else out + bias


def slot_outer_reference(a: Tensor, b: Tensor, order: Tensor, token: Tensor, groups: Tensor, num_slots: int,
                         a_is_token: bool) -> Tensor:
    """(S, C_a, C_b): grad[s] = sum over p in slot s of a[i_p]^T b[j_p], with (i, j) = (token, order) when
    a_is_token, else (order, token)."""
    slots = _plan_slots(groups, num_slots)
    ia, ib = (token, order) if a_is_token else (order, token)
    outer = a[ia.long()].unsqueeze(2) * b[ib.long()].unsqueeze(1)  # (V, C_a, C_b)
    return a.new_zeros(num_slots, a.shape[1], b.shape[1]).index_add_(0, slots, outer)


def slot_plan(voxel2token: Tensor, slot: Tensor, num_tokens: int, num_slots: int) -> tuple[Tensor, ...]:
    """The plan of `slot_plan_reference`, from the extension's kernel."""
    return torch.ops.volt.slot_plan(voxel2token, slot, int(num_tokens), int(num_slots))


def _matmul(x, weight, bias, plan, num_out, to_tokens):
    return torch.ops.volt.slot_matmul(x, weight, bias, *plan, num_out, to_tokens)


def _outer(a, b, plan, num_slots, a_is_token):
    order, token, groups, _ = plan
    return torch.ops.volt.slot_outer(a, b, order, token, groups, num_slots, a_is_token)


class _Detokenize(torch.autograd.Function):
    """tokens (T, U_in), weight (S·U_out, U_in), bias (U_out,) -> (V, U_out)."""

    @staticmethod
    def forward(ctx, tokens, weight, bias, *plan):
        s, u_in = weight.shape[0] // bias.shape[0], tokens.shape[1]
        ctx.save_for_backward(tokens, weight, *plan)
        ctx.num_slots = s
        w = weight.view(s, -1, u_in).transpose(1, 2).contiguous()  # (S, U_in, U_out)
        return _matmul(tokens, w, bias, plan, plan[0].shape[0], False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        tokens, weight, *plan = ctx.saved_tensors
        grad_out, s = grad_out.contiguous(), ctx.num_slots
        grads = [None] * (3 + len(plan))
        if ctx.needs_input_grad[0]:  # grad_tokens[t] = sum over its voxels of grad_out[v] @ W_s (U_out, U_in)
            grads[0] = _matmul(grad_out, weight.view(s, -1, tokens.shape[1]), None, plan, tokens.shape[0], True)
        if ctx.needs_input_grad[1]:  # W_s (U_out, U_in) = sum grad_out[v]^T tokens[t]
            grads[1] = _outer(grad_out, tokens, plan, s, False).view(weight.shape)
        if ctx.needs_input_grad[2]:
            grads[2] = grad_out.sum(0)
        return tuple(grads)


class _Tokenize(torch.autograd.Function):
    """feat (V, C), weight (D, S·C), bias (D,) -> (T, D)."""

    @staticmethod
    def forward(ctx, feat, weight, bias, num_tokens, *plan):
        c = feat.shape[1]
        s = weight.shape[1] // c
        ctx.save_for_backward(feat, weight, *plan)
        ctx.num_slots = s
        w = weight.t().contiguous().view(s, c, -1)  # (S, C, D)
        return _matmul(feat, w, bias, plan, num_tokens, True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        feat, weight, *plan = ctx.saved_tensors
        grad_out, s, c = grad_out.contiguous(), ctx.num_slots, feat.shape[1]
        grads = [None] * (4 + len(plan))
        if ctx.needs_input_grad[0]:  # grad_feat[v] = grad_out[t] @ W_s (D, C)
            w_t = weight.view(-1, s, c).permute(1, 0, 2).contiguous()  # (S, D, C)
            grads[0] = _matmul(grad_out, w_t, None, plan, feat.shape[0], False)
        if ctx.needs_input_grad[1]:  # (S, C, D) = sum feat[v]^T grad_out[t] -> weight (D, S·C)
            grads[1] = _outer(feat, grad_out, plan, s, False).view(s * c, -1).t()
        if ctx.needs_input_grad[2]:
            grads[2] = grad_out.sum(0)
        return tuple(grads)


def _plan_for(voxel2token: Tensor, slot: Tensor, num_tokens: int, num_slots: int) -> tuple[Tensor, ...]:
    """The plan of one layer call; the layers have no fallback, so an unusable kernel is an error here."""
    device = voxel2token.device
    if not _ext.has_kernel("slot_matmul", device):
        why = _ext.ext_info()["load_error"] or f"the extension has no slot_matmul kernel for device '{device.type}'"
        raise RuntimeError(f"tokenize_linear/detokenize_linear need volt's extension kernel: {why}")
    return slot_plan(voxel2token, slot, num_tokens, num_slots)


def detokenize_linear(tokens: Tensor, weight: Tensor, bias: Tensor, voxel2token: Tensor, slot: Tensor) -> Tensor:
    """out[v] = weight.view(S, U_out, U_in)[slot_v] @ tokens[voxel2token_v] + bias, by the CPU kernels (float32)."""
    u_in, u_out = tokens.shape[1], bias.shape[0]
    if weight.dim() != 2 or weight.shape[1] != u_in or weight.shape[0] % u_out:
        raise ValueError(f"weight must be (S*{u_out}, {u_in}), got {tuple(weight.shape)}")
    plan = _plan_for(voxel2token, slot, tokens.shape[0], weight.shape[0] // u_out)
    return _Detokenize.apply(tokens.contiguous(), weight.contiguous(), bias.contiguous(), *plan)


def tokenize_linear(feat: Tensor, weight: Tensor, bias: Tensor, voxel2token: Tensor, slot: Tensor,
                    num_tokens: int) -> Tensor:
    """token[t] = bias + sum over the voxels v of t of weight.view(D, S, C)[:, slot_v] @ feat[v] (float32, CPU)."""
    c = feat.shape[1]
    if weight.dim() != 2 or weight.shape[1] % c or weight.shape[0] != bias.shape[0]:
        raise ValueError(f"weight must be ({bias.shape[0]}, S*{c}), got {tuple(weight.shape)}")
    plan = _plan_for(voxel2token, slot, num_tokens, weight.shape[1] // c)
    return _Tokenize.apply(feat.contiguous(), weight.contiguous(), bias.contiguous(), int(num_tokens), *plan)


def _register_fakes() -> None:
    """Shape-only kernels so torch.compile can trace through the extension ops (the plan's sizes are data)."""

    @torch.library.register_fake("volt::slot_plan")
    def _(voxel2token, slot, num_tokens, num_slots):
        v, ctx = voxel2token.shape[0], torch.library.get_ctx()
        return (voxel2token.new_empty(v, dtype=torch.int32), voxel2token.new_empty(v, dtype=torch.int32),
                torch.empty(ctx.new_dynamic_size(), dtype=torch.int64),
                torch.empty(ctx.new_dynamic_size(), dtype=torch.int64))

    @torch.library.register_fake("volt::slot_matmul")
    def _(x, weight, bias, order, token, groups, blocks, num_out, to_tokens):
        return x.new_empty(num_out, weight.shape[2])

    @torch.library.register_fake("volt::slot_outer")
    def _(a, b, order, token, groups, num_slots, a_is_token):
        return a.new_empty(num_slots, a.shape[1], b.shape[1])


if _ext.has_ext() and hasattr(torch.ops.volt, "slot_plan"):
    _register_fakes()
