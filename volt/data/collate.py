"""Collate samples (output of a pipeline's `Collect`) into one batch, with Mix3D-style mixing (spec §1.5).

Batch (torch tensors): coord float32 (V,3), grid_coord int32 (V,3), feat float32 (V,C), segment int64 (V,),
offset int64 (B',) cumulative scene ends AFTER mixing, unmixed_offset int64 (B,) sample ends before mixing,
condition / name: lists of B strings. Validation samples add `inverse` (original point -> row of THIS batch,
i.e. shifted by the sample's first row) and `origin_segment`; test fragments add `index` (concatenated
unshifted: it indexes the scene's own points). Any other key is gathered into a list, one entry per sample.

Mixing: with probability mix_prob per batch, consecutive samples are merged pairwise (0+1, 2+3, ...) by
dropping every other offset boundary; rows are not reordered, so every point keeps its own label. Samples
tagged with a "grid_size" (joint training, volt.data.samplers.JointSample) are merged only with a partner of
the same grid size: grid coordinates of a 2 cm and a 5 cm scene do not share a geometry. Both
clouds keep their grid_coord (each relative to its own min corner), so two rows of a merged scene can
share a voxel. Our rule (decision §5 item 5), chosen by `duplicates`:
- "keep" (default, the reference's overlay): duplicates stay. The Volt tokenizer SUMS the features of
  voxels that fall in the same patch slot (volt/models/tokenizer.py), a deterministic reduction, and each
  duplicate row decodes from that shared slot and keeps its own label.
- "drop": within each merged scene only the first row of every voxel is kept (rows of sample 2k win over
  sample 2k+1); unmixed_offset is recounted. Needed by consumers that refuse duplicate voxels, e.g. the
  sparse-convolution teacher (volt/models/sparse_unet.py raises on duplicates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from volt.errors import DataError

ROW_KEYS = {"coord": torch.float32, "grid_coord": torch.int32, "feat": torch.float32, "segment": torch.int64,
            "index": torch.int64}
FLAT_KEYS = {"origin_segment": torch.int64}  # per original point: concatenated as is
LIST_KEYS = ("condition", "name")
DUPLICATES = ("keep", "drop")


def _tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x)).to(dtype)


def mix_offsets(offset: torch.Tensor, mixable: Sequence[bool] | None = None) -> torch.Tensor:
    """Merge consecutive samples pairwise: drop every other boundary (an odd last sample stays alone).

    `mixable[k]` False keeps pair (2k, 2k+1) apart."""
    keep = torch.ones(offset.numel(), dtype=torch.bool)
    pairs = offset.numel() // 2
    merge = torch.ones(pairs, dtype=torch.bool) if mixable is None else torch.as_tensor(list(mixable), dtype=torch.bool)
    keep[0:2 * pairs:2] = ~merge  # the end of sample 2k is the boundary a merge removes
    return offset[keep]


def mixable_pairs(samples: Sequence[dict[str, Any]]) -> list[bool] | None:
    """Per pair (2k, 2k+1): may it be overlaid? Only samples of equal "grid_size" (None: no tags, all may)."""
    if "grid_size" not in samples[0]:
        return None
    sizes = [float(s["grid_size"]) for s in samples]
    return [sizes[2 * k] == sizes[2 * k + 1] for k in range(len(samples) // 2)]


def drop_duplicate_voxels(batch: dict[str, Any]) -> dict[str, Any]:
    """Keep the first row of every (scene, grid_coord) voxel; recount offset and unmixed_offset."""
    if "inverse" in batch:
        raise DataError(None, "duplicates='drop' would orphan the points of a validation batch (it has 'inverse')")
    n = batch["grid_coord"].shape[0]
    counts = torch.diff(batch["offset"], prepend=batch["offset"].new_zeros(1))
    scene = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    rows = torch.cat([scene[:, None], batch["grid_coord"].long()], 1)  # (V, 4)
    _, inv = torch.unique(rows, dim=0, return_inverse=True)
    arange = torch.arange(n)
    first = torch.full((int(inv.max()) + 1 if n else 0,), n, dtype=torch.long).scatter_reduce_(0, inv, arange, "amin")
    keep = first[inv] == arange  # (V,) the first row of each voxel
    kept_before = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(keep.long(), 0)])
    for k in ("offset", "unmixed_offset"):
        batch[k] = kept_before[batch[k]]  # rows kept before each boundary
    for k in ROW_KEYS:
        if k in batch:
            batch[k] = batch[k][keep]
    return batch


def collate(samples: Sequence[dict[str, Any]], mix_prob: float = 0.0, rng: np.random.Generator | None = None,
            duplicates: str = "keep") -> dict[str, Any]:
    """Concatenate samples into one batch (see the module docstring); mixing draws from `rng`."""
    if not samples:
        raise DataError(None, "cannot collate an empty list of samples")
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    keys = set(samples[0])
    for s in samples:
        if set(s) != keys:
            raise DataError(s.get("name"), f"sample keys {sorted(s)} differ from the first sample's {sorted(keys)}")
        rows = len(s["coord"])
        bad = [k for k in ROW_KEYS if k in s and len(s[k]) != rows]
        if bad:
            raise DataError(s.get("name"), f"per-row keys {bad} do not have {rows} rows like coord")
    counts = torch.tensor([len(s["coord"]) for s in samples], dtype=torch.int64)
    offset = torch.cumsum(counts, 0)
    batch: dict[str, Any] = {}
    for k in keys:
        if k in ROW_KEYS:
            batch[k] = torch.cat([_tensor(s[k], ROW_KEYS[k]) for s in samples])
        elif k in FLAT_KEYS:
            batch[k] = torch.cat([_tensor(s[k], FLAT_KEYS[k]) for s in samples])
        elif k == "inverse":  # original point -> row of this batch
            starts = (offset - counts).tolist()
            batch[k] = torch.cat([_tensor(s[k], torch.int64) + st for s, st in zip(samples, starts)])
        else:
            batch[k] = [s[k] for s in samples]
    batch["offset"], batch["unmixed_offset"] = offset, offset.clone()
    if mix_prob > 0 and len(samples) > 1:
        if rng is None:
            raise ValueError("mixing (mix_prob > 0) draws from a numpy Generator: pass rng (or use Collate(seed=...))")
        if rng.random() < mix_prob:
            batch["offset"] = mix_offsets(offset, mixable_pairs(samples))
            if duplicates == "drop":
                batch = drop_duplicate_voxels(batch)
    return batch


class Collate:
    """`collate` with its own generator, for a DataLoader (`reseed` is called per worker by volt.data.loader)."""

    def __init__(self, mix_prob: float = 0.0, duplicates: str = "keep", seed: int | None = None):
        if duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
        self.mix_prob, self.duplicates = mix_prob, duplicates
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | np.random.SeedSequence) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples, self.mix_prob, self.rng, self.duplicates)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mix_prob={self.mix_prob}, duplicates={self.duplicates!r})"
