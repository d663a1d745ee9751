"""The in-memory scene: one point cloud with its per-point fields, shared by every reader.

A `Scene` is what every reader returns (ScanNet, nuScenes, SemanticKITTI, PLY/NPY/TXT/LAS files)
and what `volt.data.io.write_scene` stores as one `.npy` per field. Field conventions:

| field        | dtype   | shape | meaning                                             |
|--------------|---------|-------|-----------------------------------------------------|
| coord        | float32 | (N,3) | metres                                              |
| color        | uint8   | (N,3) | RGB 0..255                                          |
| strength     | float32 | (N,1) | LiDAR intensity/remission, scaled to about [0, 1]   |
| normal       | float32 | (N,3) | unit normals (meshes only)                          |
| segment*     | int32   | (N,)  | class index, -1 = ignore (`segment`, `segment20`, …) |
| instance     | int32   | (N,)  | instance id, -1 = none                              |
| superpoint   | int32   | (N,)  | contiguous over-segment id                          |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from volt.errors import DataError

# name -> (dtype, width); width None means a 1-D array of length N.
FIELDS: dict[str, tuple[type, int | None]] = {
    "coord": (np.float32, 3),
    "color": (np.uint8, 3),
    "strength": (np.float32, 1),
    "normal": (np.float32, 3),
    "instance": (np.int32, None),
    "superpoint": (np.int32, None),
}
LABEL_PREFIX = "segment"  # segment, segment20, segment200 are all class-index fields


def field_spec(name: str) -> tuple[type, int | None]:
    if name in FIELDS:
        return FIELDS[name]
    if name.startswith(LABEL_PREFIX):
        return (np.int32, None)
    raise KeyError(f"unknown scene field '{name}' (known: {sorted(FIELDS)} and segment*)")


@dataclass
class Scene:
    """One point cloud: `arrays` maps field name -> array with N rows; `meta` is JSON-serializable."""

    name: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return int(self.arrays["coord"].shape[0])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def validate(self, source: str | None = None, num_classes: dict[str, int] | None = None) -> Scene:
        """Cast fields to their canonical dtypes and check shapes and values.

        `source` is the file named in errors; `num_classes` maps a label field to its class count so
        out-of-range ids are caught. Returns self (arrays are replaced by canonical-dtype copies).
        """
        where = source or self.name
        if "coord" not in self.arrays:
            raise DataError(where, "scene has no 'coord' field")
        coord = np.asarray(self.arrays["coord"])
        if coord.ndim != 2 or coord.shape[1] != 3:
            raise DataError(where, f"coordinates must have shape (N, 3), got {coord.shape}")
        n = coord.shape[0]
        if n == 0:
            raise DataError(where, "the point cloud is empty (0 points)")
        for name, value in list(self.arrays.items()):
            dtype, width = field_spec(name)
            arr = np.asarray(value)
            if arr.shape[0] != n:
                raise DataError(where, f"field '{name}' has {arr.shape[0]} rows but the cloud has {n} points")
            if width is None:
                arr = arr.reshape(n) if arr.ndim == 2 and arr.shape[1] == 1 else arr
                if arr.ndim != 1:
                    raise DataError(where, f"field '{name}' must be 1-D, got shape {arr.shape}")
            else:
                arr = arr.reshape(n, 1) if width == 1 and arr.ndim == 1 else arr
                if arr.ndim != 2 or arr.shape[1] != width:
                    raise DataError(where, f"field '{name}' must have shape (N, {width}), got {arr.shape}")
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).any(axis=-1).sum()) if arr.ndim == 2 else int((~np.isfinite(arr)).sum())
                raise DataError(where, f"field '{name}' has {bad} rows with NaN or Inf values")
            if dtype is np.uint8 and np.issubdtype(arr.dtype, np.floating):
                if arr.min() < 0 or arr.max() > 255:
                    raise DataError(where, f"field '{name}' has values outside 0..255")
                arr = np.round(arr)
            if np.issubdtype(dtype, np.integer) and width is None:
                if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
                    raise DataError(where, f"field '{name}' holds non-integer ids")
                if arr.size and arr.min() < -1:
                    raise DataError(where, f"field '{name}' has ids below -1 (min {int(arr.min())})")
                limit = (num_classes or {}).get(name)
                if limit is not None and arr.size and arr.max() >= limit:
                    raise DataError(
                        where, f"field '{name}' has class id {int(arr.max())}, out of range for {limit} classes"
                    )
            self.arrays[name] = np.ascontiguousarray(arr, dtype=dtype)
        return self
