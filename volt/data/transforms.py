"""Per-scene transforms of the training/validation/test pipelines (spec §1.6, §1.7): `Compose`, field
selection, dropout, cropping, grid sampling and `Collect`, which packs a sample for `volt.data.collate`. The
geometric and colour augmentations live in volt.data.transforms_geometric / transforms_color and the shared
helpers in volt.data.transforms_base; all are re-exported here, so `volt.data.transforms` is the one import.

A sample is a dict of numpy arrays (`coord` (N,3) float32, `color` (N,3), `normal` (N,3), `strength` (N,1),
`segment*`/`instance`/`superpoint` (N,)) plus `name`. Every transform is a callable `t(data, rng) -> data`;
random ones draw only from the `numpy.random.Generator` they are given (never a global RNG), so a seeded
`Compose` reproduces its samples exactly. Transforms never write into an input array (a scene dict can be
reused, e.g. for several test views); they return new arrays. Colours become float32 in [0, 255] at the first
colour transform and [0, 1] after `NormalizeColor`. Angles are in units of π, as in the reference configs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from volt.data.transforms_base import (
    POINT_FIELDS,
    RandomApply,
    Sample,
    bounds,
    coord_of,
    point_keys,
    take,
    torch_generator,
)
from volt.data.transforms_color import (
    ChromaticAutoContrast,
    ChromaticJitter,
    ChromaticTranslation,
    NormalizeColor,
    color_of,
)
from volt.data.transforms_geometric import (
    CenterShift,
    ElasticDistortion,
    PointClipDistance,
    RandomFlip,
    RandomJitter,
    RandomRotate,
    RandomScale,
    RandomShift,
    box_blur,
    elastic_noise,
    rigid,
    rotation_matrix,
    trilinear,
)
from volt.errors import DataError
from volt.ops.voxelize import voxelize  # a module global here, so tests can count GridSample's calls

__all__ = [
    "POINT_FIELDS", "CenterShift", "ChromaticAutoContrast", "ChromaticJitter", "ChromaticTranslation", "Collect",
    "Compose", "Copy", "ElasticDistortion", "GridSample", "NormalizeColor", "PointClipDistance", "RandomApply",
    "RandomDropout", "RandomFlip", "RandomJitter", "RandomRotate", "RandomScale", "RandomShift", "Sample",
    "SelectFields",
    "SphereCrop", "bounds", "box_blur", "color_of", "coord_of", "elastic_noise", "point_keys", "rigid",
    "rotation_matrix", "take", "torch_generator", "trilinear",
]


class Compose:
    """Apply transforms in order with one generator: the one passed in, else the pipeline's own (`seed`)."""

    def __init__(self, transforms: Sequence[Callable[[Sample, np.random.Generator], Sample]], seed: int | None = None):
        self.transforms = list(transforms)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | np.random.SeedSequence) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, data: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = self.rng if rng is None else rng
        data = dict(data)  # the caller's dict is never modified
        for t in self.transforms:
            data = t(data, rng)
        return data

    def __repr__(self) -> str:
        return "Compose(\n" + "".join(f"  {t!r},\n" for t in self.transforms) + ")"


@dataclass
class Copy:
    """data[dst] = data[src] (e.g. segment -> origin_segment before voxelization)."""

    src: str
    dst: str

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if self.src in data:
            data[self.dst] = data[self.src]
        return data


@dataclass
class SelectFields:
    """Keep `fields` (+ `name`), renaming `rename` keys (e.g. segment20 -> segment); missing required ones raise."""

    fields: Sequence[str]
    rename: dict[str, str] = field(default_factory=dict)
    optional: Sequence[str] = ()

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        out: Sample = {"name": data.get("name", "")}
        for k in self.fields:
            dst = self.rename.get(k, k)
            src = k if k in data else dst  # already renamed upstream (SceneDataset(rename=...))
            if src in data:
                out[dst] = data[src]
            elif k not in self.optional:
                raise DataError(data.get("name"), f"sample has no field '{k}' (has {sorted(data)})")
        return out


@dataclass
class RandomDropout(RandomApply):
    """With prob application_ratio keep a random (1 - ratio) subset of the points (no replacement, order kept)."""

    ratio: float = 0.2
    application_ratio: float = 0.2

    @property
    def p(self) -> float:  # RandomApply's probability under the reference config's name
        return self.application_ratio

    def apply(self, data: Sample, rng: np.random.Generator) -> Sample:
        n = len(coord_of(data))
        keep = np.sort(rng.choice(n, max(1, int(n * (1 - self.ratio))), replace=False))
        return take(data, keep)


@dataclass
class GridSample:
    """Grid sampling through `volt.ops.voxelize` (the one definition of a voxel, spec §1.7).

    train mode: one random point per voxel, rows in voxel order; every per-point key is indexed and
    `grid_coord` (int32, >= 0) added; with return_inverse, `inverse` maps each original point to its row (an
    existing `inverse` is composed, so chained subsamplings still map the original points).
    test mode: `__call__` returns a list of fragments (dicts); fragment i holds point i % count of every
    voxel, plus `grid_coord` and `index` (int64 point ids), so together they cover every point.
    """

    grid_size: float = 0.02
    mode: str = "train"
    return_inverse: bool = False

    def __post_init__(self):
        if self.mode not in ("train", "test"):
            raise ValueError(f"GridSample mode must be 'train' or 'test', got {self.mode!r}")

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample | list[Sample]:
        coord = torch.from_numpy(np.ascontiguousarray(coord_of(data)))
        offset = torch.tensor([len(coord)], dtype=torch.int64)
        gen = torch_generator(rng) if self.mode == "train" else None
        vox = voxelize(coord, offset, self.grid_size, self.mode, generator=gen)
        grid_coord = vox.grid_coord.numpy()
        if self.mode == "test":
            frags = []
            for idx in vox.fragments():
                idx = idx.numpy()
                frag = take(data, idx)
                frag["grid_coord"], frag["index"] = grid_coord, idx.astype(np.int64)
                frags.append(frag)
            return frags
        out = take(data, vox.pick.numpy())
        out["grid_coord"] = grid_coord
        if self.return_inverse:
            inverse = vox.inverse.numpy()
            out["inverse"] = inverse[data["inverse"]] if "inverse" in data else inverse
        return out


@dataclass
class SphereCrop:
    """Keep the n points nearest to a centre (a random point, or the bbox mid in mode "center").

    n = U(sample_rate)·N when sample_rate is set (a float r means U(r, 1)), capped at point_max.
    Kept points stay in their original order. Nothing happens when n >= N."""

    sample_rate: float | Sequence[float] | None = None
    point_max: int | None = None
    mode: str = "random"

    def __post_init__(self):
        if self.mode not in ("random", "center"):
            raise ValueError(f"SphereCrop mode must be 'random' or 'center', got {self.mode!r}")
        if self.sample_rate is None and self.point_max is None:
            raise ValueError("SphereCrop needs sample_rate or point_max")

    def crop_indices(self, coord: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """(kept point ids in order, centre or None when nothing is cropped)."""
        n_all = len(coord)
        rate = self.sample_rate
        n = n_all if rate is None else int(rng.uniform(*((rate, 1.0) if np.isscalar(rate) else rate)) * n_all)
        n = max(1, min(n, self.point_max if self.point_max is not None else n))
        if n >= n_all:
            return np.arange(n_all), None
        center = coord[rng.integers(n_all)] if self.mode == "random" else sum(bounds(coord)) / 2
        d2 = np.square(coord - center).sum(1)
        return np.sort(np.argpartition(d2, n - 1)[:n]), center

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        idx, center = self.crop_indices(coord_of(data), rng)
        if center is None:
            return data
        if "inverse" in data:
            raise DataError(data.get("name"), "SphereCrop after GridSample(return_inverse=True) would orphan points")
        return take(data, idx)


@dataclass
class Collect:
    """Pack a sample: the `keys` (coord float32, grid_coord int32, segment / instance / superpoint int64, any
    other key in its own dtype), feat float32 = concat(feat_keys), plus `condition`, `name` and any of
    inverse / origin_segment / origin_instance / index (int64) present."""

    feat_keys: Sequence[str] = ("color", "normal")
    condition: str = "Default"
    keys: Sequence[str] = ("coord", "grid_coord", "segment")
    PASS: ClassVar[tuple[str, ...]] = ("inverse", "origin_segment", "origin_instance", "index")
    DTYPES: ClassVar[dict[str, type]] = {"coord": np.float32, "grid_coord": np.int32, "segment": np.int64,
                                         "instance": np.int64, "superpoint": np.int64}

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        missing = [k for k in (*self.keys, *self.feat_keys) if k not in data]
        if missing:
            raise DataError(data.get("name"), f"Collect: sample has no {missing} (has {sorted(data)})")
        n = len(data["coord"])
        out: Sample = {"name": data.get("name", ""), "condition": self.condition}
        for k in self.keys:
            out[k] = np.ascontiguousarray(data[k], dtype=self.DTYPES.get(k, data[k].dtype))
        out["feat"] = np.concatenate([np.asarray(data[k], np.float32).reshape(n, -1) for k in self.feat_keys], 1)
        for k in self.PASS:
            if k in data:
                out[k] = np.asarray(data[k], np.int64)
        return out
