"""Geometric transforms of the training/validation pipelines (spec §1.6): centring, rigid rotation, scaling,
translation, flips, jitter, elastic distortion and the outdoor range clip. Re-exported by volt.data.transforms.

Inputs/outputs: a sample dict with `coord` (N,3) float32 and optionally `normal` (N,3); each transform is
`t(data, rng) -> data`, draws only from `rng` and writes new arrays (never into the input ones). Angles are
in units of π, as in the reference configs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volt.data.transforms_base import RandomApply, Sample, bounds, coord_of


@dataclass
class CenterShift:
    """Subtract the bbox mid of x and y, and the min of z when apply_z (else z is kept)."""

    apply_z: bool = True

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        c = coord_of(data)
        lo, hi = bounds(c)
        shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] if self.apply_z else 0], c.dtype)
        data["coord"] = c - shift
        return data


def rotation_matrix(axis: str, angle: float) -> np.ndarray:
    """(3,3) float32 right-handed rotation by `angle` radians about axis x, y or z."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r.astype(np.float32)


def rigid(data: Sample, rot: np.ndarray, center: np.ndarray, idx: np.ndarray | slice = slice(None)) -> Sample:
    """Rotate the points idx about `center` (normals rotated too); other rows are left bit-identical."""
    coord = coord_of(data).copy()
    coord[idx] = (coord[idx] - center) @ rot.T + center
    data["coord"] = coord
    if "normal" in data:
        normal = data["normal"].copy()
        normal[idx] = normal[idx] @ rot.T
        data["normal"] = normal
    return data


@dataclass
class RandomRotate(RandomApply):
    """With prob p rotate about `axis` by U(angle)·π about `center` (None: the bbox mid). Normals too."""

    angle: Sequence[float] = (-1, 1)
    axis: str = "z"
    center: Sequence[float] | None = None
    p: float = 0.5

    def apply(self, data: Sample, rng: np.random.Generator) -> Sample:
        center = sum(bounds(coord_of(data))) / 2 if self.center is None else np.asarray(self.center, np.float32)
        rot = rotation_matrix(self.axis, rng.uniform(*self.angle) * np.pi)
        return rigid(data, rot, center.astype(np.float32))


@dataclass
class RandomScale:
    """Multiply coord by one isotropic factor U(scale) (always applied)."""

    scale: Sequence[float] = (0.9, 1.1)

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        data["coord"] = coord_of(data) * np.float32(rng.uniform(*self.scale))
        return data


@dataclass
class RandomShift:
    """Translate the whole scene by U(−r, r) per axis (metres)."""

    shift: Sequence[float] = (0.5, 0.5, 0.0)

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        c = coord_of(data)
        r = np.asarray(self.shift, np.float64)
        data["coord"] = (c + rng.uniform(-r, r)).astype(c.dtype)
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
        c = coord_of(data)
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
class ElasticDistortion(RandomApply):
    """With prob p, for each (granularity, magnitude) pass: coord += trilinear(smoothed noise)(coord)·magnitude.

    Trilinear weights are a convex combination and box blurs are averages, so every displacement component
    is at most magnitude × max|noise grid| (tested)."""

    params: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6))
    p: float = 0.95

    def apply(self, data: Sample, rng: np.random.Generator) -> Sample:
        c = coord_of(data)
        for granularity, magnitude in self.params:
            grid, origin = elastic_noise(c, granularity, rng)
            c = c + trilinear(grid, origin, granularity, c) * np.float32(magnitude)
        data["coord"] = c
        return data


@dataclass
class PointClipDistance:
    """Project points farther than max_dist (3-D norm from the sensor) onto that sphere, then clamp z to
    [z_min, z_max]. No point is removed."""

    max_dist: float = 70.0
    z_min: float = -4.0
    z_max: float = 2.0

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        c = coord_of(data)
        dist = np.linalg.norm(c, axis=1, keepdims=True)
        factor = np.where(dist > self.max_dist, self.max_dist / np.maximum(dist, 1e-12), 1).astype(c.dtype)
        c = c * factor
        c[:, 2] = np.clip(c[:, 2], self.z_min, self.z_max)
        data["coord"] = c
        return data
