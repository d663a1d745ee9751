"""tools/bench.py ops: the baselines its ratios rest on compute what volt's voxelize computes, and the
voxelize table is well formed. Timings are not asserted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_tool

from volt.ops.voxelize import voxelize

bench = load_tool("bench")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_numpy_baselines_compute_volts_voxels():
    pts = bench.indoor_room(20_000, seed=3)
    grid_size = 0.05  # cells in float32 on both sides: the same voxels
    pick, inverse, count, grid = bench.numpy_grid_sample(pts.numpy(), grid_size, np.random.default_rng(1), np)
    cells = np.floor(pts.numpy() / np.float32(grid_size)).astype(np.int64)
    cells -= cells.min(0)
    v = len(count)
    assert count.sum() == len(pts) and np.array_equal(np.bincount(inverse, minlength=v), count)
    assert np.array_equal(grid[inverse], cells)  # every point lies in its voxel's cell
    assert np.array_equal(inverse[pick], np.arange(v))  # every voxel's pick is one of its points
    assert np.array_equal(grid, cells[pick])
    ours = voxelize(pts, [len(pts)], grid_size, generator=torch.Generator().manual_seed(0))
    assert ours.num_voxels == v
    assert np.array_equal(_sorted_rows(grid), _sorted_rows(ours.grid_coord.numpy().astype(np.int64)))
    assert np.array_equal(np.sort(count), np.sort(ours.count.numpy()))
    # the lean variant: the same voxels, inverse and picks (same random draws), without the grid cells
    lean = bench.numpy_grid_sample_lean(pts.numpy(), grid_size, np.random.default_rng(1), np)
    assert len(lean) == 3
    for a, b in zip(lean, (pick, inverse, count)):
        assert np.array_equal(a, b)


def test_voxelize_rows_table():
    rows = bench.voxelize_rows("tiny", bench.indoor_room(3000), 0.05, "cpu")
    timed = {r["impl"]: r for r in rows if "note" not in r}
    for label in ("volt reference (torch)", bench.NUMPY, bench.NUMPY_LEAN, "torch sort+unique_consecutive",
                  "torch.unique(packed key)", "bandwidth floor (copy 16 B/pt)"):
        row = timed[label]
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("mpts", "ms", "best", "vs_torch", "vs_numpy"))
    assert timed[bench.NUMPY]["vs_numpy"] == 1.0
    notes = [r["impl"] for r in rows if "note" in r]
    assert not [n for n in notes if "voxel count" in n], notes  # every baseline found volt's voxels
