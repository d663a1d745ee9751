"""Triangle meshes from PLY files, and per-vertex normals from their faces.

`read_ply_mesh(path)` -> `Mesh(coord (N,3) float32, color (N,3) uint8 or None, faces (F,3) int64)` for
binary or ASCII PLY with vertex x/y/z (+ red/green/blue, alpha dropped) and a face `vertex_indices` (or `vertex_index`) list
(polygons are fan-triangulated). Every problem (unreadable or truncated file, missing properties, faces
pointing at missing vertices, NaN/Inf coordinates, an empty mesh) raises DataError naming the file.

`vertex_normals(coord, faces)`: each face contributes its area-weighted normal, cross(b - a, c - a) / 2
(= unit normal x area), to its three corners; the sums are divided by (length + 1e-8). This is how
ScanNet meshes get normals in spec section 3.1, and it reproduces the reference fixture
`scannet_preprocess_scene0000_00.pt` to 2e-7 in float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import plyfile

from volt.errors import DataError

NORMAL_EPS = 1e-8
FACE_LISTS = ("vertex_indices", "vertex_index")  # the two names PLY writers use for the corner list


@dataclass
class Mesh:
    coord: np.ndarray  # (N, 3) float32
    color: np.ndarray | None  # (N, 3) uint8, None when the file has no colors
    faces: np.ndarray  # (F, 3) int64 triangle corner indices


def _load(path: str) -> plyfile.PlyData:
    try:
        # The fast path memory-maps fixed-length triangle lists; plyfile checks every list length.
        return plyfile.PlyData.read(path, known_list_len={"face": {"vertex_indices": 3, "vertex_index": 3}})
    except plyfile.PlyElementParseError as exc:
        if "unexpected list length" not in str(exc):
            raise
    return plyfile.PlyData.read(path)  # polygons of mixed size: the slow, general reader


def _triangles(path: str, lists: np.ndarray) -> np.ndarray:
    """(F, 3) int64 triangles from a face list column (fixed-width array or object array of lists)."""
    if lists.dtype != object:
        return np.asarray(lists, dtype=np.int64).reshape(-1, 3)
    tris = []
    for i, poly in enumerate(lists):
        poly = np.asarray(poly, dtype=np.int64)
        if poly.size < 3:
            raise DataError(path, f"face {i} has {poly.size} corners (need at least 3)")
        # Fan triangulation (0, k, k+1) keeps the polygon's winding, hence its normal direction.
        fan = np.stack([np.full(poly.size - 2, poly[0]), poly[1:-1], poly[2:]], axis=1)
        tris.append(fan)
    return np.concatenate(tris) if tris else np.zeros((0, 3), dtype=np.int64)


def read_ply_mesh(path: str | os.PathLike) -> Mesh:
    """Read a PLY triangle mesh; raises DataError naming `path` for any malformed content."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "mesh file not found")
    try:
        ply = _load(path)
    except plyfile.PlyParseError as exc:
        raise DataError(path, f"not a readable PLY file ({exc})") from exc
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise DataError(path, f"not a readable PLY file ({type(exc).__name__}: {exc})") from exc
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise DataError(path, f"has no 'vertex' element (elements: {names})")
    vert = ply["vertex"].data
    props = vert.dtype.names or ()
    missing = [p for p in ("x", "y", "z") if p not in props]
    if missing:
        raise DataError(path, f"vertex element lacks {missing} (properties: {list(props)})")
    # np.stack copies out of the memory map, so the file is not held open afterwards.
    coord = np.stack([vert[p] for p in ("x", "y", "z")], axis=1).astype(np.float32)
    n = coord.shape[0]
    if n == 0:
        raise DataError(path, "the mesh is empty (0 vertices)")
    bad = ~np.isfinite(coord).all(axis=1)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} vertices have NaN or Inf coordinates (first: {int(np.argmax(bad))})")
    color = None
    if all(p in props for p in ("red", "green", "blue")):
        rgb = np.stack([vert[p] for p in ("red", "green", "blue")], axis=1)
        if not np.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 255:
            raise DataError(path, f"vertex colors outside 0..255 (dtype {rgb.dtype})")
        color = np.round(rgb).astype(np.uint8) if rgb.dtype.kind == "f" else rgb.astype(np.uint8)
    face_props = (ply["face"].data.dtype.names or ()) if "face" in names else ()
    key = next((k for k in FACE_LISTS if k in face_props), None)
    if key is None:
        raise DataError(path, "has no 'face' element with 'vertex_indices' (a mesh is needed for normals)")
    faces = _triangles(path, ply["face"].data[key])
    if faces.shape[0] == 0:
        raise DataError(path, "the mesh has no faces")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= n:
        raise DataError(path, f"faces index vertices {lo}..{hi} but the mesh has only {n} vertices")
    return Mesh(coord=coord, color=color, faces=faces)


def vertex_normals(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (N, 3) float32; vertices on no (or only degenerate) face get 0."""
    coord = np.asarray(coord, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    a, b, c = coord[faces[:, 0]], coord[faces[:, 1]], coord[faces[:, 2]]
    # unit face normal x face area = cross / 2; the face-level normalization cancels, so a zero-area face
    # simply contributes nothing (no division, no epsilon needed there).
    weighted = np.cross(b - a, c - a) * np.float32(0.5)  # (F, 3)
    normal = np.zeros_like(coord)
    # Accumulate face by face, corner by corner (float32, unbuffered): this summation order matches the
    # reference bit-for-bit on most vertices.
    np.add.at(normal, faces.reshape(-1), np.repeat(weighted, 3, axis=0))
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    return (normal / (length + np.float32(NORMAL_EPS))).astype(np.float32)
