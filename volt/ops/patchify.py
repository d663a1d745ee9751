"""Volumetric patches (spec §1.1 tokenizer): group voxels into P×P×P patches, one token per patch.

`patchify(grid_coord (V,3) int, offset=None, patch_size=5, *, batch=None, num_scenes=None) -> TokenLayout`.
The scenes are given either as `offset` (B,) cumulative voxel counts (voxels of a scene contiguous, as
`voxelize` returns them) or as per-voxel scene ids `batch` (V,); with neither, all voxels are one scene.
A voxel's patch is `p = grid_coord // P` (floor division), its slot in the patch `ox·P² + oy·P + oz`
with `o = grid_coord mod P` (0 <= o < P). Tokens are the distinct (scene, px, py, pz) in lexicographic
order, exactly `torch.unique(rows, dim=0, sorted=True, return_inverse=True)` (the reference toolkit's
way, and `patchify_reference` here), so each scene's tokens are one contiguous run for varlen attention.
`torch.ops.volt.patchify` (CPU, CUDA) computes the same tensors with a radix sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from volt.errors import DataError
from volt.ops import _ext
from volt.ops.voxelize import check_offsets

__all__ = ["TokenLayout", "patchify", "patchify_reference"]

PATCH_LIMIT = 1 << 21  # csrc/common.h kPatchLimit


@dataclass
class TokenLayout:
    """Tokens of B scenes: T tokens made of V voxels."""

    patch_coord: Tensor  # (T, 3) int32 integer patch coordinates (without the scene)
    token_scene: Tensor  # (T,) int64 scene of each token, non-decreasing
    voxel2token: Tensor  # (V,) int64 token of each voxel
    slot: Tensor  # (V,) int64 slot of each voxel in its patch, in [0, P^3)
    cu_seqlens: Tensor  # (B + 1,) int32 cumulative token counts per scene (varlen attention)
    max_seqlen: int  # most tokens in one scene
    patch_size: int

    @property
    def num_tokens(self) -> int:
        return self.patch_coord.shape[0]


def patchify_reference(grid_coord: Tensor, scene: Tensor, num_scenes: int,
                       patch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The specification in plain torch; same arguments and outputs as `torch.ops.volt.patchify`."""
    _check_args(grid_coord, scene, num_scenes, patch_size)
    g = grid_coord.long()
    p = torch.div(g, patch_size, rounding_mode="floor")  # (V, 3) patch index
    o = g - p * patch_size  # (V, 3) in-patch offset, 0 <= o < P
    if p.numel() and not (p.min() >= torch.iinfo(torch.int32).min and p.max() <= torch.iinfo(torch.int32).max):
        raise DataError(None, f"volt::patchify: patch coordinates must fit int32, got [{int(p.min())}, {int(p.max())}]")
    rows = torch.cat([scene[:, None], p], 1)  # (V, 4) = (scene, px, py, pz)
    if rows.shape[0]:
        tokens, voxel2token = torch.unique(rows, dim=0, sorted=True, return_inverse=True)
    else:  # torch.unique(dim=0) rejects empty input
        tokens, voxel2token = rows, scene.clone()
    slot = (o[:, 0] * patch_size + o[:, 1]) * patch_size + o[:, 2]
    cu = torch.zeros(num_scenes + 1, dtype=torch.int32, device=g.device)
    cu[1:] = torch.cumsum(torch.bincount(tokens[:, 0], minlength=num_scenes), 0)
    return tokens[:, 1:].int(), tokens[:, 0].clone(), voxel2token, slot, cu


def _check_args(grid_coord: Tensor, scene: Tensor, num_scenes: int, patch_size: int) -> None:
    if grid_coord.dim() != 2 or grid_coord.shape[1] != 3 or grid_coord.dtype not in (torch.int32, torch.int64):
        raise DataError(None, f"volt::patchify: grid_coord must be int32 or int64 (V, 3), got "
                              f"{grid_coord.dtype} {tuple(grid_coord.shape)}")
    if not 1 <= patch_size < PATCH_LIMIT:
        raise DataError(None, f"volt::patchify: patch_size must be >= 1 and < {PATCH_LIMIT} (slots P^3 must fit "
                              f"int64), got {patch_size}")
    if scene.numel() and not (scene.min() >= 0 and scene.max() < num_scenes):
        raise DataError(None, f"volt::patchify: scene ids must lie in [0, {num_scenes}), got "
                              f"[{int(scene.min())}, {int(scene.max())}]")


def patchify(grid_coord: Tensor, offset: Tensor | None = None, patch_size: int = 5, *,
             batch: Tensor | None = None, num_scenes: int | None = None) -> TokenLayout:
    """Tokens of the voxels `grid_coord`; scenes from `offset` or `batch` (see the module docstring)."""
    if offset is not None and batch is not None:
        raise ValueError("volt: patchify takes either offset or batch, not both")
    dev = grid_coord.device
    v = grid_coord.shape[0]
    if offset is not None:
        offset = torch.as_tensor(offset, dtype=torch.int64, device=dev).reshape(-1)
        counts = check_offsets(offset, v, "voxels")
        b = offset.numel()
        scene = torch.repeat_interleave(torch.arange(b, device=dev), counts)
    elif batch is not None:
        scene = torch.as_tensor(batch, device=dev).long().reshape(-1)
        if scene.numel() != v:
            raise DataError(None, f"volt: batch must hold one scene id per voxel ({v}), got {scene.numel()}")
        b = num_scenes if num_scenes is not None else (int(scene.max()) + 1 if v else 0)
    else:
        b = 1
        scene = torch.zeros(v, dtype=torch.int64, device=dev)
    if num_scenes is not None and num_scenes != b:
        raise ValueError(f"volt: num_scenes={num_scenes} but the offset describes {b} scenes")
    if _ext.use_ext("patchify", dev):
        out = torch.ops.volt.patchify(grid_coord, scene, b, int(patch_size))
    else:
        out = patchify_reference(grid_coord, scene, b, int(patch_size))
    patch_coord, token_scene, voxel2token, slot, cu = out
    max_seqlen = int((cu[1:] - cu[:-1]).max()) if b else 0
    return TokenLayout(patch_coord, token_scene, voxel2token, slot, cu, max_seqlen, int(patch_size))


def _register_fake() -> None:
    @torch.library.register_fake("volt::patchify")
    def _fake(grid_coord, scene, num_scenes, patch_size):
        t = torch.library.get_ctx().new_dynamic_size()
        v = grid_coord.shape[0]
        long = {"dtype": torch.int64, "device": grid_coord.device}
        return (grid_coord.new_empty((t, 3), dtype=torch.int32), grid_coord.new_empty((t,), **long),
                grid_coord.new_empty((v,), **long), grid_coord.new_empty((v,), **long),
                grid_coord.new_empty((num_scenes + 1,), dtype=torch.int32))


if _ext.has_ext() and hasattr(torch.ops.volt, "patchify"):
    _register_fake()
