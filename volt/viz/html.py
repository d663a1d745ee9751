"""Write one self-contained HTML page per scene: a 3D point viewer (orbit/zoom, a button per colouring, class
legend) that opens from disk in any browser without network access.

`write_viewer(out_path, coord, layers, ...)`: `layers` maps a short key (used in the URL, e.g.
`viewer.html#mode=pred`) to (N, 3) uint8 colours; points are decimated to at most `max_points` (the same
random subset for every colouring), centred, and embedded as base64 typed arrays in the page from
`volt.viz.viewer_page.PAGE`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from volt.errors import DataError
from volt.viz.render import point_spacing, robust_bounds
from volt.viz.viewer_page import PAGE

LegendEntry = tuple[str, Sequence[int]]


def _b64(arr: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode("ascii")


def _hex(rgb: Sequence[int]) -> str:
    r, g, b = (int(x) for x in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def decimate(num_points: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `max_points` of `num_points` points (all of them when few enough)."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if num_points <= max_points:
        return np.arange(num_points)
    return np.sort(np.random.default_rng(seed).choice(num_points, max_points, replace=False))


def write_viewer(
    out_path: str | os.PathLike,
    coord: np.ndarray,
    layers: Mapping[str, np.ndarray],
    labels: Mapping[str, str] | None = None,
    legends: Mapping[str, Sequence[LegendEntry]] | None = None,
    title: str = "point cloud",
    default: str | None = None,
    normal: np.ndarray | None = None,
    max_points: int = 200_000,
    seed: int = 0,
) -> Path:
    """Write the viewer page and return its path.

    layers: key -> (N, 3) uint8 colours (keys must be URL-safe words: "gt", "pred", ...); labels: key ->
    button text (default: the key); legends: key -> [(name, rgb), ...] shown while that colouring is on;
    default: the colouring shown first (else the first layer); normal: (N, 3) enables back-face culling.
    """
    coord = np.asarray(coord, dtype=np.float64)
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise DataError(out_path, f"coord must have shape (N, 3) with N > 0, got {coord.shape}")
    if not layers:
        raise DataError(out_path, "at least one colouring is needed")
    n = len(coord)
    for key, colors in layers.items():
        if not key.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"layer key {key!r} must be a URL-safe word")
        colors = np.asarray(colors)
        if colors.shape != (n, 3) or not np.issubdtype(colors.dtype, np.integer):
            raise DataError(out_path, f"layer '{key}' is {colors.dtype} {colors.shape}, expected ({n}, 3) RGB 0..255")
    if default is not None and default not in layers:
        raise ValueError(f"default colouring {default!r} is not one of {list(layers)}")
    keep = decimate(n, max_points, seed)
    xyz = coord[keep]
    lo, hi = robust_bounds(xyz)  # frame the bulk of the scene, not its farthest outliers
    centre = (lo + hi) / 2
    centred = xyz - centre
    radius = float(np.linalg.norm(hi - lo) / 2) or 1.0
    labels, legends = dict(labels or {}), dict(legends or {})
    data = {
        "title": title,
        "count": len(keep),
        "total": n,
        "radius": radius,
        "center": [float(c) for c in centre],  # positions are relative to this point of the scene
        # World size of a point: the spacing of the kept points, so surfaces render closed.
        "pointSize": point_spacing(centred) * 1.4,
        "positions": _b64(centred, "<f4"),
        "layers": [{"key": k, "label": labels.get(k, k), "colors": _b64(np.asarray(c)[keep], "u1")}
                   for k, c in layers.items()],
        "legends": {k: [[str(name), _hex(rgb)] for name, rgb in entries] for k, entries in legends.items()},
        "defaultMode": default or next(iter(layers)),
    }
    if normal is not None:
        normal = np.asarray(normal, dtype=np.float64)
        if normal.shape != coord.shape:
            raise DataError(out_path, f"normal has shape {normal.shape}, coord {coord.shape}")
        data["normals"] = _b64(np.clip(np.round(normal[keep] * 127), -127, 127), "i1")
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # cannot close the <script>
    fill = {"__TITLE__": html.escape(title), "__DATA__": payload}
    page = re.sub("__TITLE__|__DATA__", lambda m: fill[m.group(0)], PAGE)  # one pass: no re-substitution
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
