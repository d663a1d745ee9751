"""Headless scene pictures: a NumPy point rasterizer (orthographic, z-buffered square splats) and a figure of
side-by-side panels (one per colouring: ground truth, prediction, errors, instances, ...) from a top-down and
an oblique view, with a class legend.

`project(coord, view, size)` -> `Raster` (which point is drawn at each pixel, and its depth) is computed once
per view and shared by every colouring, so panels line up pixel for pixel; `paint(raster, colors)` -> RGB
image. `render_panels(coord, layers, out_path, legend=...)` draws the figure with matplotlib (Agg, no
display, imported lazily: the `viz` extra; see `volt.viz.figure`). Splatting in NumPy keeps 100k+ points
fast where a matplotlib scatter would take seconds and draw far points over near ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volt.errors import DataError
from volt.viz.figure import agg_figure, save_figure

# view name -> (azimuth, elevation) in degrees; elevation 90 looks straight down with +y up on screen.
VIEWS: dict[str, tuple[float, float]] = {"top": (0.0, 90.0), "oblique": (-35.0, 35.0)}
VIEW_TITLES = {"top": "top-down", "oblique": "oblique"}
CORRECT_COLOR = (200, 200, 200)  # error panel: right prediction
WRONG_COLOR = (220, 20, 20)  # error panel: wrong prediction
UNLABELLED_COLOR = (90, 90, 90)  # error panel: ground truth is -1, not scored
BACKGROUND = (255, 255, 255)
ERROR_LEGEND = (("error: wrong", WRONG_COLOR), ("error: right", CORRECT_COLOR), ("no ground truth", UNLABELLED_COLOR))


@dataclass
class Raster:
    """Per-pixel result of projecting a point cloud: `index` (H, W) int64 point id or -1 for background,
    `depth` (H, W) float32 in [0, 1] (0 = nearest point of the cloud, NaN on background)."""

    index: np.ndarray
    depth: np.ndarray

    @property
    def coverage(self) -> float:
        """Fraction of pixels showing a point."""
        return float((self.index >= 0).mean())


def camera(view: str | tuple[float, float]) -> np.ndarray:
    """(3, 3) rotation whose rows are the screen's right, up and toward-the-viewer axes in world coordinates."""
    if isinstance(view, str):
        if view not in VIEWS:
            raise ValueError(f"unknown view '{view}' (known: {sorted(VIEWS)})")
        view = VIEWS[view]
    az, el = np.radians(view[0]), np.radians(view[1])
    right = np.array([np.cos(az), np.sin(az), 0.0])
    # Camera sits at azimuth `az` around +z, raised by `el`: at el = 90 it looks down with `up` = +y.
    back = np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az), np.sin(el)])
    up = np.cross(back, right)
    return np.stack([right, up / np.linalg.norm(up), back])


def robust_bounds(points: np.ndarray, q: float = 1.0, pad: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per column: the q..100-q percentile range widened by `pad` of its span on each side, but
    never past the real extent. A few far outliers (LiDAR returns at 80 m) then do not shrink the scene."""
    lo_all, hi_all = points.min(0), points.max(0)
    lo, hi = np.percentile(points, [q, 100 - q], axis=0)
    span = hi - lo
    return np.maximum(lo - pad * span, lo_all), np.minimum(hi + pad * span, hi_all)


def _offsets(k: int) -> np.ndarray:
    return np.arange(k) - (k - 1) // 2  # a k-pixel square footprint around the point's pixel


def point_spacing(coord: np.ndarray, iters: int = 14, sample: int = 50_000) -> float:
    """Typical distance between neighbouring points of a scanned surface, in the coordinates' unit.

    On a surface, a voxel of side h holds about (h / g)^2 points of spacing g, so we bisect (in log h) for
    the voxel size holding 2 points on average and return h / sqrt(2). Large clouds are estimated on a
    random `sample` of m points, whose spacing is sqrt(N / m) times the full cloud's."""
    coord = np.asarray(coord, dtype=np.float64)
    if len(coord) > sample:
        keep = np.random.default_rng(0).choice(len(coord), sample, replace=False)
        return point_spacing(coord[keep], iters, sample) * float(np.sqrt(sample / len(coord)))
    extent = float(np.max(coord.max(0) - coord.min(0))) if len(coord) > 1 else 0.0
    if extent <= 0:
        return 1.0
    lo, hi = np.log(extent / 1e5), np.log(extent)
    base = coord - coord.min(0)
    for _ in range(iters):
        h = np.exp((lo + hi) / 2)
        keys = np.floor(base / h).astype(np.int64)
        occupied = len(np.unique(keys[:, 0] * 4_194_304 * 4_194_304 + keys[:, 1] * 4_194_304 + keys[:, 2]))
        lo, hi = (np.log(h), hi) if len(coord) / occupied < 2.0 else (lo, np.log(h))
    return float(np.exp((lo + hi) / 2) / np.sqrt(2.0))


def project(
    coord: np.ndarray,
    view: str | tuple[float, float] = "top",
    size: tuple[int, int] = (480, 480),
    point_px: int | None = None,
    margin: float = 0.04,
    normal: np.ndarray | None = None,
    spacing: float | None = None,
) -> Raster:
    """Orthographic projection of (N, 3) points into an image of `size` = (H, W), fitted with equal scale on
    both axes; each point covers a `point_px` square, and the nearest point wins each pixel. Without
    `point_px` the square is as wide as the point spacing on screen: `spacing`, the cloud's
    `point_spacing(coord)` (pass it when projecting one cloud several times: it costs more than a view).

    With (N, 3) `normal`s, points facing away from the viewer are culled (as a mesh renderer does), so the
    near walls of a room, seen from outside, do not hide its inside."""
    coord = np.asarray(coord, dtype=np.float64)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise DataError(None, f"coord must have shape (N, 3), got {coord.shape}")
    h, w = int(size[0]), int(size[1])
    index = np.full((h, w), -1, dtype=np.int64)
    depth_img = np.full((h, w), np.nan, dtype=np.float32)
    if len(coord) == 0:
        return Raster(index, depth_img)
    p = coord @ camera(view).T  # (N, 3): screen x, screen y, toward viewer
    lo, hi = robust_bounds(p[:, :2])  # points beyond these are left out of the picture
    span = np.maximum(hi - lo, 1e-6)
    scale = min(w * (1 - 2 * margin) / span[0], h * (1 - 2 * margin) / span[1])
    centre = (lo + hi) / 2
    u = np.floor((p[:, 0] - centre[0]) * scale + w / 2).astype(np.int64)
    v = np.floor(h / 2 - (p[:, 1] - centre[1]) * scale).astype(np.int64)
    depth = p[:, 2].max() - p[:, 2]  # 0 = nearest to the viewer
    depth = depth / max(float(depth.max()), 1e-9)
    # Splats as wide as the point spacing on screen close the holes between neighbouring points.
    if point_px is None:
        spacing = point_spacing(coord) if spacing is None else spacing
    k = point_px if point_px is not None else int(np.clip(np.ceil(spacing * scale), 1, 8))
    du, dv = (a.reshape(-1) for a in np.meshgrid(_offsets(k), _offsets(k)))
    order = np.argsort(depth, kind="stable")  # nearest first, so the first hit on a pixel is the visible one
    if normal is not None:
        normal = np.asarray(normal, dtype=np.float64)
        if normal.shape != coord.shape:
            raise DataError(None, f"normal has shape {normal.shape}, coord {coord.shape}")
        facing = normal @ camera(view)[2] > -0.05
        order = order[facing[order]]
    uu = (u[order][:, None] + du[None]).reshape(-1)  # (N * k * k,)
    vv = (v[order][:, None] + dv[None]).reshape(-1)
    ids = np.repeat(order, len(du))
    inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
    pix = vv[inside] * w + uu[inside]
    ids = ids[inside]
    first_pix, first = np.unique(pix, return_index=True)  # stable: first occurrence = nearest point
    index.reshape(-1)[first_pix] = ids[first]
    depth_img.reshape(-1)[first_pix] = depth[ids[first]]
    return Raster(index, depth_img)


def paint(
    raster: Raster, colors: np.ndarray, background: tuple[int, int, int] = BACKGROUND, shade: float = 0.35
) -> np.ndarray:
    """(H, W, 3) uint8 image: each pixel takes its point's colour, darkened by up to `shade` with depth so
    that the oblique view reads as 3D."""
    colors = np.asarray(colors, dtype=np.uint8)
    img = np.empty((*raster.index.shape, 3), dtype=np.uint8)
    img[:] = background
    hit = raster.index >= 0
    if colors.ndim != 2 or colors.shape[1] != 3 or (hit.any() and raster.index.max() >= len(colors)):
        raise DataError(None, f"colors must be (N, 3) for the projected points, got {colors.shape}")
    factor = 1.0 - shade * raster.depth[hit][:, None]
    img[hit] = np.clip(colors[raster.index[hit]] * factor + 0.5, 0, 255).astype(np.uint8)
    return img


def error_colors(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(N, 3) uint8: wrong predictions red, right ones light grey, points without ground truth dark grey."""
    gt, pred = np.asarray(gt).reshape(-1), np.asarray(pred).reshape(-1)
    if gt.shape != pred.shape:
        raise DataError(None, f"{len(pred)} predictions for {len(gt)} ground-truth labels")
    out = np.empty((len(gt), 3), dtype=np.uint8)
    out[:] = CORRECT_COLOR
    out[gt != pred] = WRONG_COLOR
    out[gt < 0] = UNLABELLED_COLOR
    return out


LegendEntry = tuple[str, Sequence[int]]


def render_panels(
    coord: np.ndarray,
    layers: Mapping[str, np.ndarray],
    out_path: str | os.PathLike,
    legend: Sequence[LegendEntry] = (),
    views: Sequence[str] = ("top", "oblique"),
    title: str | None = None,
    panel_px: int = 360,
    point_px: int | None = None,
    dpi: int = 100,
    normal: np.ndarray | None = None,
) -> Path:
    """One PNG: a row per view, a column per colouring in `layers` (title -> (N, 3) uint8), and the legend
    entries (name, rgb) in a column on the right; `normal` enables back-face culling (see `project`).
    Returns the written path."""
    cols = len(layers) + (1 if legend else 0)
    fig = agg_figure(cols * panel_px / dpi, len(views) * panel_px / dpi + (0.4 if title else 0), dpi,
                     "Rendering scene pictures")
    from matplotlib.patches import Patch

    coord = np.asarray(coord, dtype=np.float64)
    n = len(coord)
    for name, colors in layers.items():
        if np.asarray(colors).shape != (n, 3):
            raise DataError(None, f"layer '{name}' has shape {np.asarray(colors).shape}, expected ({n}, 3)")
    spacing = None  # the same for every view: estimated once (tens of ms on 100k points)
    if point_px is None and coord.ndim == 2 and coord.shape[1] == 3:  # a wrong shape is reported by project
        spacing = point_spacing(coord)
    grid = fig.add_gridspec(len(views), cols, wspace=0.02, hspace=0.06, left=0.03, right=0.99, bottom=0.01,
                            top=0.93 if title else 0.96)
    for r, view in enumerate(views):
        raster = project(coord, view, (panel_px, panel_px), point_px, normal=normal, spacing=spacing)
        for c, (name, colors) in enumerate(layers.items()):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(paint(raster, colors), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("#dddddd")
            if r == 0:
                ax.set_title(name, fontsize=11)
            if c == 0:
                ax.set_ylabel(VIEW_TITLES.get(view, str(view)), fontsize=10)
    if legend:
        ax = fig.add_subplot(grid[:, -1])
        ax.axis("off")
        handles = [Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor="#444444", label=label) for label, rgb in legend]
        ax.legend(handles=handles, loc="center left", frameon=False, fontsize=9 if len(handles) <= 30 else 7,
                  ncol=1 + (len(handles) - 1) // 30, handlelength=1.2)
    if title:
        fig.suptitle(title, fontsize=12)
    return save_figure(fig, out_path, dpi)


def class_legend(
    names: Sequence[str], colors: np.ndarray, used: Sequence[np.ndarray] = (), errors: bool = False
) -> list[LegendEntry]:
    """Legend entries for the classes occurring in any of `used` (all classes when empty), plus the error
    panel's three colours when `errors`."""
    keep = np.zeros(len(names), dtype=bool)
    for labels in used:
        labels = np.asarray(labels).reshape(-1)
        labels = labels[(labels >= 0) & (labels < len(names))]
        keep[np.unique(labels)] = True
    if not used:
        keep[:] = True
    entries: list[LegendEntry] = [(str(names[c]), tuple(int(x) for x in colors[c])) for c in np.flatnonzero(keep)]
    if errors:
        entries += list(ERROR_LEGEND)
    return entries
