"""Per-scene transforms of the training/validation/test pipelines (spec §1.6, §1.7): geometric and colour
augmentation, cropping, grid sampling, and `Collect`, which packs a sample for `volt.data.collate`.

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
from typing import Any, ClassVar

import numpy as np
import torch

from volt.errors import DataError
from volt.ops.voxelize import voxelize

Sample = dict[str, Any]
POINT_FIELDS = ("coord", "grid_coord", "color", "normal", "strength", "instance", "superpoint", "index")


def point_keys(data: Sample) -> list[str]:
    """Keys holding one row per point (they follow every subsampling): the scene fields and `segment*`."""
    return [k for k, v in data.items() if isinstance(v, np.ndarray) and (k in POINT_FIELDS or k.startswith("segment"))]


def take(data: Sample, idx: np.ndarray) -> Sample:
    """The sample restricted to the points `idx` (every per-point key indexed, the rest kept)."""
    out = dict(data)
    for k in point_keys(data):
        out[k] = np.take(data[k], idx, axis=0)  # np.take: much faster than fancy indexing on (N, 3)
    return out


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from `rng`, so torch-side randomness (voxel picks) follows the same seed."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def bounds(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (min, max) of an (N, C) array (via a contiguous transpose: ~20x faster than a.min(0))."""
    t = np.ascontiguousarray(a.T)
    return t.min(1), t.max(1)


def _coord(data: Sample) -> np.ndarray:
    if "coord" not in data:
        raise DataError(data.get("name"), "sample has no 'coord' field")
    return data["coord"]


def _color(data: Sample) -> np.ndarray:
    if "color" not in data:
        raise DataError(data.get("name"), "a colour transform needs a 'color' field")
    return data["color"].astype(np.float32)  # a new float array in [0, 255]


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
class CenterShift:
    """Subtract the bbox mid of x and y, and the min of z when apply_z (else z is kept)."""

    apply_z: bool = True

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        c = _coord(data)
        lo, hi = bounds(c)
        shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] if self.apply_z else 0], c.dtype)
        data["coord"] = c - shift
        return data


@dataclass
class RandomDropout:
    """With prob application_ratio keep a random (1 - ratio) subset of the points (no replacement, order kept)."""

    ratio: float = 0.2
    application_ratio: float = 0.2

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.application_ratio:
            return data
        n = len(_coord(data))
        keep = np.sort(rng.choice(n, max(1, int(n * (1 - self.ratio))), replace=False))
        return take(data, keep)


def rotation_matrix(axis: str, angle: float) -> np.ndarray:
    """(3,3) float32 right-handed rotation by `angle` radians about axis x, y or z."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r.astype(np.float32)


def rigid(data: Sample, rot: np.ndarray, center: np.ndarray, idx: np.ndarray | slice = slice(None)) -> Sample:
    """Rotate the points idx about `center` (normals rotated too); other rows are left bit-identical."""
    coord = _coord(data).copy()
    coord[idx] = (coord[idx] - center) @ rot.T + center
    data["coord"] = coord
    if "normal" in data:
        normal = data["normal"].copy()
        normal[idx] = normal[idx] @ rot.T
        data["normal"] = normal
    return data


@dataclass
class RandomRotate:
    """With prob p rotate about `axis` by U(angle)·π about `center` (None: the bbox mid). Normals too."""

    angle: Sequence[float] = (-1, 1)
    axis: str = "z"
    center: Sequence[float] | None = None
    p: float = 0.5

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return data
        center = sum(bounds(_coord(data))) / 2 if self.center is None else np.asarray(self.center, np.float32)
        rot = rotation_matrix(self.axis, rng.uniform(*self.angle) * np.pi)
        return rigid(data, rot, center.astype(np.float32))


@dataclass
class RandomScale:
    """Multiply coord by one isotropic factor U(scale) (always applied)."""

    scale: Sequence[float] = (0.9, 1.1)

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        data["coord"] = _coord(data) * np.float32(rng.uniform(*self.scale))
        return data


@dataclass
class RandomFlip:
    """Negate x with prob p, then independently y with prob p (normals included)."""

    p: float = 0.5

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        for axis in (0, 1):
            if rng.random() < self.p:
                for k in ("coord", "normal"):
                    if k in data:
                        a = data[k].copy()
                        a[:, axis] = -a[:, axis]
                        data[k] = a
        return data


@dataclass
class RandomJitter:
    """Add per-point Gaussian noise N(0, sigma²) clipped to ±clip (metres)."""

    sigma: float = 0.005
    clip: float = 0.02

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        c = _coord(data)
        noise = np.clip(self.sigma * rng.standard_normal(c.shape, dtype=np.float32), -self.clip, self.clip)
        data["coord"] = c + noise
        return data


def box_blur(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean of each cell and its two neighbours along `axis`, zero beyond the border."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 1)
    p = np.pad(a, pad)
    sl = lambda lo, hi: tuple(slice(lo, hi) if d == axis else slice(None) for d in range(a.ndim))
    return (p[sl(0, -2)] + p[sl(1, -1)] + p[sl(2, None)]) / np.float32(3)


def trilinear(grid: np.ndarray, origin: np.ndarray, cell: float, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of grid (X,Y,Z,C) with node (i,j,k) at origin + cell·(i,j,k); 0 outside."""
    u = (points - origin) / cell  # (N, 3) fractional node index
    dims = np.array(grid.shape[:3])
    inside = np.all((u >= 0) & (u <= dims - 1), axis=1)
    i0 = np.clip(np.floor(u).astype(np.int64), 0, dims - 2)
    t = np.ascontiguousarray((u - i0).astype(np.float32).T)  # (3, N)
    w = (1 - t, t)  # weights of the lower / upper node per axis
    strides = np.array([dims[1] * dims[2], dims[2], 1])
    base, flat = i0 @ strides, grid.reshape(-1, grid.shape[3])  # flat node index of the lower corner
    out = np.zeros((len(points), grid.shape[3]), np.float32)
    for cx, cy, cz in np.ndindex(2, 2, 2):
        weight = w[cx][0] * w[cy][1] * w[cz][2]  # (N,)
        out += weight[:, None] * np.take(flat, base + (cx * strides[0] + cy * strides[1] + cz), axis=0)
    out[~inside] = 0
    return out


def elastic_noise(coord: np.ndarray, granularity: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed noise grid (X,Y,Z,3) over coord's bbox and its origin: cell = granularity, one node of
    margin on each side, Gaussian noise box-blurred along x, y, z twice."""
    lo, hi = bounds(coord)
    dims = ((hi - lo) // granularity).astype(np.int64) + 3
    noise = rng.standard_normal((*dims, 3), dtype=np.float32)
    for _ in range(2):
        for axis in range(3):
            noise = box_blur(noise, axis)
    return noise, (lo - granularity).astype(np.float32)


@dataclass
class ElasticDistortion:
    """With prob p, for each (granularity, magnitude) pass: coord += trilinear(smoothed noise)(coord)·magnitude.

    Trilinear weights are a convex combination and box blurs are averages, so every displacement component
    is at most magnitude × max|noise grid| (tested)."""

    params: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6))
    p: float = 0.95

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return data
        c = _coord(data)
        for granularity, magnitude in self.params:
            grid, origin = elastic_noise(c, granularity, rng)
            c = c + trilinear(grid, origin, granularity, c) * np.float32(magnitude)
        data["coord"] = c
        return data


@dataclass
class ChromaticAutoContrast:
    """With prob p stretch each channel's [min, max] to [0, 255] and blend with the original by U(0,1)."""

    p: float = 0.2
    blend_factor: float | None = None

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return data
        color = _color(data)
        lo, hi = bounds(color)
        span = hi - lo
        scale = np.where(span > 0, 255 / np.maximum(span, 1e-6), 1).astype(np.float32)  # flat channel: unchanged
        contrast = np.where(span > 0, (color - lo) * scale, color)
        blend = rng.random() if self.blend_factor is None else self.blend_factor
        data["color"] = np.clip((1 - blend) * color + blend * contrast, 0, 255).astype(np.float32)
        return data


@dataclass
class ChromaticTranslation:
    """With prob p add one RGB offset U(-0.5, 0.5)·255·2·ratio to every point, clipped to [0, 255]."""

    p: float = 0.95
    ratio: float = 0.05

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return data
        shift = (rng.random(3, dtype=np.float32) - 0.5) * 255 * 2 * self.ratio
        data["color"] = np.clip(_color(data) + shift, 0, 255)
        return data


@dataclass
class ChromaticJitter:
    """With prob p add per-point Gaussian RGB noise with σ = std·255, clipped to [0, 255]."""

    p: float = 0.95
    std: float = 0.05

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return data
        color = _color(data)
        noise = rng.standard_normal(color.shape, dtype=np.float32) * np.float32(self.std * 255)
        data["color"] = np.clip(color + noise, 0, 255)
        return data


@dataclass
class NormalizeColor:
    """color / 255 as float32."""

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if "color" in data:
            data["color"] = _color(data) / np.float32(255)
        return data


@dataclass
class PointClipDistance:
    """Project points farther than max_dist (3-D norm from the sensor) onto that sphere, then clamp z to
    [z_min, z_max]. No point is removed."""

    max_dist: float = 70.0
    z_min: float = -4.0
    z_max: float = 2.0

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        c = _coord(data)
        dist = np.linalg.norm(c, axis=1, keepdims=True)
        factor = np.where(dist > self.max_dist, self.max_dist / np.maximum(dist, 1e-12), 1).astype(c.dtype)
        c = c * factor
        c[:, 2] = np.clip(c[:, 2], self.z_min, self.z_max)
        data["coord"] = c
        return data


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
        coord = torch.from_numpy(np.ascontiguousarray(_coord(data)))
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
        idx, center = self.crop_indices(_coord(data), rng)
        if center is None:
            return data
        if "inverse" in data:
            raise DataError(data.get("name"), "SphereCrop after GridSample(return_inverse=True) would orphan points")
        return take(data, idx)


@dataclass
class Collect:
    """Pack a sample: coord float32, grid_coord int32, feat float32 = concat(feat_keys), segment int64,
    plus `condition`, `name` and any of inverse / origin_segment / index (int64) present."""

    feat_keys: Sequence[str] = ("color", "normal")
    condition: str = "Default"
    keys: Sequence[str] = ("coord", "grid_coord", "segment")
    PASS: ClassVar[tuple[str, ...]] = ("inverse", "origin_segment", "index")

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        missing = [k for k in (*self.keys, *self.feat_keys) if k not in data]
        if missing:
            raise DataError(data.get("name"), f"Collect: sample has no {missing} (has {sorted(data)})")
        n = len(data["coord"])
        out: Sample = {"name": data.get("name", ""), "condition": self.condition}
        dtypes = {"coord": np.float32, "grid_coord": np.int32, "segment": np.int64}
        for k in self.keys:
            out[k] = np.ascontiguousarray(data[k], dtype=dtypes.get(k, data[k].dtype))
        out["feat"] = np.concatenate([np.asarray(data[k], np.float32).reshape(n, -1) for k in self.feat_keys], 1)
        for k in self.PASS:
            if k in data:
                out[k] = np.asarray(data[k], np.int64)
        return out
