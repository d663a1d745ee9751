"""A rotating multi-beam LiDAR ray-cast analytically against boxes, cylinders, ellipsoids and a ground plane.

Used by `synthetic_outdoor` to make nuScenes-like sweeps. All rays start at the sensor (the origin of the
frame the primitives are given in), so a primitive is described by its centre, a local->frame rotation and
half extents, and each ray is intersected in the primitive's local frame:
- box: slab test on the half extents;
- cylinder: axis = local z, radius = half[0], half height = half[2]; side and both caps;
- ellipsoid: semi-axes = half; the ray is scaled onto the unit sphere.
Only (ray, primitive) pairs inside the primitive's azimuth window whose bounding sphere the ray passes
are tested, so a sweep of ~35k rays against a few hundred primitives takes a fraction of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2

# Velodyne HDL-32E as on the nuScenes car: 32 beams from -30.67 to +10.67 degrees.
ELEVATION_DEG = (-30.67, 10.67)


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass
class Primitives:
    """P primitives: kind, centre (P,3), rotation local->frame (P,3,3), half extents (P,3), and per-primitive
    attributes the caller interprets (fine label, reflectivity, sidewalk width for curb blocks)."""

    kind: np.ndarray
    center: np.ndarray
    rot: np.ndarray
    half: np.ndarray
    label: np.ndarray
    reflect: np.ndarray
    sidewalk: np.ndarray

    def moved(self, rotation: np.ndarray, origin: np.ndarray) -> Primitives:
        """The same primitives seen from a frame at `origin` with axes `rotation` (columns, in world)."""
        return Primitives(self.kind, (self.center - origin) @ rotation, np.einsum("ji,pjk->pik", rotation, self.rot),
                          self.half, self.label, self.reflect, self.sidewalk)


class PrimitiveList:
    """Collects primitives one by one, then `freeze()` into arrays."""

    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, kind: int, center, half, label: int, reflect: float, rot=None, sidewalk: float = 0.0) -> None:
        self.rows.append((kind, np.asarray(center, float), np.eye(3) if rot is None else rot,
                          np.asarray(half, float), label, reflect, sidewalk))

    def freeze(self) -> Primitives:
        cols = list(zip(*self.rows))
        return Primitives(np.array(cols[0]), np.stack(cols[1]), np.stack(cols[2]), np.stack(cols[3]),
                          np.array(cols[4]), np.array(cols[5]), np.array(cols[6]))


@dataclass
class Scan:
    """One revolution's rays in firing order (all beams at one azimuth, then the next azimuth)."""

    dirs: np.ndarray  # (R, 3) unit directions, R = steps * beams
    ring: np.ndarray  # (R,) beam index, 0 = top beam
    az0: float  # azimuth of the first step (radians)
    steps: int
    beams: int


def beam_directions(rng: np.random.Generator, azimuth_steps: int = 1084, beams: int = 32) -> Scan:
    """The rays of one revolution, starting at a random azimuth, with a little per-beam elevation error."""
    elev = np.deg2rad(np.linspace(ELEVATION_DEG[1], ELEVATION_DEG[0], beams) + rng.normal(0, 0.05, beams))
    az0 = float(rng.uniform(0, 2 * math.pi))
    az = az0 + np.arange(azimuth_steps) * (2 * math.pi / azimuth_steps)
    a, e = np.meshgrid(az, elev, indexing="ij")  # (steps, beams)
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    return Scan(dirs, np.tile(np.arange(beams), azimuth_steps), az0, azimuth_steps, beams)


def _candidates(scan: Scan, prims: Primitives, max_range: float) -> tuple[np.ndarray, np.ndarray]:
    """(ray, primitive) pairs worth an exact test: the ray lies in the primitive's azimuth window and
    passes through its bounding sphere. Windows keep the work proportional to what each ray can see."""
    radius = np.linalg.norm(prims.half, axis=1)
    dist_xy = np.linalg.norm(prims.center[:, :2], axis=1)
    near = np.linalg.norm(prims.center, axis=1) - radius < max_range
    step = 2 * math.pi / scan.steps
    half = np.where(dist_xy > radius, np.arcsin(np.minimum(radius / np.maximum(dist_xy, 1e-9), 1.0)), math.pi)
    centre = np.arctan2(prims.center[:, 1], prims.center[:, 0]) - scan.az0
    first = np.floor((centre - half) / step).astype(np.int64)
    count = np.where(near, np.minimum(np.ceil((centre + half) / step).astype(np.int64) - first + 1, scan.steps), 0)
    pid = np.repeat(np.arange(len(count)), count)
    offset = np.arange(len(pid)) - np.repeat(np.cumsum(count) - count, count)
    az_index = (first[pid] + offset) % scan.steps
    ri = (az_index[:, None] * scan.beams + np.arange(scan.beams)[None]).reshape(-1)
    pi = np.repeat(pid, scan.beams)
    along = (scan.dirs[ri] * prims.center[pi]).sum(1)
    perp2 = (prims.center[pi] ** 2).sum(1) - along ** 2
    keep = (perp2 < radius[pi] ** 2) & (along > -radius[pi])
    return ri[keep], pi[keep]


def _intersect(kind: int, o: np.ndarray, d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Entry distance along each ray (inf where missed) for local origins o, directions d, half extents h."""
    inf = np.full(len(o), np.inf)
    if kind == BOX:
        safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (-h - o) / safe, (h - o) / safe
        tmin, tmax = np.minimum(t1, t2).max(axis=1), np.maximum(t1, t2).min(axis=1)
        return np.where((tmax >= tmin) & (tmin > 0), tmin, inf)
    if kind == ELLIPSOID:
        o, d = o / h, d / h
        a, b, c = (d * d).sum(1), 2 * (o * d).sum(1), (o * o).sum(1) - 1.0
        disc = b * b - 4 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        return np.where((disc >= 0) & (t > 0), t, inf)
    # Cylinder about local z: the side, then the two caps; keep the nearest valid one.
    r, hz = h[:, 0], h[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    disc = b * b - 4 * a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / np.maximum(2 * a, 1e-12)
    z = o[:, 2] + t_side * d[:, 2]
    best = np.where((disc >= 0) & (a > 1e-12) & (t_side > 0) & (np.abs(z) <= hz), t_side, inf)
    dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
    for cap in (hz, -hz):
        t = (cap - o[:, 2]) / dz
        x, y = o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1]
        best = np.where((t > 0) & (x * x + y * y <= r * r) & (t < best), t, best)
    return best


@dataclass
class Hits:
    t: np.ndarray  # (R,) distance to the first hit, inf = no return
    prim: np.ndarray  # (R,) index of the primitive hit, -1 = ground plane, -2 = nothing
    local: np.ndarray  # (R,3) hit point in the primitive's local frame (zeros for ground / nothing)


def cast(scan: Scan, prims: Primitives, ground_z: float, max_range: float) -> Hits:
    """First hit of every ray (from the origin) against the primitives and the plane z = ground_z."""
    dirs, n = scan.dirs, len(scan.dirs)
    ri, pi = _candidates(scan, prims, max_range)
    origin_local = np.einsum("pji,pj->pi", prims.rot, -prims.center)  # sensor in each local frame
    t = np.full(len(ri), np.inf)
    d_local = np.einsum("nji,nj->ni", prims.rot[pi], dirs[ri])
    for kind in (BOX, CYLINDER, ELLIPSOID):
        sel = prims.kind[pi] == kind
        if sel.any():
            t[sel] = _intersect(kind, origin_local[pi[sel]], d_local[sel], prims.half[pi[sel]])
    ok = np.isfinite(t) & (t < max_range)
    ri, pi, t, d_local = ri[ok], pi[ok], t[ok], d_local[ok]
    order = np.lexsort((t, ri))  # per ray, nearest first
    first = order[np.unique(ri[order], return_index=True)[1]]
    best_t, prim, local = np.full(n, np.inf), np.full(n, -2), np.zeros((n, 3))
    best_t[ri[first]], prim[ri[first]] = t[first], pi[first]
    local[ri[first]] = origin_local[pi[first]] + t[first, None] * d_local[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[:, 2] < -1e-6, ground_z / dirs[:, 2], np.inf)
    ground = (t_ground < best_t) & (t_ground < max_range)
    best_t[ground], prim[ground], local[ground] = t_ground[ground], -1, 0.0
    return Hits(best_t, prim, local)
