"""Benchmarks of volt's kernels, measured in one run and printed as tables.

`python tools/bench.py ops [--device cpu|cuda] [--sizes 35k 200k 1M 5M] [--threads N]` runs:
- voxelize (train mode, the whole call: voxels, inverse, counts, one random point per voxel) on synthetic
  clouds: a LiDAR-like sweep of 35k points at 5 cm; indoor rooms (10 x 8 x 3 m shell + 20 boxes, points on
  the surfaces in random order) of 200k, 1M and 5M points at 2 cm. Rows: volt ext, volt reference (torch),
  NumPy hash-and-argsort grid sampling as the reference toolkit's loader does it (spec §1.7: cells minus
  their min, FNV hash, argsort, unique, random pick, inverse, and the picked points' grid cells; always on
  the CPU) -- the "vs numpy" baseline -- and the same without the grid cells ("numpy lean"), torch
  sort + unique_consecutive + random pick, torch.unique on a packed key, open3d voxel_down_sample (when
  installed), and the memory-bandwidth floor: a copy moving 16 bytes per point (xyz in, one int32 out).
- patchify (5x5x5 patches) of those clouds' voxels: volt ext vs torch.unique(dim=0) (the reference toolkit).
- the rows of tools/bench_sparse_conv.py (`run(device) -> list[dict]`), when that file exists.
Implementations are timed in interleaved rounds (so load changes hit all alike); "ms" is the median, "best"
the fastest round, and the ratios (x floor, vs numpy, vs torch = torch's best built-in path) use the best
times, since on a shared machine noise only ever adds time. CUDA rows synchronize around every call.
Sections live in SECTIONS (name -> function(args)); new benchmarks plug in by name.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys

# Waiting OpenMP threads sleep instead of spinning (unless the caller chose otherwise): on a shared
# machine a spinning thread holds the core its busy team-mate needs, and every multi-threaded row (volt's
# and torch's alike) then slows by up to 10x. Must be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tools")):  # volt, and the sibling benchmark scripts
    if path not in sys.path:
        sys.path.insert(0, path)

from _bench_common import add_device_args, parse_device_args, sync_fn, time_calls

from volt.ops import _ext
from volt.ops.patchify import patchify
from volt.ops.voxelize import voxelize

SIZES = {"35k": (35_000, 0.05, "lidar"), "200k": (200_000, 0.02, "indoor"), "1M": (1_000_000, 0.02, "indoor"),
         "5M": (5_000_000, 0.02, "indoor")}


def indoor_room(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3) float32 points on the surfaces of a 10 x 8 x 3 m room with 20 boxes, 3 mm noise, random order."""
    g = torch.Generator().manual_seed(seed)
    boxes = [(torch.zeros(3, dtype=torch.float64), torch.tensor([10.0, 8.0, 3.0], dtype=torch.float64))]
    for _ in range(20):
        size = torch.tensor([0.4, 0.4, 0.4]) + torch.rand(3, generator=g) * torch.tensor([1.6, 1.6, 1.4])
        corner = torch.rand(3, generator=g) * torch.tensor([9.6, 7.6, 0.0]).sub(size).clamp(min=0) + 0.2
        corner[2] = 0.0
        boxes.append((corner.double(), (corner + size).double()))
    faces = [(a, side[a], lo, hi) for lo, hi in boxes for a in range(3) for side in (lo, hi)]
    lo = torch.stack([f[2] for f in faces])  # (F, 3)
    hi = torch.stack([f[3] for f in faces])
    axis = torch.tensor([f[0] for f in faces])
    value = torch.stack([f[1] for f in faces])
    area = torch.stack([torch.prod(torch.cat([(h - l)[:a], (h - l)[a + 1:]])) for a, _, l, h in faces])
    which = torch.multinomial(area / area.sum(), n, replacement=True, generator=g)
    pts = lo[which] + torch.rand(n, 3, generator=g, dtype=torch.float64) * (hi - lo)[which]
    pts[torch.arange(n), axis[which]] = value[which]
    return (pts + torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.003).float()


def lidar_sweep(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3) float32 returns of a 32-beam spinning LiDAR 1.8 m above a plane, with walls 3-60 m away."""
    g = torch.Generator().manual_seed(seed)
    elev = torch.deg2rad(torch.linspace(-30.0, 10.0, 32, dtype=torch.float64))[torch.randint(0, 32, (n,), generator=g)]
    azim = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * torch.pi
    ground = torch.where(elev < -0.01, 1.8 / torch.tan(-elev.clamp(max=-1e-3)), torch.inf)
    wall = torch.where(torch.rand(n, generator=g) < 0.3, 3 + 57 * torch.rand(n, generator=g, dtype=torch.float64),
                       torch.inf)
    r = torch.minimum(torch.minimum(ground, wall), torch.tensor(80.0, dtype=torch.float64))
    pts = torch.stack([r * elev.cos() * azim.cos(), r * elev.cos() * azim.sin(), 1.8 + r * elev.sin()], 1)
    return (pts + torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.01).float()


def measure(fns: dict, device: str, budget_s: float = 1.5, max_rounds: int = 9) -> dict[str, tuple[float, float]]:
    """label -> (median, best) seconds per call. After one warm-up call each, implementations run in
    interleaved rounds; each takes part in as many rounds as fit its budget (at least one)."""
    sync = sync_fn(device)

    def once(fn) -> float:
        return time_calls(fn, 1, sync)[0]

    rounds = {label: max(1, min(max_rounds, int(budget_s / max(once(fn), 1e-6)))) for label, fn in fns.items()}
    times = {label: [] for label in fns}
    for r in range(max(rounds.values())):
        for label, fn in fns.items():
            if r < rounds[label]:
                times[label].append(once(fn))
    return {label: (statistics.median(t), min(t)) for label, t in times.items()}


def fnv_hash(grid, np):
    """The reference toolkit's voxel key: FNV-1 over the three uint64 columns (spec §1.7)."""
    cols = grid.astype(np.uint64)  # the reference casts a copy of the whole (N, 3) array
    h = np.full(grid.shape[0], 14695981039346656037, dtype=np.uint64)
    for j in range(3):
        h *= np.uint64(1099511628211)
        h ^= cols[:, j]
    return h


def _numpy_pick(key, rng, np):
    """The reference toolkit's steps after the hash: argsort, unique with inverse and counts, one random
    point per voxel (spec §1.7), the inverse in point order. Returns (pick, inverse, count)."""
    idx_sort = np.argsort(key)
    _, inv_sorted, count = np.unique(key[idx_sort], return_inverse=True, return_counts=True)
    start = np.cumsum(np.insert(count, 0, 0)[:-1])
    pick = idx_sort[start + rng.integers(0, count.max(), count.size) % count]
    inverse = np.empty_like(inv_sorted)
    inverse[idx_sort] = inv_sorted
    return pick, inverse, count


def _numpy_cells(coord, grid_size: float, np):
    """The reference's cells: floor(coord / grid_size) minus their per-axis min (int64, (N, 3))."""
    cell = np.floor(coord / grid_size).astype(np.int64)
    cell -= cell.min(0)
    return cell


def numpy_grid_sample(coord, grid_size: float, rng, np):
    """Spec §1.7 train mode as the reference toolkit's GridSample computes what volt's voxelize returns:
    the picked point of every voxel, the point -> voxel inverse, the counts and the voxels' grid cells
    (a gather of the picked points' rows). Cells in the coordinates' float32, as volt computes them and as
    the reference's `coord / np.array(grid_size)` does under NumPy 1.x (NumPy 2 promotes it to float64,
    which costs this baseline ~1.4 ms more at 1M points and moves a few boundary points to the next cell)."""
    cell = _numpy_cells(coord, grid_size, np)
    pick, inverse, count = _numpy_pick(fnv_hash(cell, np), rng, np)
    return pick, inverse, count, cell[pick]


def numpy_grid_sample_lean(coord, grid_size: float, rng, np):
    """numpy_grid_sample without the voxels' grid cells (volt's voxelize returns them; the reference's loader
    gathers them). Shown beside it, not used for a ratio."""
    return _numpy_pick(fnv_hash(_numpy_cells(coord, grid_size, np), np), rng, np)


def _packed_key(coord: torch.Tensor, grid_size: float) -> torch.Tensor:
    # divide by a tensor: with a Python float, CUDA multiplies by the reciprocal, which can floor differently
    cell = torch.floor(coord / torch.tensor(grid_size, dtype=coord.dtype, device=coord.device))
    g = (cell - cell.amin(0)).long()
    return (g[:, 0] << 42) | (g[:, 1] << 21) | g[:, 2]


def torch_sort_unique(coord: torch.Tensor, grid_size: float, gen: torch.Generator):
    """torch's sort + unique_consecutive + random pick (+ inverse)."""
    sorted_key, order = torch.sort(_packed_key(coord, grid_size))
    _, inv_sorted, count = torch.unique_consecutive(sorted_key, return_inverse=True, return_counts=True)
    r = torch.randint(0, 1 << 62, (count.numel(),), device=coord.device, generator=gen)
    pick = order[torch.cumsum(count, 0) - count + r % count]
    inverse = torch.empty_like(inv_sorted)
    inverse[order] = inv_sorted
    return pick, inverse, count


def torch_unique_key(coord: torch.Tensor, grid_size: float, gen: torch.Generator):
    """torch.unique on the packed key (inverse, counts), then an argsort of the inverse for the pick."""
    _, inverse, count = torch.unique(_packed_key(coord, grid_size), return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    r = torch.randint(0, 1 << 62, (count.numel(),), device=coord.device, generator=gen)
    return order[torch.cumsum(count, 0) - count + r % count], inverse, count


def _with_ops(mode: str, fn):
    def run():
        saved = os.environ.get("VOLT_OPS")
        os.environ["VOLT_OPS"] = mode
        try:
            return fn()
        finally:
            os.environ.pop("VOLT_OPS") if saved is None else os.environ.__setitem__("VOLT_OPS", saved)
    return run


NUMPY = "numpy GridSample (reference, CPU)"
NUMPY_LEAN = "numpy lean: no grid cells (CPU)"


def voxelize_rows(name: str, pts: torch.Tensor, grid_size: float, device: str) -> list[dict]:
    n = pts.shape[0]
    coord = pts.to(device)
    offset = torch.tensor([n], device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    v = voxelize(coord, offset, grid_size, generator=gen).num_voxels
    src = torch.empty(2 * n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    fns = {"bandwidth floor (copy 16 B/pt)": lambda: dst.copy_(src)}
    if _ext.has_kernel("voxelize", device):
        fns["volt ext"] = _with_ops("ext", lambda: voxelize(coord, offset, grid_size, generator=gen))
    fns["volt reference (torch)"] = _with_ops("torch", lambda: voxelize(coord, offset, grid_size, generator=gen))
    notes = {}
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np

        pts_np, rng = pts.numpy(), np.random.default_rng(0)
        fns[NUMPY] = lambda: numpy_grid_sample(pts_np, grid_size, rng, np)
        fns[NUMPY_LEAN] = lambda: numpy_grid_sample_lean(pts_np, grid_size, rng, np)
    else:
        notes[NUMPY] = "numpy not installed"
    fns["torch sort+unique_consecutive"] = lambda: torch_sort_unique(coord, grid_size, gen)
    fns["torch.unique(packed key)"] = lambda: torch_unique_key(coord, grid_size, gen)
    if importlib.util.find_spec("open3d") is not None:
        import open3d as o3d

        def o3d_down():
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.double().numpy()))
            return cloud.voxel_down_sample(grid_size)

        fns["open3d voxel_down_sample (CPU)"] = o3d_down
    else:
        notes["open3d voxel_down_sample"] = "not installed"
    for label in (NUMPY, NUMPY_LEAN, "torch sort+unique_consecutive", "torch.unique(packed key)"):
        found = len(fns[label]()[2]) if label in fns else v  # the baselines should find the same voxels
        if found != v:
            notes[f"{label}: voxel count"] = f"{found}, volt {v}"
    times = measure(fns, device)
    best = {label: b for label, (_, b) in times.items()}
    numpy_s = best.get(NUMPY)
    torch_s = min(best["torch sort+unique_consecutive"], best["torch.unique(packed key)"])
    rows = []
    for label, (med, b) in times.items():
        rows.append({"cloud": name, "impl": label, "voxels": v, "mpts": n / b / 1e6, "ms": med * 1e3, "best": b * 1e3,
                         "x_floor": b / best["bandwidth floor (copy 16 B/pt)"], "vs_torch": torch_s / b,
                         "vs_numpy": numpy_s / b if numpy_s else None})
    rows += [{"cloud": name, "impl": label, "voxels": v, "note": note} for label, note in notes.items()]
    return rows


def patchify_rows(name: str, pts: torch.Tensor, grid_size: float, device: str) -> list[dict]:
    vox = voxelize(pts.to(device), torch.tensor([pts.shape[0]], device=device), grid_size, mode="test")
    grid, offset = vox.grid_coord, vox.voxel_offset
    scene = torch.zeros(grid.shape[0], dtype=torch.int64, device=device)
    t = patchify(grid, offset).num_tokens

    def unique_dim0():
        rows = torch.cat([scene[:, None], torch.div(grid.long(), 5, rounding_mode="floor")], 1)
        return torch.unique(rows, dim=0, sorted=True, return_inverse=True)

    fns = {}
    if _ext.has_kernel("patchify", device):
        fns["volt ext"] = _with_ops("ext", lambda: patchify(grid, offset))
    fns["torch.unique(dim=0) (reference toolkit)"] = unique_dim0
    times = measure(fns, device, budget_s=3.0, max_rounds=9)
    base = times["torch.unique(dim=0) (reference toolkit)"][1]
    return [{"cloud": name, "impl": label, "voxels": grid.shape[0], "tokens": t, "mtok": t / b / 1e6, "ms": med * 1e3,
                 "best": b * 1e3, "speedup": base / b} for label, (med, b) in times.items()]


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format); missing values print as '-'. First two columns left-aligned."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([format(r[k], f) if r.get(k) is not None else "-" for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for c in cells:
        print("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))).rstrip())
    print()


def bench_ops(args: argparse.Namespace) -> None:
    device = args.device
    print(f"volt ops benchmark: device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
          + (f" gpu={torch.cuda.get_device_name()}" if device == "cuda" else ""))
    print(f"backend: {_ext.ext_info()['reason']}\n")
    clouds = {}
    for size in args.sizes:
        n, gs, kind = SIZES[size]
        clouds[size] = ((lidar_sweep if kind == "lidar" else indoor_room)(n), gs, f"{kind} {size} @{gs * 100:g}cm")
    rows = []
    for pts, gs, name in clouds.values():
        rows += voxelize_rows(name, pts, gs, device)
    print("voxelize (train mode: voxels, inverse, counts, one random point per voxel)")
    print_table(rows, [("cloud", "cloud", "s"), ("impl", "impl", "s"), ("voxels", "voxels", "d"),
                       ("mpts", "Mpts/s", ".1f"), ("ms", "ms", ".2f"), ("best", "best", ".2f"),
                       ("x_floor", "x floor", ".1f"), ("vs_numpy", "vs numpy", ".1f"), ("vs_torch", "vs torch", ".1f"),
                       ("note", "note", "s")])
    rows = []
    for size, (pts, gs, name) in clouds.items():
        if size != "5M" or args.all_patchify:  # torch.unique(dim=0) on the 5M cloud's voxels alone takes ~10 s
            rows += patchify_rows(name, pts, gs, device)
    print("patchify (5x5x5 patches of those voxels, one scene)")
    print_table(rows, [("cloud", "cloud", "s"), ("impl", "impl", "s"), ("voxels", "voxels", "d"),
                       ("tokens", "tokens", "d"), ("mtok", "Mtok/s", ".2f"), ("ms", "ms", ".2f"),
                       ("best", "best", ".2f"), ("speedup", "speed-up", ".1f")])
    if os.path.exists(os.path.join(ROOT, "tools", "bench_sparse_conv.py")):
        try:
            srows = importlib.import_module("bench_sparse_conv").run(device)
            keys = list(dict.fromkeys(k for r in srows for k in r))
            print("sparse convolution (tools/bench_sparse_conv.py)")
            print_table(srows, [(k, k, ".2f" if any(isinstance(r.get(k), float) for r in srows) else "")
                                for k in keys])
        except Exception as exc:  # noqa: BLE001 - another benchmark's failure is reported, never fatal
            print(f"sparse convolution benchmark failed: {type(exc).__name__}: {exc}\n")


def bench_model(args: argparse.Namespace) -> None:
    """Volt-S forward / fwd+bwd vs the reference tokenization (tools/bench_model.py)."""
    mod = importlib.import_module("bench_model")
    mod.print_rows(mod.run(args.device))


def bench_train(args: argparse.Namespace) -> None:
    """Data-pipeline throughput (tools/bench_train.py) and training steps (tools/bench_train_step.py)."""
    pipe = importlib.import_module("bench_train")
    rows = pipe.run_pipeline_bench()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("data pipeline (scenes/s per worker)")
    print_table(rows, [(k, k, ".2f" if any(isinstance(r.get(k), float) for r in rows) else "") for k in keys])
    step = importlib.import_module("bench_train_step")
    model = importlib.import_module("bench_model")
    model.print_rows(step.run(args.device), step.COLUMNS, step.TITLES)


SECTIONS = {"ops": bench_ops, "model": bench_model, "train": bench_train}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=sorted(SECTIONS))
    add_device_args(ap, "torch CPU threads (default: torch's choice)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--all-patchify", action="store_true", help="also run patchify on the 5M cloud's voxels")
    args = parse_device_args(ap, argv)
    SECTIONS[args.section](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
