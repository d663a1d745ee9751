"""Shared pieces of the per-scene transforms (volt.data.transforms and its split-out modules): the sample
type, per-point indexing, field access that raises DataError, and `RandomApply`, the base of every transform
that fires with a probability.

Inputs/outputs: a sample is a dict of numpy arrays (one row per point for the keys `point_keys` lists)
plus `name`; see volt.data.transforms for the conventions every transform follows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from volt.errors import DataError

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


def coord_of(data: Sample) -> np.ndarray:
    """data["coord"], or DataError naming the sample when it is missing."""
    if "coord" not in data:
        raise DataError(data.get("name"), "sample has no 'coord' field")
    return data["coord"]


class RandomApply(ABC):
    """Base of the transforms that fire with probability `p` (a dataclass field of the subclass).

    `__call__` draws exactly one `rng.random()` first and runs `apply` only when it is below p, so every
    subclass spends its draws in the same order as before the check was shared (seeded pipelines unchanged).
    """

    p: float

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return data
        return self.apply(data, rng)

    @abstractmethod
    def apply(self, data: Sample, rng: np.random.Generator) -> Sample:
        """The transform itself, run when the probability draw succeeds."""
