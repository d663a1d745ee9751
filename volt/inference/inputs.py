"""What a checkpoint needs from a point cloud, and getting it from a user's file or saying clearly why not.

A checkpoint's input features are fixed by its dataset pipeline (`volt.data.pipelines`, spec §1.6):

| pipeline              | feat (in this order)          | channels |
|-----------------------|-------------------------------|----------|
| scannet, scannet200   | color / 255, normal           | 6        |
| nuscenes              | coord (metres), strength      | 4        |

`check_channels` refuses a config whose `model.in_channels` cannot hold its pipeline's features, and
`model_inputs(scene, pipeline, in_channels, source)` returns the scene's arrays that the pipeline reads, or
raises DataError naming the file, the missing field and what the model expects.

Normals (decided here, announced every time through `log`, never silent):
- normals stored in the file are used as they are;
- a PLY *mesh* without normals gets area-weighted vertex normals from its faces — exactly how the ScanNet
  preprocessor makes the normals the indoor models were trained on (`volt.data.ply_mesh.vertex_normals`);
- a bare cloud without normals is an error, unless `estimate_normals=True`: then each point gets the
  smallest-variance direction of its `k` nearest neighbours (PCA), flipped to face the cloud's bounding-box
  centre (indoor scans are seen from inside). These differ from mesh normals, so accuracy may drop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from volt.data.scene import Scene
from volt.errors import DataError, require

# pipeline -> ((scene field, channels), ...) in the order the pipeline's Collect concatenates them.
FEAT_LAYOUT: dict[str, tuple[tuple[str, int], ...]] = {
    "scannet": (("color", 3), ("normal", 3)),
    "scannet200": (("color", 3), ("normal", 3)),
    "nuscenes": (("coord", 3), ("strength", 1)),
}
NORMAL_NEIGHBOURS = 16


def describe(pipeline: str) -> str:
    """'color + normal (6 channels)' for messages."""
    layout = FEAT_LAYOUT[pipeline]
    return f"{' + '.join(f for f, _ in layout)} ({sum(c for _, c in layout)} channels)"


def check_channels(pipeline: str, in_channels: int, feat_start: int, source: str | os.PathLike | None) -> None:
    """The pipeline must be known and its features must fit the model's input channels from `feat_start`
    (joint checkpoints give each dataset its own channel range, zeros elsewhere: volt.data.samplers)."""
    if pipeline not in FEAT_LAYOUT:
        raise DataError(source, f"the checkpoint's pipeline {pipeline!r} is unknown to the predictor "
                                f"(known: {sorted(FEAT_LAYOUT)})")
    width = sum(c for _, c in FEAT_LAYOUT[pipeline])
    if feat_start < 0 or feat_start + width > in_channels:
        raise DataError(source, f"the checkpoint's model takes {in_channels} input channels but its pipeline "
                                f"{pipeline!r} builds {describe(pipeline)} from channel {feat_start}; the "
                                "checkpoint's config is inconsistent")


def has_faces(path: Path) -> bool:
    """Whether a PLY header declares a non-empty face element (read from the header only)."""
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip().decode("ascii", "replace")
            if line == "end_header":
                return False
            parts = line.split()
            if len(parts) == 3 and parts[:2] == ["element", "face"] and parts[2] != "0":
                return True
    return False


def mesh_normals(path: Path, num_points: int) -> np.ndarray:
    """Area-weighted vertex normals of a PLY mesh whose vertices are the cloud's points."""
    from volt.data.ply_mesh import read_ply_mesh, vertex_normals

    mesh = read_ply_mesh(path)
    if len(mesh.coord) != num_points:
        raise DataError(path, f"the mesh has {len(mesh.coord)} vertices but the cloud read {num_points} points")
    return vertex_normals(mesh.coord, mesh.faces)


def estimate_normals(coord: np.ndarray, k: int = NORMAL_NEIGHBOURS) -> np.ndarray:
    """(N, 3) float32 unit normals by PCA of each point's k nearest neighbours, facing the bbox centre."""
    from volt.ops.superpoint import pca_normals  # here: keeps torch and the ops out of this module's import

    spatial = require("scipy.spatial", "instance", "Estimating normals")
    coord = np.asarray(coord, dtype=np.float64)
    k = max(3, min(k, len(coord)))
    _, nbr = spatial.cKDTree(coord).query(coord, k=k)  # (N, k), the point itself included
    out = pca_normals(coord, nbr)  # float32, sign arbitrary
    centre = (coord.min(axis=0) + coord.max(axis=0)) / 2
    flip = np.einsum("ni,ni->n", out.astype(np.float64), centre - coord) < 0
    out[flip] *= -1
    return out


def model_inputs(
    scene: Scene,
    pipeline: str,
    source: str | os.PathLike | None,
    *,
    estimate: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, np.ndarray]:
    """{name, coord, <feature fields>} for `volt.data.pipelines.test_views`, or DataError if a field is missing."""
    where = source if source is not None else scene.name  # for messages only: a Scene has no file
    arrays: dict[str, np.ndarray] = {"coord": scene["coord"]}
    missing: list[str] = []
    for field, _ in FEAT_LAYOUT[pipeline]:
        if field in scene:
            arrays[field] = scene[field]
        elif field == "normal":
            normal = _normals(scene, source, estimate, log)
            if normal is None:
                missing.append(field)
            else:
                arrays["normal"] = normal
        else:
            missing.append(field)
    if missing:
        hint = {"color": "A color model needs RGB per point.",
                "strength": "A LiDAR model needs an intensity per point.",
                "normal": "Normals can be estimated with estimate_normals=True (--estimate-normals)."}
        raise DataError(where, f"the model expects {describe(pipeline)} (pipeline {pipeline!r}) but the file has "
                               f"no {' and no '.join(missing)}; it has {', '.join(sorted(scene.arrays))}. "
                               + " ".join(hint[m] for m in missing))
    return {"name": scene.name, **arrays}


def _normals(scene: Scene, source: str | os.PathLike | None, estimate: bool,
             log: Callable[[str], None]) -> np.ndarray | None:
    """Normals from the source file's mesh faces, else estimated when asked, else None. `source` None: the
    scene was given in memory, so there is no file to read faces from (its name is only a label)."""
    path = Path(source) if source is not None else None
    if path is not None and path.suffix.lower() == ".ply" and path.is_file() and has_faces(path):
        log(f"notice: {path.name} has no normals; computing area-weighted vertex normals from its mesh faces "
            "(as the ScanNet preprocessing does)")
        return mesh_normals(path, scene.num_points)
    if estimate:
        log(f"notice: {path.name if path else scene.name} has no normals; estimating them by PCA over "
            f"{NORMAL_NEIGHBOURS} nearest neighbours (approximate: the model was trained on mesh normals)")
        return estimate_normals(scene["coord"])
    return None
