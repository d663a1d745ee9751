"""Grid sampling (voxelization) of a whole batch of point clouds in one call (spec §1.7, decision §5.10).

`voxelize(coord (N,3) float, offset (B,) int64 cumulative ends, grid_size, mode, generator) -> Voxels`.
A point's cell is `floor(coord / grid_size)` (computed in coord's dtype); `grid_coord` is the cell minus
its scene's min cell, so it is >= 0 and relative to the scene's own min corner. Voxels are in canonical
order: by scene, then by the packed key `x << 42 | y << 21 | z` (21 bits per axis, the same packing as
csrc/common.h), i.e. (x, y, z) lexicographically. Inside a voxel, points are ordered by original index.
Train mode picks one uniformly random point per voxel (`pick`): one seed is drawn from `generator`, and
point `(top 32 bits of splitmix64(seed, v)) * count[v] >> 32` of voxel v is taken (csrc/common.h), so
the kernels and this reference agree exactly. Test mode gives fragments: fragment i takes point `i % count[v]` of every voxel v.

`voxelize_reference` is the specification, in plain torch; `torch.ops.volt.voxelize` (CPU, CUDA) must
return identical tensors. Bad input (NaN/Inf, grid_size <= 0, bad offsets, a scene wider than 2^21 cells
on an axis) raises ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from volt.errors import DataError
from volt.ops import _ext

__all__ = ["Voxels", "pack_key", "pick_offset", "voxelize", "voxelize_reference"]

AXIS_BITS = 21  # bits per axis of the packed voxel key (csrc/common.h kAxisBits)
AXIS_LIMIT = 1 << AXIS_BITS
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # splitmix64 constants as signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


@dataclass
class Voxels:
    """Result of `voxelize`; V voxels of N points in B scenes."""

    grid_coord: Tensor  # (V, 3) int32, >= 0, relative to each scene's min corner
    inverse: Tensor  # (N,) int64 point -> voxel
    count: Tensor  # (V,) int64 points per voxel
    voxel_offset: Tensor  # (B,) int64 cumulative voxel counts per scene
    order: Tensor | None  # (N,) int64 point indices sorted by (voxel, index); test mode (else made on demand)
    pick: Tensor | None  # (V,) int64 one random point per voxel (train mode), else None

    @property
    def num_voxels(self) -> int:
        return self.count.numel()

    @property
    def start(self) -> Tensor:
        """(V,) position in `order` of each voxel's first point."""
        return torch.cumsum(self.count, 0) - self.count

    @property
    def num_fragments(self) -> int:
        """Number of test-mode fragments = the densest voxel's point count (0 when empty)."""
        return int(self.count.max()) if self.count.numel() else 0

    def fragment(self, i: int) -> Tensor:
        """(V,) point indices of fragment i: point `i % count[v]` (in index order) of every voxel v."""
        if not 0 <= i < self.num_fragments:
            raise IndexError(f"fragment {i} out of range [0, {self.num_fragments})")
        return self._fragment(i, self.start)

    def fragments(self) -> list[Tensor]:
        """All `num_fragments` fragments: each holds every voxel once; together they cover every point."""
        start = self.start
        return [self._fragment(i, start) for i in range(self.num_fragments)]

    def _fragment(self, i: int, start: Tensor) -> Tensor:
        if self.order is None:  # train mode skips it; a stable sort of the inverse gives the same order
            self.order = torch.sort(self.inverse, stable=True).indices
        return self.order[start + torch.remainder(i, self.count)]


def pack_key(grid: Tensor) -> Tensor:
    """(M, 3) non-negative integer cells -> (M,) int64 key `x << 42 | y << 21 | z`."""
    g = grid.long()
    return (g[:, 0] << 2 * AXIS_BITS) | (g[:, 1] << AXIS_BITS) | g[:, 2]


def _lsr(z: Tensor, k: int) -> Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(seed: int, v: Tensor) -> Tensor:
    """The v-th splitmix64 output for `seed`, as int64 bits (int64 ops wrap like uint64)."""
    z = (v + 1) * _GOLDEN + seed
    z = (z ^ _lsr(z, 30)) * _MIX1
    z = (z ^ _lsr(z, 27)) * _MIX2
    return z ^ _lsr(z, 31)


def pick_offset(seed: int, v: Tensor, count: Tensor) -> Tensor:
    """Random position in [0, count) inside voxel v: top 32 random bits times count, shifted down 32."""
    return (_lsr(splitmix64(seed, v), 32) * count) >> 32


def check_offsets(offset: Tensor, n: int, what: str) -> Tensor:
    """Cumulative end indices: non-decreasing, the last equal to n. Returns the per-scene counts."""
    if offset.dim() != 1 or offset.dtype != torch.int64:
        raise DataError(None, f"volt: offset must be a 1-D int64 tensor, got {offset.dtype} {tuple(offset.shape)}")
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    if offset.numel() and bool((counts < 0).any()):
        s = int(torch.nonzero(counts < 0)[0])
        raise DataError(None, f"volt: offset must be non-decreasing cumulative end indices of the {what}, "
                              f"but offset[{s}] = {int(offset[s])} < {int(offset[s - 1]) if s else 0}")
    last = int(offset[-1]) if offset.numel() else None
    if last != n and not (last is None and n == 0):
        raise DataError(None, f"volt: offset[-1] must equal the number of {what} ({n}), got "
                              f"{'an empty offset' if last is None else last}")
    return counts


def voxelize_reference(coord: Tensor, offset: Tensor, grid_size: Tensor, seed: int | None,
                       with_order: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The specification in plain torch; same arguments and outputs as `torch.ops.volt.voxelize`:
    (grid_coord, inverse, count, voxel_offset, order or (0,), pick or (0,))."""
    n, b, dev = coord.shape[0], offset.numel(), coord.device
    counts = check_offsets(offset, n, "points")
    gs = grid_size.to(coord.dtype)
    bad_gs = ~(torch.isfinite(gs) & (gs > 0))
    if bool(bad_gs.any()):
        s = int(torch.nonzero(bad_gs)[0])
        raise DataError(None, f"volt: grid_size must be finite and > 0, got {float(gs[s])} for scene {s}")
    finite = torch.isfinite(coord).all(1)
    scene = torch.repeat_interleave(torch.arange(b, device=dev), counts)  # (N,)
    if not bool(finite.all()):
        i = int(torch.nonzero(~finite)[0])
        raise DataError(None, f"volt: coord contains NaN or Inf (first at point {i}, scene {int(scene[i])})")
    cell = torch.floor(coord / gs[scene, None])  # (N, 3) integer-valued floats
    idx3 = scene[:, None].expand(-1, 3)
    lo = cell.new_full((b, 3), float("inf")).scatter_reduce_(0, idx3, cell, "amin")
    hi = cell.new_full((b, 3), float("-inf")).scatter_reduce_(0, idx3, cell, "amax")
    extent = hi.double() - lo.double()  # exact whenever the true extent is below 2^21
    too_wide = (counts > 0)[:, None] & ~(extent < AXIS_LIMIT)
    if bool(too_wide.any()):
        s, a = (int(t) for t in torch.nonzero(too_wide)[0])
        raise DataError(None, f"volt: scene {s} spans {float(extent[s, a])} grid cells along axis {'xyz'[a]} "
                              f"(grid_size {float(gs[s])}); the voxel key holds at most {AXIS_LIMIT} per axis: "
                              "use a larger grid_size or split the scene")
    grid = (cell - lo[scene]).long()  # (N, 3) exact: small integers
    key = pack_key(grid)
    # Sort by (scene, key, original index): stable sort by key, then stable sort by scene.
    by_key = torch.sort(key, stable=True).indices
    order = by_key[torch.sort(scene[by_key], stable=True).indices]
    k_sorted, s_sorted = key[order], scene[order]
    new = torch.ones(n, dtype=torch.bool, device=dev)
    new[1:] = (k_sorted[1:] != k_sorted[:-1]) | (s_sorted[1:] != s_sorted[:-1])
    start = torch.nonzero(new).squeeze(1)  # (V,) first sorted position of each voxel
    inverse = torch.empty_like(order)
    inverse[order] = torch.cumsum(new, 0) - 1
    count = torch.diff(start, append=start.new_full((1,), n))
    grid_coord = grid[order[start]].int()
    voxel_offset = torch.cumsum(torch.bincount(s_sorted[start], minlength=b), 0)
    if seed is None:
        pick = order.new_empty(0)
    else:
        v = torch.arange(start.numel(), device=dev)
        pick = order[start + pick_offset(seed, v, count)]
    return grid_coord, inverse, count, voxel_offset, order if with_order else order.new_empty(0), pick


def _grid_size_tensor(grid_size: float | Sequence[float] | Tensor, b: int, coord: Tensor) -> Tensor:
    if not isinstance(grid_size, (int, float)):
        gs = torch.as_tensor(grid_size).to(device=coord.device, dtype=coord.dtype).reshape(-1)
        if gs.numel() == 1 and b != 1:
            gs = gs.expand(b)
        if gs.numel() != b:
            raise DataError(None, f"volt: grid_size must be a float or hold one value per scene ({b}), "
                                  f"got {gs.numel()} values")
        return gs.contiguous()
    return torch.full((b,), float(grid_size), dtype=coord.dtype, device=coord.device)


def voxelize(coord: Tensor, offset: Tensor | Sequence[int], grid_size: float | Sequence[float] | Tensor,
             mode: str = "train", generator: torch.Generator | None = None,
             return_order: bool | None = None) -> Voxels:
    """Voxelize B scenes at once; see the module docstring. `grid_size` is one float or one per scene.
    `order` is returned in test mode (it is what fragments are made of) unless return_order says otherwise."""
    if mode not in ("train", "test"):
        raise ValueError(f"volt: voxelize mode must be 'train' or 'test', got {mode!r}")
    if coord.dim() != 2 or coord.shape[1] != 3 or not coord.is_floating_point():
        raise DataError(None, f"volt: coord must be a float (N, 3) tensor, got {coord.dtype} {tuple(coord.shape)}")
    if coord.dtype not in (torch.float32, torch.float64):
        coord = coord.float()  # half precision cannot hold metric coordinates at cm resolution anyway
    coord = coord.contiguous()
    offset = torch.as_tensor(offset, dtype=torch.int64, device=coord.device).reshape(-1)
    gs = _grid_size_tensor(grid_size, offset.numel(), coord)
    seed = None
    if mode == "train":
        gen_dev = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 1 << 62, (1,), generator=generator, device=gen_dev))
    with_order = mode == "test" if return_order is None else bool(return_order)
    if _ext.use_ext("voxelize", coord.device):
        out = torch.ops.volt.voxelize(coord, offset, gs, seed, with_order)
    else:
        out = voxelize_reference(coord, offset, gs, seed, with_order)
    grid_coord, inverse, count, voxel_offset, order, pick = out
    return Voxels(grid_coord, inverse, count, voxel_offset, order if with_order else None,
                  pick if mode == "train" else None)


def _register_fake() -> None:
    @torch.library.register_fake("volt::voxelize")
    def _fake(coord, offset, grid_size, seed, with_order):
        v = torch.library.get_ctx().new_dynamic_size()
        n, b = coord.shape[0], offset.shape[0]
        long = {"dtype": torch.int64, "device": coord.device}
        return (coord.new_empty((v, 3), dtype=torch.int32), coord.new_empty((n,), **long),
                coord.new_empty((v,), **long), coord.new_empty((b,), **long),
                coord.new_empty((n if with_order else 0,), **long),
                coord.new_empty((v if seed is not None else 0,), **long))


if _ext.has_ext() and hasattr(torch.ops.volt, "voxelize"):
    _register_fake()
