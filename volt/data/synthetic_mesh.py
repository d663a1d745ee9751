"""Triangle-mesh building blocks for the synthetic indoor rooms: subdivided quads, boxes, cylinders, discs.

`MeshBuilder` collects what a ScanNet `_vh_clean_2.ply` plus its `segs.json` and `aggregation.json` hold:
vertices (float32 xyz), per-vertex colours (uint8 RGB), triangles, a per-vertex over-segment id, and the
grouping of segments into labelled objects. Every primitive surface is a regular grid with about
`spacing` metres between vertices (so vertex density is roughly uniform, as in a ScanNet mesh) and is
cut into patches of about `patch` metres, one over-segment each; segments never straddle objects because
each primitive belongs to the object opened last with `begin_object`.

Primitives are given in a local frame set by `set_pose(x, y, z, yaw)` (rotation about the vertical axis),
so a piece of furniture is described once around its own origin and then placed anywhere in the room.
Colours are the part's base colour times a shading term (surface orientation and distance to one room
light) plus per-vertex noise, so the same material looks different across a room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Rectangle in a quad's own (u, v) metres: (u0, u1, v0, v1); cells whose centre lies inside are dropped.
Hole = tuple[float, float, float, float]


@dataclass
class Mesh:
    """A finished mesh: ScanNet-style arrays and the object groups."""

    vertices: np.ndarray  # (N, 3) float32
    colors: np.ndarray  # (N, 3) uint8
    faces: np.ndarray  # (F, 3) int32
    segments: np.ndarray  # (N,) int64, ScanNet-like ids (a vertex index of the segment), not contiguous
    groups: list[tuple[str, list[int]]]  # (raw label, segment ids) per annotated object


class MeshBuilder:
    def __init__(self, rng: np.random.Generator, spacing: float = 0.05, noise: float = 7.0,
                 light: tuple[float, float, float] = (0.0, 0.0, 2.5)):
        self.rng = rng
        self.spacing = spacing
        self.noise = noise
        self.light = np.asarray(light, dtype=np.float64)
        self._verts: list[np.ndarray] = []
        self._colors: list[np.ndarray] = []
        self._faces: list[np.ndarray] = []
        self._segs: list[np.ndarray] = []
        self._count = 0
        self._num_segments = 0
        self._objects: list[str | None] = []  # raw label per object, None = unannotated
        self._seg_object: list[int] = []  # internal segment id -> object index
        self.set_pose(0.0, 0.0, 0.0, 0.0)

    # --- frames, objects, segments -------------------------------------------------------------
    def set_pose(self, x: float, y: float, z: float, yaw: float) -> None:
        c, s = math.cos(yaw), math.sin(yaw)
        self._rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        self._shift = np.array([x, y, z], dtype=np.float64)

    def begin_object(self, label: str | None) -> None:
        """Start a new object; `None` makes an unannotated one (its vertices get no aggregation group)."""
        self._objects.append(label)

    def new_segment(self) -> int:
        self._seg_object.append(len(self._objects) - 1)
        self._num_segments += 1
        return self._num_segments - 1

    # --- primitives (local coordinates) --------------------------------------------------------
    def quad(self, origin, u, v, color, patch: float = 0.5, holes: list[Hole] = (), segment: int | None = None):
        """Planar rectangle origin + s*u + t*v, s,t in [0, 1]; its normal is u x v."""
        origin, u, v = (np.asarray(a, dtype=np.float64) for a in (origin, u, v))
        lu, lv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
        s = np.linspace(0.0, 1.0, max(1, math.ceil(lu / self.spacing)) + 1)
        t = np.linspace(0.0, 1.0, max(1, math.ceil(lv / self.spacing)) + 1)
        pts = origin + s[:, None, None] * u + t[None, :, None] * v
        normal = np.cross(u, v)
        keep = np.ones((len(s) - 1, len(t) - 1), dtype=bool)
        cu, cv = (s[:-1] + s[1:]) * lu / 2, (t[:-1] + t[1:]) * lv / 2
        for u0, u1, v0, v1 in holes:
            keep &= ~(((cu >= u0) & (cu <= u1))[:, None] & ((cv >= v0) & (cv <= v1))[None, :])
        self._grid(pts, normal / np.linalg.norm(normal), color, patch, (lu, lv), keep, segment)

    def sheet(self, origin, u, v, color, amplitude: float, wavelength: float, patch: float = 0.5):
        """A quad rippled along u (a curtain): offset along its normal by a sine of the u distance."""
        origin, u, v = (np.asarray(a, dtype=np.float64) for a in (origin, u, v))
        lu, lv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
        s = np.linspace(0.0, 1.0, max(1, math.ceil(lu / self.spacing)) + 1)
        t = np.linspace(0.0, 1.0, max(1, math.ceil(lv / self.spacing)) + 1)
        n = np.cross(u, v)
        n /= np.linalg.norm(n)
        bump = amplitude * np.sin(2 * math.pi * s * lu / wavelength)
        pts = origin + s[:, None, None] * u + t[None, :, None] * v + bump[:, None, None] * n
        self._grid(pts, n, color, patch, (lu, lv))

    def box(self, center, size, color, patch: float = 0.5, bottom: bool = False, front_holes: list[Hole] = ()):
        """Axis-aligned box (in the local frame) standing on z = center[2]; `bottom` adds the underside."""
        cx, cy, z0 = center
        sx, sy, sz = size
        x0, y0, x1, y1, z1 = cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2, z0 + sz
        seg = self.new_segment() if max(size) <= patch else None  # a small part is one segment
        faces = [((x0, y0, z1), (sx, 0, 0), (0, sy, 0)),  # top
                 ((x1, y0, z0), (0, sy, 0), (0, 0, sz)),  # +x
                 ((x0, y0, z0), (0, 0, sz), (0, sy, 0)),  # -x
                 ((x0, y1, z0), (0, 0, sz), (sx, 0, 0)),  # +y
                 ((x0, y0, z0), (sx, 0, 0), (0, 0, sz))]  # -y (front)
        if bottom:
            faces.append(((x0, y0, z0), (0, sy, 0), (sx, 0, 0)))
        for i, (o, u, v) in enumerate(faces):
            self.quad(o, u, v, color, patch, front_holes if i == 4 else (), seg)

    def cylinder(self, center, radius: float, height: float, color, patch: float = 0.5, top: bool = True):
        """Vertical cylinder standing on z = center[2], with an optional top disc."""
        cx, cy, z0 = center
        nt = max(8, math.ceil(2 * math.pi * radius / self.spacing))
        theta = np.linspace(0.0, 2 * math.pi, nt + 1)
        z = np.linspace(z0, z0 + height, max(1, math.ceil(height / self.spacing)) + 1)
        ring = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=-1)
        pts = np.concatenate([np.broadcast_to(ring[:, None], (nt + 1, len(z), 2)),
                              np.broadcast_to(z[None, :, None], (nt + 1, len(z), 1))], axis=-1)
        normals = np.zeros_like(pts)
        normals[..., :2] = np.stack([np.cos(theta), np.sin(theta)], axis=-1)[:, None]
        seg = self.new_segment() if max(2 * radius, height) <= patch else None
        self._grid(pts, normals, color, patch, (2 * math.pi * radius, height), segment=seg)
        if top:
            self.disc((cx, cy, z0 + height), radius, color, patch, seg)

    def disc(self, center, radius: float, color, patch: float = 0.5, segment: int | None = None):
        """Horizontal disc facing up (a polar grid; the tiny hole at the centre is invisible at 5 cm)."""
        cx, cy, z = center
        nt = max(8, math.ceil(2 * math.pi * radius / self.spacing))
        theta = np.linspace(0.0, 2 * math.pi, nt + 1)
        rho = np.linspace(0.3 * self.spacing, radius, max(1, math.ceil(radius / self.spacing)) + 1)
        pts = np.stack([cx + rho[:, None] * np.cos(theta), cy + rho[:, None] * np.sin(theta),
                        np.full((len(rho), nt + 1), z)], axis=-1)
        self._grid(pts, np.array([0.0, 0.0, 1.0]), color, patch, (radius, 2 * math.pi * radius), segment=segment)

    # --- core ----------------------------------------------------------------------------------
    def _grid(self, pts, normals, color, patch, extent, keep=None, segment=None):
        """Add a (nu+1, nv+1) vertex grid as 2*nu*nv triangles; normals (3,) or per vertex (local frame)."""
        nu, nv = pts.shape[0] - 1, pts.shape[1] - 1
        idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
        a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
        keep = np.ones((nu, nv), dtype=bool) if keep is None else keep
        tri = np.concatenate([np.stack([a, b, c], -1)[keep], np.stack([a, c, d], -1)[keep]])
        if segment is None:  # equal patches of about `patch` metres along each grid direction
            pu, pv = (max(1, round(e / patch)) for e in extent)
            iu = np.minimum(np.arange(nu + 1) * pu // (nu + 1), pu - 1)
            iv = np.minimum(np.arange(nv + 1) * pv // (nv + 1), pv - 1)
            first = self._num_segments
            for _ in range(pu * pv):
                self.new_segment()
            seg = first + iu[:, None] * pv + iv[None, :]
        else:
            seg = np.full((nu + 1, nv + 1), segment)
        world = pts.reshape(-1, 3) @ self._rot.T + self._shift
        nrm = np.broadcast_to(np.asarray(normals, dtype=np.float64), pts.shape).reshape(-1, 3) @ self._rot.T
        self._verts.append(world)
        self._colors.append(self._shade(world, nrm, color))
        self._faces.append(tri + self._count)
        self._segs.append(seg.reshape(-1))
        self._count += len(world)

    def _shade(self, pts, normals, color):
        """Base colour x orientation shading x light falloff + per-vertex noise, as uint8."""
        to_light = self.light - pts
        dist = np.linalg.norm(to_light, axis=1, keepdims=True)
        facing = np.clip(np.sum(normals * to_light / np.maximum(dist, 1e-6), axis=1, keepdims=True), -1, 1)
        shade = (0.72 + 0.28 * facing) * (1.08 - 0.3 * np.clip(dist / 6.0, 0, 1))
        rgb = np.asarray(color, dtype=np.float64) * shade + self.rng.normal(0.0, self.noise, (len(pts), 3))
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    def finish(self) -> Mesh:
        """Drop vertices no triangle uses, and name each segment by one of its vertex indices (as ScanNet)."""
        verts, colors = np.concatenate(self._verts), np.concatenate(self._colors)
        faces, segs = np.concatenate(self._faces), np.concatenate(self._segs)
        used = np.zeros(len(verts), dtype=bool)
        used[faces.reshape(-1)] = True
        remap = np.cumsum(used) - 1
        verts, colors, segs, faces = verts[used], colors[used], segs[used], remap[faces]
        present, first_vertex, inverse = np.unique(segs, return_index=True, return_inverse=True)
        scannet_ids = first_vertex.astype(np.int64)[inverse]
        seg_to_id = dict(zip(present.tolist(), first_vertex.tolist()))
        groups: list[tuple[str, list[int]]] = []
        seg_object = np.asarray(self._seg_object)
        for k, label in enumerate(self._objects):
            ids = [seg_to_id[s] for s in np.flatnonzero(seg_object == k).tolist() if s in seg_to_id]
            if label is not None and ids:
                groups.append((label, ids))
        return Mesh(verts.astype(np.float32), colors, faces.astype(np.int32), scannet_ids, groups)
