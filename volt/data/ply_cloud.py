"""PLY point clouds, and the per-point column conventions shared with text files.

`read_ply(path)` turns any PLY vertex element (ascii or binary, any property order) into a `Scene`;
`write_ply(path, scene)` writes a binary PLY that `read_ply` reads back losslessly. The helpers
`arrays_from_columns`, `color_to_uint8`, `scale_strength` and `coord_to_float32` hold the naming and
value rules that every user-file reader in `volt.data.readers` applies the same way:

| scene field | property / column names (case-insensitive, first match wins)                  |
|-------------|--------------------------------------------------------------------------------|
| coord       | x, y, z (required)                                                             |
| color       | red/green/blue or r/g/b; alpha is ignored                                      |
| normal      | nx/ny/nz or normal_x/normal_y/normal_z                                         |
| strength    | intensity, scalar_intensity, reflectance, strength, remission                  |
| segment     | label, class, segment, semantic, scalar_label                                  |
| instance    | instance, instance_id                                                          |
| segment<k>, superpoint | the same name (what `write_ply` writes for those fields)            |

Value rules: float colors whose maximum is <= 1 are taken as 0..1 and scaled to 0..255; 16-bit integer
colors (maximum > 255) keep their high byte. Strength values whose maximum is <= 1 are kept; larger
8- and 16-bit integers are divided by their dtype maximum (uchar 255, ushort 65535), floats and wider
integers by 255 or 65535, whichever first bounds the data, or else by the data maximum. Coordinates far from the
origin (any |value| > 1e4 m, e.g. UTM) are shifted by the floor of their minimum before the float32
cast, which would otherwise round them to decimetres; the shift is kept in `meta["coord_offset"]`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.io import atomic_write
from volt.data.scene import Scene
from volt.errors import DataError

# (scene field, alternative column-name groups); each group lists the columns of one field.
_ALIASES: list[tuple[str, list[tuple[str, ...]]]] = [
    ("color", [("red", "green", "blue"), ("r", "g", "b")]),
    ("normal", [("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z")]),
    ("strength", [("intensity",), ("scalar_intensity",), ("reflectance",), ("strength",), ("remission",)]),
    ("segment", [("label",), ("class",), ("segment",), ("semantic",), ("scalar_label",)]),
    ("instance", [("instance",), ("instance_id",)]),
]
_VERBATIM = re.compile(r"^(segment\d+|superpoint)$")  # canonical Scene fields stored under their own name
FAR_COORD = 1e4  # metres; beyond this float32 spacing exceeds 1 mm


def color_to_uint8(rgb: np.ndarray, where: str | os.PathLike, notes: list[str]) -> np.ndarray:
    """Bring (N, 3) colors to the 0..255 range (Scene.validate makes them uint8 and range-checks floats)."""
    if rgb.size == 0:
        return rgb
    if np.issubdtype(rgb.dtype, np.floating):
        finite = rgb[np.isfinite(rgb)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            notes.append("colors given as 0..1 floats, scaled by 255")
            return rgb.astype(np.float64) * 255.0
        return rgb
    if rgb.min() < 0 or rgb.max() > 65535:
        raise DataError(where, f"colors must be 8- or 16-bit values, got range {rgb.min()}..{rgb.max()}")
    if rgb.max() > 255:
        notes.append("16-bit colors reduced to 8 bit (high byte)")
        return (rgb.astype(np.uint16) >> 8).astype(np.uint8)
    return rgb


def scale_strength(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Scale intensity to about [0, 1] by the rule in the module docstring."""
    v = np.asarray(values)
    finite = v[np.isfinite(v)] if np.issubdtype(v.dtype, np.floating) else v
    top = float(finite.max()) if finite.size else 0.0
    if top <= 1:
        return v.astype(np.float32)
    if np.issubdtype(v.dtype, np.integer) and v.dtype.itemsize <= 2:  # uchar/ushort: the sensor's full scale
        divisor = float(np.iinfo(v.dtype).max)
    else:
        divisor = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    notes.append(f"intensity divided by {divisor:g}")
    return (v.astype(np.float64) / divisor).astype(np.float32)


def coord_to_float32(xyz: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Cast (N, 3) coordinates to float32, shifting far-away clouds first (offset kept in meta)."""
    xyz = np.asarray(xyz)
    if xyz.ndim == 2 and xyz.shape[0] and xyz.shape[1] == 3 and np.issubdtype(xyz.dtype, np.number):
        finite = np.isfinite(xyz).all(axis=1)
        if finite.any() and np.abs(xyz[finite]).max() > FAR_COORD:
            offset = np.floor(xyz[finite].min(axis=0).astype(np.float64))
            meta["coord_offset"] = offset.tolist()
            return (xyz.astype(np.float64) - offset).astype(np.float32)
    return xyz.astype(np.float32) if np.issubdtype(xyz.dtype, np.number) else xyz


def arrays_from_columns(
    columns: Mapping[str, np.ndarray], where: str | os.PathLike, meta: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Map named 1-D columns (PLY properties, text-header columns) to Scene fields; notes go to meta."""
    lower: dict[str, str] = {}
    for key in columns:
        lower.setdefault(key.lower(), key)
    for key in ("x", "y", "z"):
        if key not in lower:
            raise DataError(where, f"no '{key}' coordinate among the point properties {list(columns)}")

    def column(key: str) -> np.ndarray:
        col = np.asarray(columns[lower[key]])
        if col.dtype.kind not in "iuf":
            raise DataError(where, f"property '{lower[key]}' is not numeric (dtype {col.dtype})")
        return col

    notes: list[str] = []
    arrays = {"coord": coord_to_float32(np.stack([column(k) for k in "xyz"], axis=1), meta)}
    for field, groups in _ALIASES:
        group = next((g for g in groups if all(k in lower for k in g)), None)
        if group is None:
            continue
        values = np.stack([column(k) for k in group], axis=1) if len(group) > 1 else column(group[0])
        if field == "color":
            values = color_to_uint8(values, where, notes)
        elif field == "strength":
            values = scale_strength(values, notes)
        arrays[field] = values
    for key in lower:
        if _VERBATIM.match(key) and key not in arrays:
            arrays[key] = column(key)
    if notes:
        meta["conversions"] = notes
    return arrays


def read_ply_arrays(path: str | os.PathLike, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The vertex element of an ascii or binary PLY file as Scene fields (faces are ignored)."""
    import plyfile

    try:
        # Memory-mapped reading is ~3x faster on meshes; the columns are copied out of the map below.
        ply = plyfile.PlyData.read(os.fspath(path), mmap="c")
    except (plyfile.PlyParseError, ValueError, EOFError) as exc:
        hint = " (the file is shorter than its header says: truncated?)" if "end-of-file" in str(exc) else ""
        raise DataError(path, f"not a readable PLY file: {exc}{hint}") from exc
    names = [element.name for element in ply.elements]
    if "vertex" not in names:
        raise DataError(path, f"PLY file has no 'vertex' element (elements: {names})")
    data = ply["vertex"].data
    return arrays_from_columns({key: np.array(data[key]) for key in data.dtype.names}, path, meta)


def read_ply(path: str | os.PathLike, name: str | None = None) -> Scene:
    """Read a PLY point cloud or mesh (its vertices) into a validated Scene."""
    path = Path(path)
    meta: dict[str, Any] = {"source": [str(path)], "format": "ply"}
    return Scene(name or path.stem, read_ply_arrays(path, meta), meta).validate(source=str(path))


# Scene field -> (PLY property names, PLY dtype); the order is the property order in the file.
_WRITE_LAYOUT: list[tuple[str, tuple[str, ...], str]] = [
    ("coord", ("x", "y", "z"), "f4"),
    ("color", ("red", "green", "blue"), "u1"),
    ("normal", ("nx", "ny", "nz"), "f4"),
    ("strength", ("intensity",), "f4"),
    ("segment", ("label",), "i4"),
    ("instance", ("instance",), "i4"),
]


def write_ply(path: str | os.PathLike, scene: Scene | Mapping[str, np.ndarray], text: bool = False) -> Path:
    """Write a Scene (or a dict of its arrays) as a PLY point cloud; binary unless `text`.

    Fields: coord -> x,y,z float; color -> red,green,blue uchar; normal -> nx,ny,nz float;
    strength -> intensity float; segment -> label int; instance, superpoint and segment<k> -> the same
    name, int. The file is written atomically (`volt.data.io.atomic_write`), so it is never half-written.
    """
    import plyfile

    path = Path(path)
    arrays = dict(scene.arrays if isinstance(scene, Scene) else scene)
    arrays = Scene(path.stem, arrays).validate(source=str(path)).arrays  # canonical dtypes, checked shapes
    layout = list(_WRITE_LAYOUT) + [(k, (k,), "i4") for k in sorted(arrays) if _VERBATIM.match(k)]
    present = [(field, props, dt) for field, props, dt in layout if field in arrays]
    vertex = np.empty(len(arrays["coord"]), dtype=[(p, dt) for _, props, dt in present for p in props])
    for field, props, _ in present:
        values = arrays[field].reshape(len(vertex), -1)
        for i, prop in enumerate(props):
            vertex[prop] = values[:, i]
    ply = plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=text)
    return atomic_write(path, lambda tmp: ply.write(str(tmp)))
