"""Instance-level augmentations of the Volt training pipeline (spec §1.6 item 12, decision §5 item 6).

Inputs: a sample dict (see volt.data.transforms) with `coord`, `instance` and `segment` (and optionally
`normal`, `color`). Eligible instances are the ids >= 0 among points whose segment is not -1 (the
reference's rule), so wall and floor instances are included by default; a picked instance changes as a
whole. `exclude_classes` (e.g. (0, 1) for ScanNet-20 wall/floor) removes instances whose majority class
is listed. Each transform picks every eligible instance independently with probability p (one draw per
instance, in increasing id order) and changes only the rows of the picked instances: every other row
stays bit-identical. Randomness comes only from the generator passed in. Angles are in units of π.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volt.data.transforms import Sample, rigid, rotation_matrix
from volt.errors import DataError


def instance_groups(data: Sample, exclude_classes: Sequence[int] = ()) -> list[np.ndarray]:
    """Point ids of each eligible instance (increasing id order): ids >= 0 with at least one labelled point
    (segment != -1) whose majority label is not excluded."""
    for k in ("instance", "segment"):
        if k not in data:
            raise DataError(data.get("name"), f"instance augmentation needs a '{k}' field")
    inst, seg = data["instance"], data["segment"]
    rows = np.flatnonzero(inst >= 0)
    rows = rows[np.argsort(inst[rows], kind="stable")]
    groups = np.split(rows, np.flatnonzero(np.diff(inst[rows])) + 1) if rows.size else []
    excluded = {int(c) for c in exclude_classes}
    out = []
    for g in groups:
        labels = seg[g][seg[g] != -1]
        if labels.size and int(np.bincount(labels).argmax()) not in excluded:
            out.append(g)  # the whole instance moves, its unlabelled points included
    return out


@dataclass(kw_only=True)
class _InstanceAug:
    """Shared picking: each eligible instance is chosen with probability p."""

    p: float = 0.2
    exclude_classes: Sequence[int] = ()

    def picked(self, data: Sample, rng: np.random.Generator) -> list[np.ndarray]:
        groups = instance_groups(data, self.exclude_classes)
        chosen = rng.random(len(groups)) < self.p
        return [g for g, c in zip(groups, chosen) if c]

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        for idx in self.picked(data, rng):
            data = self.apply(data, idx, rng)
        return data

    def apply(self, data: Sample, idx: np.ndarray, rng: np.random.Generator) -> Sample:
        raise NotImplementedError


def _centroid(data: Sample, idx: np.ndarray) -> np.ndarray:
    return data["coord"][idx].mean(0).astype(np.float32)


@dataclass(kw_only=True)
class InstanceShift(_InstanceAug):
    """Translate each picked instance by U(±shift_range) per axis (metres)."""

    shift_range: Sequence[float] = (0.1, 0.1, 0.1)

    def apply(self, data: Sample, idx: np.ndarray, rng: np.random.Generator) -> Sample:
        coord = data["coord"].copy()
        r = np.asarray(self.shift_range, np.float64)
        coord[idx] += rng.uniform(-r, r).astype(np.float32)
        data["coord"] = coord
        return data


@dataclass(kw_only=True)
class InstanceRotate(_InstanceAug):
    """Rotate each picked instance by U(angle)·π about `axis` through its centroid (normals too)."""

    angle: Sequence[float] = (-0.25, 0.25)
    axis: str = "z"

    def apply(self, data: Sample, idx: np.ndarray, rng: np.random.Generator) -> Sample:
        rot = rotation_matrix(self.axis, rng.uniform(*self.angle) * np.pi)
        return rigid(data, rot, _centroid(data, idx), idx)


@dataclass(kw_only=True)
class InstanceFlip(_InstanceAug):
    """Mirror each picked instance about its centroid: x with prob flip_prob, then y with prob flip_prob."""

    flip_prob: float = 0.5

    def apply(self, data: Sample, idx: np.ndarray, rng: np.random.Generator) -> Sample:
        center = _centroid(data, idx)
        for axis in (0, 1):
            if rng.random() < self.flip_prob:
                coord = data["coord"].copy()
                coord[idx, axis] = 2 * center[axis] - coord[idx, axis]
                data["coord"] = coord
                if "normal" in data:
                    normal = data["normal"].copy()
                    normal[idx, axis] = -normal[idx, axis]
                    data["normal"] = normal
        return data


@dataclass(kw_only=True)
class InstanceScale(_InstanceAug):
    """Scale each picked instance isotropically by U(scale) about its centroid."""

    scale: Sequence[float] = (0.9, 1.1)

    def apply(self, data: Sample, idx: np.ndarray, rng: np.random.Generator) -> Sample:
        center = _centroid(data, idx)
        coord = data["coord"].copy()
        coord[idx] = (coord[idx] - center) * np.float32(rng.uniform(*self.scale)) + center
        data["coord"] = coord
        return data


@dataclass(kw_only=True)
class InstanceDropOut(_InstanceAug):
    """Label dropout: set segment and instance of a random drop_ratio of a picked instance's points to -1.
    Points are not removed."""

    p: float = 0.1
    drop_ratio: float = 0.5

    def apply(self, data: Sample, idx: np.ndarray, rng: np.random.Generator) -> Sample:
        drop = rng.choice(idx, int(len(idx) * self.drop_ratio), replace=False)
        for k in ("segment", "instance"):
            a = data[k].copy()
            a[drop] = -1
            data[k] = a
        return data


@dataclass(kw_only=True)
class InstanceColorDropout(_InstanceAug):
    """Paint each picked instance with `drop_value` (0 = black)."""

    drop_value: float = 0

    def apply(self, data: Sample, idx: np.ndarray, rng: np.random.Generator) -> Sample:
        if "color" not in data:
            raise DataError(data.get("name"), "InstanceColorDropout needs a 'color' field")
        color = data["color"].copy()
        color[idx] = self.drop_value
        data["color"] = color
        return data


@dataclass(kw_only=True)
class SwapInstances(_InstanceAug):
    """Shuffle the eligible instances into pairs; swap each pair with prob p by translating each instance to
    the other's centroid (point means). With an odd count the last shuffled instance stays put."""

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        groups = instance_groups(data, self.exclude_classes)
        order = rng.permutation(len(groups))
        swap = rng.random(len(groups) // 2) < self.p
        coord = data["coord"]
        moves = []
        for k in np.flatnonzero(swap):
            a, b = groups[order[2 * k]], groups[order[2 * k + 1]]
            ca, cb = _centroid(data, a), _centroid(data, b)
            moves += [(a, cb - ca), (b, ca - cb)]
        if moves:
            coord = coord.copy()
            for idx, delta in moves:  # centroids were all taken before any move
                coord[idx] += delta
            data["coord"] = coord
        return data
