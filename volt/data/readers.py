"""One entry point for users' own scans: `read_cloud(path)` -> the same `Scene` every dataset reader returns.

The format comes from `fmt` or the file suffix (`SUPPORTED_FORMATS`):

- `.ply`: ascii or binary PLY, any vertex layout (`volt.data.ply_cloud`, which also documents the
  column names and the color / intensity / far-coordinate rules that all formats here share).
- `.npy`: an (N, C) array, C = 3 xyz | 4 xyz+intensity | 6 xyz+rgb | 7 xyz+rgb+label (rgb 0..255, or
  0..1 when its maximum is <= 1); a structured array is read by its field names, like a PLY.
- `.npz`: arrays `coord` (or `xyz`/`points`), optional `color`/`rgb`, `normal`, `strength`/`intensity`,
  `segment`/`label`, `instance`, and any `segment<k>`/`superpoint`.
- `.txt`, `.csv`, `.xyz`: whitespace, comma or semicolon separated numbers, `#` comment lines; a
  non-numeric first line is a header, used when it names x, y and z (other names as for PLY),
  otherwise the columns are read by count as for `.npy`.
- `.las`, `.laz`: via laspy (the `las` extra): scaled x/y/z, RGB (16-bit reduced to 8-bit), intensity
  / 65535 -> strength; classification -> segment only with `las_labels=True`, since LAS classes are not
  a volt label space.
- `.pcd.bin`: a nuScenes LiDAR sweep; other `.bin`: a SemanticKITTI scan (their dataset readers).
- a folder with coord.npy + meta.json: a processed scene (`volt.data.io.read_scene`).

Every result is checked by `Scene.validate(source=path)`; bad input raises DataError naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.io import is_scene_dir, read_scene
from volt.data.ply_cloud import (
    arrays_from_columns,
    color_to_uint8,
    coord_to_float32,
    read_ply_arrays,
    scale_strength,
)
from volt.data.scene import Scene
from volt.errors import DataError, MissingExtraError, require

SUPPORTED_FORMATS: tuple[str, ...] = (
    ".ply",
    ".npy",
    ".npz",
    ".txt",
    ".csv",
    ".xyz",
    ".las",
    ".laz",
    ".pcd.bin",
    ".bin",
)
_COLUMN_LAYOUTS = "3 (xyz), 4 (xyz+intensity), 6 (xyz+rgb) or 7 (xyz+rgb+label)"
_NPZ_KEYS: dict[str, tuple[str, ...]] = {
    "coord": ("coord", "xyz", "points"),
    "color": ("color", "rgb"),
    "normal": ("normal", "normals"),
    "strength": ("strength", "intensity"),
    "segment": ("segment", "label", "labels"),
    "instance": ("instance",),
}


def arrays_from_matrix(mat: np.ndarray, where: str | os.PathLike, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Split an (N, C) numeric matrix into Scene fields by its column count."""
    if mat.ndim != 2 or mat.shape[1] not in (3, 4, 6, 7) or mat.dtype.kind not in "iuf":
        raise DataError(
            where,
            f"expected an (N, C) number array with C = {_COLUMN_LAYOUTS}; got shape {mat.shape} of dtype {mat.dtype}",
        )
    notes: list[str] = []
    arrays = {"coord": coord_to_float32(mat[:, :3], meta)}
    if mat.shape[1] == 4:
        arrays["strength"] = scale_strength(mat[:, 3], notes)
    if mat.shape[1] >= 6:
        arrays["color"] = color_to_uint8(mat[:, 3:6], where, notes)
    if mat.shape[1] == 7:
        arrays["segment"] = mat[:, 6]
    if notes:
        meta["conversions"] = notes
    return arrays


def _read_npy(path: Path, meta: dict[str, Any], **_: Any) -> dict[str, np.ndarray]:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(path, f"cannot be read as a .npy array ({exc})") from exc
    if arr.dtype.names:  # a structured array names its columns, like a PLY vertex element
        return arrays_from_columns({key: arr[key] for key in arr.dtype.names}, path, meta)
    return arrays_from_matrix(arr, path, meta)


def _read_npz(path: Path, meta: dict[str, Any], **_: Any) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(path, f"cannot be read as a .npz archive ({exc})") from exc
    with archive:
        keys = list(archive.files)
        wanted = {field: next((k for k in names if k in keys), None) for field, names in _NPZ_KEYS.items()}
        wanted.update({k: k for k in keys if re.fullmatch(r"segment\d+|superpoint", k)})
        if wanted["coord"] is None:
            raise DataError(
                path, f"no coordinates: expected an array named one of {_NPZ_KEYS['coord']}, the archive has {keys}"
            )
        arrays = {}
        for field, key in wanted.items():
            if key is None:
                continue
            try:
                arrays[field] = archive[key]
            except (ValueError, OSError, EOFError) as exc:
                raise DataError(path, f"array '{key}' cannot be read ({exc})") from exc
    notes: list[str] = []
    arrays["coord"] = coord_to_float32(arrays["coord"], meta)
    if "color" in arrays:
        arrays["color"] = color_to_uint8(arrays["color"], path, notes)
    if "strength" in arrays:
        arrays["strength"] = scale_strength(arrays["strength"], notes)
    if notes:
        meta["conversions"] = notes
    return arrays


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _first_bad_line(path: Path, start: int, delimiter: str | None) -> str | None:
    """Find the line that stopped np.loadtxt, for an error message that points at it."""
    width = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if number <= start or not text or text.startswith("#"):
                continue
            tokens = [t.strip() for t in text.split(delimiter)]
            bad = next((t for t in tokens if not _is_number(t)), None)
            if bad is not None:
                return f"line {number}: '{bad}' is not a number"
            width = width or len(tokens)
            if len(tokens) != width:
                return f"line {number} has {len(tokens)} values where earlier lines have {width}"
    return None


def _read_text(path: Path, meta: dict[str, Any], **_: Any) -> dict[str, np.ndarray]:
    header, start, first_row = None, None, None
    try:
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                tokens = [t for t in re.split(r"[,;\s]+", text.lstrip("/")) if t]
                if header is None and not all(_is_number(t) for t in tokens):
                    header = [t.strip("\"'").lower() for t in tokens]
                    continue
                start, first_row = index, text
                break
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not a text point file ({exc})") from exc
    if start is None:
        raise DataError(path, "the file holds no points")
    delimiter = ";" if ";" in first_row else "," if "," in first_row else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mat = np.loadtxt(path, delimiter=delimiter, skiprows=start, comments="#", ndmin=2, encoding="utf-8")
    except ValueError as exc:
        raise DataError(path, _first_bad_line(path, start, delimiter) or str(exc)) from exc
    if header is not None and {"x", "y", "z"} <= set(header):
        if len(header) != mat.shape[1]:
            raise DataError(path, f"the header names {len(header)} columns {header} but rows have {mat.shape[1]}")
        return arrays_from_columns({key: mat[:, i] for i, key in enumerate(header)}, path, meta)
    if header is not None:
        meta["ignored_header"] = header
    return arrays_from_matrix(mat, path, meta)


def _read_las(path: Path, meta: dict[str, Any], las_labels: bool = False, **_: Any) -> dict[str, np.ndarray]:
    laspy = require("laspy", "las", "Reading LAS/LAZ files")
    try:
        # Backends looked up now, not at laspy's import, so that a missing lazrs is reported as such.
        las = laspy.read(str(path), laz_backend=laspy.LazBackend.detect_available())
    except (laspy.errors.LaspyException, ValueError, OSError, EOFError) as exc:
        if "laz" in str(exc).lower() and not laspy.LazBackend.detect_available():
            raise MissingExtraError("lazrs", "las", "Reading compressed LAZ files") from exc
        raise DataError(path, f"not a readable LAS/LAZ file ({exc})") from exc
    dims = set(las.point_format.dimension_names)
    xyz = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1)  # scaled, float64
    notes: list[str] = ["intensity divided by 65535"]
    arrays = {"coord": coord_to_float32(xyz, meta), "strength": np.asarray(las.intensity) / np.float32(65535)}
    if {"red", "green", "blue"} <= dims:
        rgb = np.stack([np.asarray(las.red), np.asarray(las.green), np.asarray(las.blue)], axis=1)
        arrays["color"] = color_to_uint8(rgb, path, notes)  # >>8 when 16-bit; files storing 0..255 kept
    if las_labels:
        arrays["segment"] = np.asarray(las.classification).astype(np.int32)
    meta["conversions"] = notes
    return arrays


def _read_bin(path: Path, kind: str, name: str | None) -> Scene:
    # Imported here: these dataset modules are only needed for LiDAR scans.
    if kind == "pcd.bin":
        from volt.data.nuscenes import read_nuscenes_sweep

        return read_nuscenes_sweep(path, name=name)
    from volt.data.semantic_kitti import read_kitti_scan

    return read_kitti_scan(path, name=name)


_ARRAY_READERS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "ply": lambda path, meta, **_: read_ply_arrays(path, meta),
    "npy": _read_npy,
    "npz": _read_npz,
    "txt": _read_text,
    "csv": _read_text,
    "xyz": _read_text,
    "las": _read_las,
    "laz": _read_las,
}


def _format_of(path: Path) -> str:
    lowered = path.name.lower()
    suffix = next((s for s in SUPPORTED_FORMATS if lowered.endswith(s)), None)
    if suffix is None:
        raise DataError(
            path,
            f"unknown point-cloud format '{path.suffix}'; supported: "
            f"{', '.join(SUPPORTED_FORMATS)} or a processed scene folder",
        )
    return suffix[1:]


def read_cloud(
    path: str | os.PathLike, fmt: str | None = None, name: str | None = None, *, las_labels: bool = False
) -> Scene:
    """Read a point-cloud file (or processed scene folder) into a validated Scene.

    `fmt` overrides the suffix ("ply", "npy", "npz", "txt", "csv", "xyz", "las", "laz", "pcd.bin",
    "bin" or "scene"); `name` defaults to the file name without its format suffix; `las_labels` keeps
    LAS classification codes as `segment`. `meta` records the source file, the format and any unit
    conversion applied (`conversions`, `coord_offset`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    kind = fmt.lower().lstrip(".") if fmt else ("scene" if path.is_dir() else _format_of(path))
    if kind == "scene":
        if not is_scene_dir(path):
            raise DataError(path, "not a processed scene folder (needs coord.npy and meta.json)")
        scene = read_scene(path)
    elif kind in ("pcd.bin", "bin"):
        scene = _read_bin(path, kind, name)
    elif kind in _ARRAY_READERS:
        stem = path.name[: -len(kind) - 1] if path.name.lower().endswith("." + kind) else path.stem
        meta: dict[str, Any] = {"source": [str(path)], "format": kind}
        arrays = _ARRAY_READERS[kind](path, meta, las_labels=las_labels)
        scene = Scene(name or stem, arrays, meta)
    else:
        raise DataError(path, f"unknown format '{fmt}'; supported: {', '.join(SUPPORTED_FORMATS)} or 'scene'")
    if name:
        scene.name = name
    return scene.validate(source=str(path))
