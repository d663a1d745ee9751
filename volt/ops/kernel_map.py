"""Kernel maps for sparse 3-D convolution: which input voxel feeds which output voxel through which kernel tap.

Input: voxel coordinates `coords` (N, 4) integer [batch, x, y, z], all >= 0, batch < 2**15, x/y/z < 2**16,
no duplicate rows. Scenes (batch values) never interact. Output: a `KernelMap`, i.e. for every kernel offset
k (flattened as (kx * Ky + ky) * Kz + kz, spconv's order) the pairs (in_idx, out_idx), stored flat and grouped
by k, with `offsets` (K+1,) int64 on the CPU marking each group. Within a group pairs are sorted by out_idx.

Conventions (spconv's, cross-correlation):
- submanifold (odd kernel): outputs = inputs; pair (i, o) at tap k when coord_i = coord_o + k - K//2;
- down (kernel k, stride s, padding 0): outputs are the unique o >= 0 with coord_i = o * s + k for some input,
  sorted by (batch, x, y, z); no upper bound (spconv with a spatial shape larger than the scene, as Pointcept
  sets it); for k = s this is o = coord // s;
- inverse of a down map (spconv's SparseInverseConv3d sharing the indice_key): `kmap.transpose()`.

`*_reference` functions are the specification (sorted int64 keys + searchsorted); the public builders run
`volt::submanifold_map` / `volt::downsample_map` from the extension when `use_ext` says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from volt.ops._ext import has_ext, use_ext

__all__ = [
    "KernelMap",
    "check_coords",
    "downsample_map",
    "downsample_map_reference",
    "inverse_map",
    "submanifold_map",
    "submanifold_map_reference",
]

# Key packing: batch in bits 48..62, x/y/z in 16 bits each; keys stay non-negative int64.
BATCH_LIMIT = 1 << 15
AXIS_LIMIT = 1 << 16


@dataclass(frozen=True)
class KernelMap:
    """Input->output pairs per kernel offset (see the module docstring for the conventions)."""

    in_idx: torch.Tensor  # (P,) int32, pairs grouped by kernel offset
    out_idx: torch.Tensor  # (P,) int32
    offsets: torch.Tensor  # (K+1,) int64 on the CPU: offset k's pairs are [offsets[k], offsets[k+1])
    num_in: int
    num_out: int
    kernel_size: tuple[int, int, int]
    # Submanifold maps: (i, o) is a pair of tap k exactly when (o, i) is a pair of tap K-1-k.
    symmetric: bool = False

    @property
    def kernel_volume(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets.diff()

    @property
    def device(self) -> torch.device:
        return self.in_idx.device

    def transpose(self) -> KernelMap:
        """The same pairs with roles swapped (same tap index): the map of spconv's inverse convolution."""
        return KernelMap(
            self.out_idx, self.in_idx, self.offsets, self.num_out, self.num_in, self.kernel_size, self.symmetric
        )


def _triple(value: int | tuple[int, ...], name: str) -> tuple[int, int, int]:
    t = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return t  # type: ignore[return-value]


def check_coords(coords: torch.Tensor) -> torch.Tensor:
    """Validate voxel coordinates and return them as contiguous int32 (N, 4)."""
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must be a (N, 4) tensor [batch, x, y, z], got {getattr(coords, 'shape', coords)}")
    if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
        raise ValueError(f"coords must be an integer tensor, got {coords.dtype}")
    if coords.shape[0] > 0:
        low, high = coords.aminmax(dim=0)
        low, high = low.tolist(), high.tolist()
        if min(low) < 0:
            raise ValueError(f"coords must be >= 0 (batch, x, y, z minima are {low})")
        if high[0] >= BATCH_LIMIT or max(high[1:]) >= AXIS_LIMIT:
            raise ValueError(
                f"coords overflow the key packing: batch must be < {BATCH_LIMIT} and x, y, z < {AXIS_LIMIT}, "
                f"maxima are {high}"
            )
    return coords.to(torch.int32).contiguous()


def _pack(c: torch.Tensor) -> torch.Tensor:
    c = c.long()
    return (c[:, 0] << 48) | (c[:, 1] << 32) | (c[:, 2] << 16) | c[:, 3]


def _unpack(keys: torch.Tensor) -> torch.Tensor:
    m = AXIS_LIMIT - 1
    return torch.stack([keys >> 48, (keys >> 32) & m, (keys >> 16) & m, keys & m], dim=1).to(torch.int32)


def _sorted_keys(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keys, perm = torch.sort(_pack(coords))
    if keys.numel() > 1 and bool((keys[1:] == keys[:-1]).any()):
        raise ValueError("coords contain duplicate voxels; a kernel map needs unique (batch, x, y, z) rows")
    return keys, perm


def _query_pairs(in_coords, out_coords, kernel, stride, shift):
    """For every tap k and output o, the input at o * stride + k - shift (per axis), if present."""
    keys, perm = _sorted_keys(in_coords)
    device = out_coords.device
    out_c = out_coords.long()
    ins, outs, counts = [], [], []
    for tap in itertools.product(range(kernel[0]), range(kernel[1]), range(kernel[2])):
        q = out_c.clone()
        for a in range(3):
            q[:, a + 1] = out_c[:, a + 1] * stride[a] + tap[a] - shift[a]
        inside = ((q[:, 1:] >= 0) & (q[:, 1:] < AXIS_LIMIT)).all(dim=1)
        o = torch.nonzero(inside).squeeze(1)
        qk = _pack(q[o])
        pos = torch.searchsorted(keys, qk).clamp_(max=max(keys.numel() - 1, 0))
        hit = keys[pos] == qk if keys.numel() else torch.zeros_like(qk, dtype=torch.bool)
        ins.append(perm[pos[hit]])
        outs.append(o[hit])
        counts.append(int(hit.sum()))
    offsets = torch.tensor([0] + list(itertools.accumulate(counts)), dtype=torch.int64)
    cat = lambda xs: torch.cat(xs).to(torch.int32) if xs else torch.zeros(0, dtype=torch.int32, device=device)
    return cat(ins), cat(outs), offsets


def submanifold_map_reference(coords: torch.Tensor, kernel_size: int | tuple[int, int, int] = 3) -> KernelMap:
    """Reference submanifold map (outputs = inputs) for an odd kernel."""
    kernel = _triple(kernel_size, "kernel_size")
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"a submanifold kernel must be odd per axis, got {kernel}")
    coords = check_coords(coords)
    in_idx, out_idx, offsets = _query_pairs(coords, coords, kernel, (1, 1, 1), tuple(k // 2 for k in kernel))
    return KernelMap(in_idx, out_idx, offsets, coords.shape[0], coords.shape[0], kernel, symmetric=True)


def downsample_map_reference(
    coords: torch.Tensor, kernel_size: int | tuple[int, int, int] = 2, stride: int | tuple[int, int, int] = 2
) -> tuple[torch.Tensor, KernelMap]:
    """Reference strided map (padding 0): returns (output coords (M, 4) int32 sorted, map)."""
    kernel, stride = _triple(kernel_size, "kernel_size"), _triple(stride, "stride")
    coords = check_coords(coords)
    c = coords.long()
    cands = []
    for tap in itertools.product(range(kernel[0]), range(kernel[1]), range(kernel[2])):
        rel = c[:, 1:] - torch.tensor(tap, device=c.device)
        s = torch.tensor(stride, device=c.device)
        ok = ((rel >= 0) & (rel % s == 0)).all(dim=1)
        cands.append(torch.cat([c[ok, :1], rel[ok] // s], dim=1))
    keys = torch.unique(_pack(torch.cat(cands))) if cands else torch.zeros(0, dtype=torch.int64)
    out_coords = _unpack(keys)
    in_idx, out_idx, offsets = _query_pairs(coords, out_coords, kernel, stride, (0, 0, 0))
    return out_coords, KernelMap(in_idx, out_idx, offsets, coords.shape[0], out_coords.shape[0], kernel)


def submanifold_map(coords: torch.Tensor, kernel_size: int | tuple[int, int, int] = 3) -> KernelMap:
    """Submanifold kernel map (outputs = inputs); extension kernel when available, else the reference."""
    kernel = _triple(kernel_size, "kernel_size")
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"a submanifold kernel must be odd per axis, got {kernel}")
    coords = check_coords(coords)
    if not use_ext("submanifold_map", coords.device):
        return submanifold_map_reference(coords, kernel)
    in_idx, out_idx, offsets = torch.ops.volt.submanifold_map(coords, list(kernel))
    return KernelMap(in_idx, out_idx, offsets, coords.shape[0], coords.shape[0], kernel, symmetric=True)


def downsample_map(
    coords: torch.Tensor, kernel_size: int | tuple[int, int, int] = 2, stride: int | tuple[int, int, int] = 2
) -> tuple[torch.Tensor, KernelMap]:
    """Strided (padding 0) kernel map: (output coords (M, 4) int32 sorted by key, map)."""
    kernel, stride = _triple(kernel_size, "kernel_size"), _triple(stride, "stride")
    coords = check_coords(coords)
    if not use_ext("downsample_map", coords.device):
        return downsample_map_reference(coords, kernel, stride)
    out_coords, in_idx, out_idx, offsets = torch.ops.volt.downsample_map(coords, list(kernel), list(stride))
    return out_coords, KernelMap(in_idx, out_idx, offsets, coords.shape[0], out_coords.shape[0], kernel)


def inverse_map(kmap: KernelMap) -> KernelMap:
    """Map of the inverse convolution of a down map (outputs = the down map's input coords)."""
    return kmap.transpose()


def _register_fakes() -> None:
    """Shape-only kernels (data-dependent pair counts) so torch.compile can trace the map ops."""

    def _pairs(coords, kernel):
        ctx = torch.library.get_ctx()
        n = ctx.new_dynamic_size()
        kvol = kernel[0] * kernel[1] * kernel[2]
        idx = coords.new_empty(n, dtype=torch.int32)
        return idx, coords.new_empty(n, dtype=torch.int32), torch.empty(kvol + 1, dtype=torch.int64, device="cpu")

    @torch.library.register_fake("volt::submanifold_map")
    def _(coords, kernel_size):
        return _pairs(coords, kernel_size)

    @torch.library.register_fake("volt::downsample_map")
    def _(coords, kernel_size, stride):
        m = torch.library.get_ctx().new_dynamic_size()
        return (coords.new_empty(m, 4, dtype=torch.int32), *_pairs(coords, kernel_size))


if has_ext() and hasattr(torch.ops.volt, "submanifold_map"):
    _register_fakes()
