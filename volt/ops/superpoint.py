"""Superpoints: Felzenszwalb graph segmentation of meshes and point clouds by normal difference.

Public API (spec §2; defaults are ScanNet's segmentator, kThresh 0.01 and segMinVerts 20):
- `mesh_superpoints(vertices (N,3), faces (F,3), *, k_thresh, seg_min_verts) -> (N,) int64 ids 0..S-1`
- `cloud_superpoints(coord (N,3), normal (N,3) | None, *, k, k_thresh, seg_min_verts) -> (N,) int64`
- `felzenszwalb(num_vertices, edges (E,2), weights (E,), k_thresh, seg_min_verts) -> (N,) int64`: the op,
  `torch.ops.volt.felzenszwalb` (C++, CPU only) or `felzenszwalb_reference` (plain Python, the spec).
- `adjusted_rand_index(a, b) -> float` to compare two segmentations of the same vertices.
- `number_by_first_appearance(labels (N,)) -> (N,) int64 0..S-1`, ranked by first appearance.
The superpoint functions return numpy for numpy input and a CPU torch tensor for torch input.

The mesh path reproduces ScanNet's `Segmentator/segmentator.cpp` in float32 (facts from it, no code):
- vertex normal = running average (lerp by 1/(count+1)) of the unit normals of the faces around it,
  in face order; it is not renormalized (`segmentator_normals`);
- each face (i1, i2, i3) gives the directed edges (i1,i2), (i1,i3), (i3,i2), shared edges repeated;
- weight = 1 - dot(n_a, n_b), squared when dot(n_b, unit(p_b - p_a)) > 0 (a convex crease counts less).
Deliberate differences: faces of zero area are left out of the normals (ScanNet gets NaN there), and
ScanNet's unstable `std::sort` is replaced by the order below, so ties are reproducible.

Segmentation (`felzenszwalb_reference` defines it exactly; the kernel must return equal tensors):
1. weights as float32, -0 read as +0; edges sorted by (weight, edge index), NaN weights last;
2. every vertex starts as a segment with threshold c = float32(k_thresh); in sorted order an edge joins
   its two segments when its weight is <= both thresholds; the joined segment's threshold becomes
   float32(w + float32(c / size));
3. in the same order, an edge joins its two segments when either has fewer than seg_min_verts vertices;
4. ids are numbered 0..S-1 by each segment's smallest vertex index.
The partition does not depend on which vertex is a union-find root, so any union rule gives this result.
Union-find is sequential: there is no CUDA kernel; CUDA inputs are segmented on the CPU.
"""

from __future__ import annotations

from array import array

import numpy as np
import torch
from torch import Tensor

from volt.errors import DataError, require
from volt.ops import _ext

__all__ = ["adjusted_rand_index", "cloud_superpoints", "edge_weights", "felzenszwalb", "felzenszwalb_reference",
           "knn_edges", "mesh_edges", "mesh_superpoints", "number_by_first_appearance", "pca_normals",
           "segmentator_normals"]

F32 = np.float32


def _check_graph(num_vertices: int, edges: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    if num_vertices < 0:
        raise DataError(None, f"volt: num_vertices must be >= 0, got {num_vertices}")
    edges = torch.as_tensor(edges).cpu()
    if edges.dim() != 2 or edges.shape[1] != 2 or edges.is_floating_point():
        raise DataError(None, f"volt: edges must be an integer (E, 2) tensor, got {edges.dtype} {tuple(edges.shape)}")
    weights = torch.as_tensor(weights).cpu()
    if weights.shape != (edges.shape[0],):
        raise DataError(None, f"volt: weights must have shape ({edges.shape[0]},), got {tuple(weights.shape)}")
    edges = edges.long().contiguous()
    if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= num_vertices):
        raise DataError(None, f"volt: edges index vertices {int(edges.min())}..{int(edges.max())} "
                              f"but the graph has {num_vertices} vertices")
    # -0 stays as given: the stable sort and the <= tests treat it as +0 (the kernel's bit key maps it)
    return edges, weights.float().contiguous()


def felzenszwalb_reference(num_vertices: int, edges: Tensor, weights: Tensor, k_thresh: float = 0.01,
                           seg_min_verts: int = 20) -> Tensor:
    """The specification (module docstring, steps 1-4) in plain Python; (N,) int64 segment ids."""
    edges, weights = _check_graph(num_vertices, edges, weights)
    return _reference_checked(num_vertices, edges, weights, k_thresh, seg_min_verts)


def _reference_checked(num_vertices: int, edges: Tensor, weights: Tensor, k_thresh: float,
                       seg_min_verts: int) -> Tensor:
    """`felzenszwalb_reference` on inputs that `_check_graph` returned."""
    order = torch.sort(weights, stable=True).indices  # stable: ties keep edge order; NaN sorts last
    ea, eb = edges[order, 0].tolist(), edges[order, 1].tolist()
    ws = weights[order].tolist()  # float32 values, exact as Python floats
    c = float(F32(k_thresh))
    # c / size rounded to float32 per size. A float32 sum computed in double and rounded back to float32
    # equals the float32 sum, so storing into an array('f') reproduces float32 arithmetic exactly.
    c_over = (F32(c) / np.arange(1, num_vertices + 1).astype(F32)).tolist()
    parent, size = list(range(num_vertices)), [1] * num_vertices
    thresh = array("f", [c]) * num_vertices

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def join(ra: int, rb: int) -> int:
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        return ra

    for a, b, w in zip(ea, eb, ws):
        ra, rb = find(a), find(b)
        if ra != rb and w <= thresh[ra] and w <= thresh[rb]:
            r = join(ra, rb)
            thresh[r] = w + c_over[size[r] - 1]
    for a, b in zip(ea, eb):
        ra, rb = find(a), find(b)
        if ra != rb and (size[ra] < seg_min_verts or size[rb] < seg_min_verts):
            join(ra, rb)
    roots = np.array([find(i) for i in range(num_vertices)], dtype=np.int64)
    return torch.from_numpy(number_by_first_appearance(roots))


def number_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel any (N,) labels to int64 0..S-1 in the order each label first appears (a segment's first
    vertex); also used to number superpoints per sample in volt.data.pipelines_instance."""
    uniq, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    return rank[inverse.reshape(-1)]


def felzenszwalb(num_vertices: int, edges: Tensor, weights: Tensor, k_thresh: float = 0.01,
                 seg_min_verts: int = 20) -> Tensor:
    """Segment a weighted graph (module docstring); (N,) int64 on the CPU. Runs the C++ kernel when the
    extension has it (VOLT_OPS=torch forces the reference). Sequential: inputs are moved to the CPU."""
    edges, weights = _check_graph(int(num_vertices), edges, weights)
    if _ext.use_ext("felzenszwalb", "cpu"):
        return torch.ops.volt.felzenszwalb(edges, weights, int(num_vertices), float(F32(k_thresh)), int(seg_min_verts))
    return _reference_checked(int(num_vertices), edges, weights, k_thresh, seg_min_verts)


def _to_numpy(x, what: str, dtype) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataError(None, f"volt: {what} must have shape (N, 3), got {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(None, f"volt: {what} contains NaN or Inf")
    return np.ascontiguousarray(arr, dtype=dtype)


def _like(ids: Tensor, ref):
    return ids if isinstance(ref, Tensor) else ids.numpy()


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(3F, 2) directed edges of ScanNet's segmentator: (i1,i2), (i1,i3), (i3,i2) per face, face by face."""
    f = np.asarray(faces, dtype=np.int64)
    return np.stack([f[:, [0, 1]], f[:, [0, 2]], f[:, [2, 1]]], axis=1).reshape(-1, 2)


def segmentator_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N, 3) float32 vertex normals as ScanNet's segmentator computes them (module docstring)."""
    p = np.asarray(vertices, dtype=F32)
    f = np.asarray(faces, dtype=np.int64)
    cr = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
    length = np.sqrt(cr[:, 0] * cr[:, 0] + cr[:, 1] * cr[:, 1] + cr[:, 2] * cr[:, 2])
    keep = length > 0  # zero-area faces have no direction
    unit = (cr[keep] / length[keep, None]).astype(F32)
    corner_v = f[keep].reshape(-1)
    corner_n = np.repeat(unit, 3, axis=0)
    # The running average is sequential per vertex; vectorize over vertices: round r applies every
    # vertex's r-th incident face (in face order) at once.
    by_vertex = np.argsort(corner_v, kind="stable")
    sv = corner_v[by_vertex]
    group_start = np.searchsorted(sv, sv, side="left")
    rank = np.arange(sv.size) - group_start
    normal = np.zeros_like(p)
    for r in range(int(rank.max()) + 1 if rank.size else 0):
        sel = by_vertex[rank == r]
        v = F32(1.0) / (F32(r) + F32(1.0))
        u = F32(1.0) - v
        normal[corner_v[sel]] = v * corner_n[sel] + u * normal[corner_v[sel]]
    return normal


def edge_weights(points: np.ndarray, normals: np.ndarray, edges: np.ndarray, rule: str = "scannet") -> np.ndarray:
    """(E,) float32 weights. rule "scannet": 1 - n_a.n_b, squared when n_b.unit(p_b - p_a) > 0 (oriented,
    direction-dependent, as ScanNet); "symmetric": same, convex when (n_b - n_a).(p_b - p_a) > 0;
    "unoriented": 1 - |n_a.n_b| with no convexity rule (normals of unknown sign)."""
    p, n = np.asarray(points, dtype=F32), np.asarray(normals, dtype=F32)
    a, b = edges[:, 0], edges[:, 1]
    na, nb = n[a], n[b]
    dot = na[:, 0] * nb[:, 0] + na[:, 1] * nb[:, 1] + na[:, 2] * nb[:, 2]
    if rule == "unoriented":
        return (F32(1.0) - np.abs(dot)).astype(F32)
    w = F32(1.0) - dot
    d = p[b] - p[a]
    with np.errstate(invalid="ignore", divide="ignore"):  # coincident points: NaN test, no squaring
        if rule == "scannet":
            dd = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])
            d = d / dd[:, None]
            convex = nb[:, 0] * d[:, 0] + nb[:, 1] * d[:, 1] + nb[:, 2] * d[:, 2] > 0
        elif rule == "symmetric":
            convex = ((nb - na) * d).sum(1) > 0
        else:
            raise ValueError(f"volt: unknown edge weight rule {rule!r}")
    return np.where(convex, w * w, w).astype(F32)


def mesh_superpoints(vertices, faces, *, k_thresh: float = 0.01, seg_min_verts: int = 20):
    """ScanNet-style superpoints of a triangle mesh: (N,) int64 ids 0..S-1 (module docstring)."""
    p = _to_numpy(vertices, "vertices", F32)
    f = _to_numpy(faces, "faces", np.int64)
    if f.size and (f.min() < 0 or f.max() >= p.shape[0]):
        raise DataError(None, f"volt: faces index vertices {f.min()}..{f.max()} but there are {p.shape[0]}")
    edges = mesh_edges(f)
    w = edge_weights(p, segmentator_normals(p, f), edges, "scannet")
    ids = felzenszwalb(p.shape[0], torch.from_numpy(edges), torch.from_numpy(w), k_thresh, seg_min_verts)
    return _like(ids, vertices)


def knn_edges(coord: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours (N, k+1) incl. the point itself, undirected unique edges (E, 2) sorted, a < b)."""
    spatial = require("scipy.spatial", "instance", "Superpoints of point clouds (k-nearest-neighbour graph)")
    n = coord.shape[0]
    kk = min(k + 1, n)
    _, nbr = spatial.cKDTree(coord).query(coord, k=kk)
    nbr = nbr.reshape(n, kk).astype(np.int64)
    a = np.repeat(np.arange(n, dtype=np.int64), kk)
    b = nbr.reshape(-1)
    keep = a != b  # the point itself (duplicates of a point are kept as neighbours)
    lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    key = np.unique(lo * n + hi)
    return nbr, np.stack([key // n, key % n], axis=1)


def pca_normals(coord: np.ndarray, nbr: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N, 3) float32 unit normals: smallest-eigenvalue axis of the covariance of each row's neighbours
    `coord[nbr[i]]` (nbr (N, K)), in float64. Their sign is arbitrary, so weights built from them must
    ignore it (rule "unoriented"), or the caller orients them."""
    coord = np.asarray(coord, dtype=np.float64)
    out = np.empty((len(nbr), 3), dtype=F32)
    for start in range(0, len(nbr), chunk):  # chunks keep the (n, K, 3) neighbourhoods small at 1M points
        pts = coord[nbr[start:start + chunk]]  # (n, K, 3)
        centred = pts - pts.mean(1, keepdims=True)
        cov = np.einsum("nki,nkj->nij", centred, centred)  # (n, 3, 3)
        out[start:start + chunk] = np.linalg.eigh(cov)[1][:, :, 0]  # ascending eigenvalues: the smallest
    return out


def cloud_superpoints(coord, normal=None, *, k: int = 16, k_thresh: float = 0.01, seg_min_verts: int = 20):
    """Superpoints of a bare point cloud over its k-nearest-neighbour graph: (N,) int64 ids 0..S-1.

    Given normals are taken as oriented (outward, like a mesh's) and are normalized; the weight is
    1 - n_a.n_b, squared on convex edges by the symmetric rule (n_b - n_a).(p_b - p_a) > 0. Without
    normals, they are estimated by PCA over the same k neighbours (plus the point); their sign is
    unknown, so the weight is 1 - |n_a.n_b| and no convexity rule applies."""
    if k < 1:
        raise ValueError(f"volt: k must be >= 1, got {k}")
    p = _to_numpy(coord, "coord", np.float64)
    nbr, edges = knn_edges(p, k) if p.shape[0] else (np.zeros((0, 1), np.int64), np.zeros((0, 2), np.int64))
    if normal is None:
        w = edge_weights(p, pca_normals(p, nbr), edges, "unoriented")
    else:
        nrm = _to_numpy(normal, "normal", np.float64)
        if nrm.shape != p.shape:
            raise DataError(None, f"volt: normal must match coord {p.shape}, got {nrm.shape}")
        length = np.linalg.norm(nrm, axis=1, keepdims=True)
        nrm = np.divide(nrm, length, out=np.zeros_like(nrm), where=length > 0)
        w = edge_weights(p, nrm, edges, "symmetric")
    ids = felzenszwalb(p.shape[0], torch.from_numpy(edges), torch.from_numpy(w), k_thresh, seg_min_verts)
    return _like(ids, coord)


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings of the same items (1 = same partition, ~0 = chance)."""
    a = np.asarray(a.cpu() if isinstance(a, Tensor) else a).reshape(-1)
    b = np.asarray(b.cpu() if isinstance(b, Tensor) else b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"volt: labelings differ in length ({a.size} vs {b.size})")
    n = a.size
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    _, nij = np.unique(ia.astype(np.int64) * (int(ib.max()) + 1 if n else 1) + ib, return_counts=True)

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    index, sa, sb = pairs(nij), pairs(np.bincount(ia)), pairs(np.bincount(ib))
    total = n * (n - 1) / 2
    expected = sa * sb / total if total else 0.0
    max_index = (sa + sb) / 2
    if max_index == expected:  # both trivial (all one segment or all singletons): identical partitions
        return 1.0
    return (index - expected) / (max_index - expected)


def _register_fake() -> None:
    @torch.library.register_fake("volt::felzenszwalb")
    def _fake(edges, weights, num_vertices, k_thresh, seg_min_verts):
        return edges.new_empty((num_vertices,), dtype=torch.int64)


if _ext.has_ext() and hasattr(torch.ops.volt, "felzenszwalb"):
    _register_fake()
