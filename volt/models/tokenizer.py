"""Linear patch tokenizer and detokenizer over the p×p×p voxel slots of a patch (spec §1.1).

Tokenizer: token[t] = bias + W · x[t], where x[t] (p³·C) is the patch's slot buffer (slot-major: entry
slot·C + c, slot = ox·p² + oy·p + oz, o = grid_coord mod p) and empty slots are zero. Because x[t] is
zero except at occupied slots, token[t] = bias + Σ_{voxels v in t} W[:, slot_v] · feat[v]: we evaluate that
sum slot by slot (gather the voxels of one slot -> one small GEMM -> index_add into their tokens), so the
dense [T, p³, C] buffer of the reference is never built. Two voxels in the same slot of the same patch
(possible after scene mixing, spec §5 item 5) are SUMMED: a deliberate, deterministic rule. The reference's
scatter into its buffer keeps one of them (last write wins, order undefined); inputs without duplicates give
the same function either way.

Detokenizer ("transposed convolution" stride = kernel = p): Linear(U -> p³·U, no bias) read as p³ rows of
(U, U); voxel v receives row slot_v applied to its token, plus one shared bias U. We evaluate only the rows
that occupied voxels need (one GEMM per slot over the voxels in it), never the [T, p³, U] product: V ≤ p³·T,
so this is never more memory or arithmetic than the full product.

`tokenize_dense` / `detokenize_dense` are the reference formulation (dense buffer / full product), kept as
the specification the tests compare against. Inputs come from volt.ops.patchify (`TokenLayout`):
`voxel2token` (V,) and `slot` (V,).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class SlotGroups(NamedTuple):
    """Voxels grouped by slot: order (V,) voxel ids sorted by slot (stable), bounds[s]..bounds[s+1] the
    run of slot s in `order`, inverse (V,) the position of each voxel in `order`."""

    order: torch.Tensor
    bounds: list[int]
    inverse: torch.Tensor


def slot_groups(slot: torch.Tensor, num_slots: int) -> SlotGroups:
    """Group voxel ids by slot once per forward; shared by the tokenizer and the detokenizer."""
    slot = slot.long()
    order = torch.argsort(slot, stable=True)
    counts = torch.bincount(slot, minlength=num_slots)
    if counts.numel() != num_slots:
        raise ValueError(f"slot ids must lie in [0, {num_slots}), got max {int(slot.max())}")
    bounds = [0] + torch.cumsum(counts, 0).tolist()
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return SlotGroups(order, bounds, inverse)


def _output_dtype(weight: torch.Tensor) -> torch.dtype:
    """What F.linear would return: the autocast dtype under autocast, else the weight's dtype."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class Tokenizer(nn.Module):
    """Linear(p³·C_in -> D) with bias over each patch's slot buffer; `proj` holds the reference's weight."""

    def __init__(self, in_channels: int, embed_dim: int, patch: int = 5):
        super().__init__()
        self.in_channels = in_channels
        self.num_slots = patch**3
        self.proj = nn.Linear(self.num_slots * in_channels, embed_dim)

    def forward(
        self, feat: torch.Tensor, voxel2token: torch.Tensor, num_tokens: int, groups: SlotGroups
    ) -> torch.Tensor:
        d = self.proj.out_features
        w = self.proj.weight.view(d, self.num_slots, self.in_channels)  # (D, S, C)
        acc = torch.promote_types(w.dtype, torch.float32)  # accumulate the slot sum in >= float32
        tokens = self.proj.bias.to(acc).expand(num_tokens, d).clone()  # (T, D)
        for s in range(self.num_slots):
            lo, hi = groups.bounds[s], groups.bounds[s + 1]
            if hi == lo:
                continue
            idx = groups.order[lo:hi]
            tokens.index_add_(0, voxel2token[idx], F.linear(feat[idx], w[:, s]).to(acc))
        return tokens.to(_output_dtype(w))


class Detokenizer(nn.Module):
    """Linear(U -> p³·U, no bias) as p³ (U, U) rows, one per slot, plus one shared bias U."""

    def __init__(self, channels: int, patch: int = 5):
        super().__init__()
        self.channels = channels
        self.num_slots = patch**3
        self.proj = nn.Linear(channels, self.num_slots * channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, tokens: torch.Tensor, voxel2token: torch.Tensor, groups: SlotGroups) -> torch.Tensor:
        u = self.channels
        w = self.proj.weight.view(self.num_slots, u, u)  # (S, U_out, U_in): row slot·U + u_out
        parts = []
        for s in range(self.num_slots):
            lo, hi = groups.bounds[s], groups.bounds[s + 1]
            if hi > lo:
                parts.append(F.linear(tokens[voxel2token[groups.order[lo:hi]]], w[s]))  # (n_s, U)
        if not parts:
            return tokens.new_zeros(0, u) + self.bias
        per_voxel = torch.cat(parts, dim=0)[groups.inverse]  # slot-sorted -> input order, (V, U)
        return per_voxel + self.bias


def tokenize_dense(
    feat: torch.Tensor, voxel2token: torch.Tensor, slot: torch.Tensor, num_tokens: int,
    weight: torch.Tensor, bias: torch.Tensor,
) -> torch.Tensor:
    """Reference: dense [T, S, C] slot buffer (duplicates summed) -> flatten -> Linear."""
    num_slots = weight.shape[1] // feat.shape[1]
    buf = feat.new_zeros(num_tokens, num_slots, feat.shape[1])
    buf = buf.index_put((voxel2token.long(), slot.long()), feat, accumulate=True)
    return F.linear(buf.flatten(1), weight, bias)


def detokenize_dense(
    tokens: torch.Tensor, voxel2token: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """Reference: full [T, S, U] product, then each voxel reads row (its token, its slot), plus bias."""
    u = tokens.shape[1]
    full = F.linear(tokens, weight).view(tokens.shape[0], -1, u)  # (T, S, U)
    return full[voxel2token.long(), slot.long()] + bias
