"""volt.ops.voxelize: the torch reference against an independent NumPy reading of the spec (§1.7), and the
C++/CUDA kernels against the reference with torch.equal (random clouds, edge cases, hypothesis), fragment
and pick invariants, thread-count independence, bad input, backend selection (VOLT_OPS)."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import DEVICES, assert_outputs_equal, need_ext, use_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volt.ops import _ext
from volt.ops.voxelize import voxelize, voxelize_reference

vx = importlib.import_module("volt.ops.voxelize")  # the module (volt.ops.voxelize is also the function)

NAMES = ("grid_coord", "inverse", "count", "voxel_offset", "order", "pick")


def assert_parity(coord, offset, grid_size, seed, device, with_order=True) -> tuple:
    """ext == reference, output by output (dtype, shape and values)."""
    args = (coord.to(device), offset.to(device), grid_size.to(device), seed, with_order)
    ext = torch.ops.volt.voxelize(*args)
    ref = voxelize_reference(*args)
    assert_outputs_equal(NAMES, ext, ref)
    return ref


def cloud(sizes, seed, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    coord = (torch.randn(n, 3, generator=g, dtype=torch.float64) * scale + torch.randn(3, generator=g) * 50).to(dtype)
    return coord, torch.cumsum(torch.tensor(sizes, dtype=torch.int64), 0)


def spec_numpy(coord, offset, grid_size):
    """GridSample per scene as the spec words it: floor, minus the min, unique rows, inverse, counts."""
    import numpy as np
    grids, inverses, counts, v0, start = [], [], [], 0, 0
    for end, gs in zip(offset, grid_size):
        cell = np.floor(coord[start:end] / coord.dtype.type(gs))
        g = (cell - cell.min(0)).astype(np.int64) if end > start else np.zeros((0, 3), np.int64)
        u, inv, cnt = np.unique(g, axis=0, return_inverse=True, return_counts=True)
        grids.append(u), inverses.append(inv.reshape(-1) + v0), counts.append(cnt)
        v0, start = v0 + len(u), end
    return np.concatenate(grids), np.concatenate(inverses), np.concatenate(counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_matches_numpy_spec(dtype):
    pytest.importorskip("numpy")  # the GPU machine may lack it; every other test here is torch only
    coord, offset = cloud([500, 0, 800, 1], seed=1, dtype=dtype)
    gs = torch.tensor([0.05, 0.02, 0.3, 0.1], dtype=dtype)
    grid, inverse, count, voxel_offset, order, _pick = voxelize_reference(coord, offset, gs, 7, True)
    g_np, inv_np, cnt_np = spec_numpy(coord.numpy(), offset.numpy(), gs.numpy())
    assert grid.tolist() == g_np.tolist() and inverse.tolist() == inv_np.tolist()
    assert count.tolist() == cnt_np.tolist()
    per_scene = [len(set(inv_np[a:b].tolist())) for a, b in zip([0, *offset.tolist()[:-1]], offset.tolist())]
    assert voxel_offset.tolist() == torch.cumsum(torch.tensor(per_scene), 0).tolist()
    # order: points grouped by voxel, by index inside a voxel
    assert torch.equal(inverse[order], torch.repeat_interleave(torch.arange(len(count)), count))
    assert torch.equal(order, torch.sort(inverse * len(inverse) + torch.arange(len(inverse))).indices)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_random_clouds(device, dtype, seed):
    need_ext("voxelize", device)
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 4000, (int(torch.randint(1, 6, (), generator=g)),), generator=g).tolist()
    coord, offset = cloud(sizes, seed, scale=float(torch.rand((), generator=g)) * 10 + 0.1, dtype=dtype)
    gs = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.5])[torch.randint(0, 5, (len(sizes),), generator=g)]
    for s, with_order in ((None, True), (seed, False), (seed, True)):
        assert_parity(coord, offset, gs, s, device, with_order)


def _edge_cases():
    f = torch.float32
    big = float(2**21 - 1)
    return {
        "empty": (torch.zeros(0, 3), [0], [0.05]),
        "empty_batch": (torch.zeros(0, 3), [], []),
        "empty_scenes_only": (torch.zeros(0, 3), [0, 0, 0], [0.1, 0.2, 0.3]),
        "one_point": (torch.tensor([[1.5, -2.5, 3.25]]), [1], [0.05]),
        "one_voxel": (torch.rand(300, 3) * 0.049, [300], [0.05]),
        "negative": (torch.rand(2000, 3) * -40 - 1000, [2000], [0.1]),
        "huge": (torch.tensor([[1e30, -1e30, 3e38]], dtype=f).repeat(5, 1) + torch.arange(5.)[:, None], [5], [1e25]),
        "large_offset": (torch.rand(3000, 3) * 20 + 1e5, [1000, 3000], [0.02, 0.05]),
        "empty_middle_scene": (torch.rand(100, 3), [50, 50, 50, 100], [0.1, 0.2, 0.3, 0.1]),
        "many_scenes": (torch.rand(3000, 3) * 5, torch.sort(torch.randint(0, 3000, (199,))).values.tolist() + [3000],
                        (torch.rand(200) * 0.3 + 0.02).tolist()),
        "full_width_64bit": (torch.tensor([[0., 0., 0.], [big, big, big]] * 2), [2, 4], [1.0, 1.0]),
        "two_word_sort": (torch.tensor([[big, 0., big], [0., big, 0.], [big, big, big]] * 3 + [[0., 0., 0.]]),
                          [3, 6, 10], [1.0, 1.0, 1.0]),
        "ties_across_scenes": (torch.tensor([[0.1, 0.1, 0.1]] * 6), [2, 4, 6], [0.5, 0.5, 0.5]),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(_edge_cases()))
def test_parity_edge_cases(device, case):
    need_ext("voxelize", device)
    torch.manual_seed(0)
    coord, offset, gs = _edge_cases()[case]
    out = assert_parity(coord, torch.tensor(offset, dtype=torch.int64), torch.tensor(gs, dtype=coord.dtype), 3, device)
    grid, inverse, count = out[0], out[1], out[2]
    assert count.sum() == coord.shape[0] and (grid >= 0).all() and (grid < 2**21).all()
    assert torch.equal(torch.bincount(inverse, minlength=len(count)), count)


@pytest.mark.parametrize("device", DEVICES)
def test_parity_voxels_spanning_work_chunks(device):
    """The CPU kernel works in 65536-point chunks: voxels (and scenes) that span chunk boundaries, and
    whole chunks without a voxel start (one voxel of 200k points)."""
    need_ext("voxelize", device)
    g = torch.Generator().manual_seed(9)
    dense = torch.rand(150_000, 3, generator=g) * 0.4  # ~8 points per voxel at 0.1 -> long runs
    one_voxel = torch.full((200_000, 3), 7.05) + torch.rand(200_000, 3, generator=g) * 0.04
    coord = torch.cat([dense[:70_001], torch.tensor([[3.0, 2.0, 1.0]]), one_voxel, dense[70_001:]])
    offset = torch.tensor([70_001, 70_002, 270_002, 350_001])
    for seed, with_order in ((4, False), (None, True)):
        assert_parity(coord, offset, torch.tensor([0.1, 0.1, 0.1, 0.02]), seed, device, with_order)


@pytest.mark.parametrize("device", DEVICES)
def test_parity_voxel_starting_at_a_work_chunk_boundary(device):
    """A voxel whose first point sits exactly at sorted position 65536, where the second chunk begins."""
    need_ext("voxelize", device)
    g = torch.Generator().manual_seed(10)
    first = torch.full((65_536, 3), 0.01)  # the lowest key: sorted positions 0 .. 65535
    coord = torch.cat([torch.full((1000, 3), 0.51), first, torch.rand(5000, 3, generator=g) + 2])
    coord = coord[torch.randperm(len(coord), generator=g)]
    for seed, with_order in ((4, False), (None, True)):
        out = assert_parity(coord, torch.tensor([len(coord)]), torch.tensor([0.1]), seed, device, with_order)
        assert out[2][0] == 65_536


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 60), min_size=1, max_size=4),
       grid_sizes=st.lists(st.sampled_from([0.02, 0.05, 0.25, 1.0, 3.0]), min_size=4, max_size=4),
       seed=st.integers(0, 2**31), train=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_parity_hypothesis(sizes, grid_sizes, seed, train, dtype):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    # few distinct values per axis, so voxels collide and runs are long
    coord = (torch.randint(-8, 8, (n, 3), generator=g) * 0.37 + torch.rand(n, 3, generator=g) * 0.1).to(dtype)
    offset = torch.cumsum(torch.tensor(sizes, dtype=torch.int64), 0)
    gs = torch.tensor(grid_sizes[: len(sizes)], dtype=dtype)
    for device in DEVICES:
        if _ext.has_kernel("voxelize", device):
            assert_parity(coord, offset, gs, seed if train else None, device, with_order=not train)


@pytest.mark.parametrize("device", DEVICES)
def test_fragments_cover_points_and_hold_every_voxel_once(device):
    coord, offset = cloud([3000, 2000], seed=3, scale=0.3)
    vox = voxelize(coord.to(device), offset, torch.tensor([0.05, 0.1]), mode="test")
    v = vox.num_voxels
    assert vox.pick is None and vox.num_fragments == int(vox.count.max()) > 1
    seen = torch.zeros(coord.shape[0], dtype=torch.bool, device=device)
    for i, frag in enumerate(vox.fragments()):
        assert torch.equal(vox.inverse[frag], torch.arange(v, device=device))  # each voxel exactly once
        # point i % count of each voxel, in original index order
        assert torch.equal(frag, vox.order[vox.start + i % vox.count])
        seen[frag] = True
    assert seen.all()
    with pytest.raises(IndexError):
        vox.fragment(vox.num_fragments)


@pytest.mark.parametrize("device", DEVICES)
def test_train_mode_skips_order_until_asked(device):
    coord, offset = cloud([2000, 1000], seed=8, scale=0.3)
    train = voxelize(coord.to(device), offset, 0.05, generator=torch.Generator().manual_seed(0))
    test = voxelize(coord.to(device), offset, 0.05, mode="test")
    assert train.order is None and test.order is not None
    assert torch.equal(train.fragment(1), test.fragment(1)) and torch.equal(train.order, test.order)
    asked = voxelize(coord.to(device), offset, 0.05, generator=torch.Generator().manual_seed(0), return_order=True)
    assert torch.equal(asked.order, test.order) and torch.equal(asked.pick, train.pick)


@pytest.mark.parametrize("device", DEVICES)
def test_train_pick_is_in_its_voxel_and_uniform(device):
    coord = torch.tensor([[0.01, 0.01, 0.01]] * 4 + [[5.0, 5.0, 5.0]] * 3, device=device)
    hits = torch.zeros(7, dtype=torch.int64)
    for s in range(600):
        vox = voxelize(coord, [7], 0.1, generator=torch.Generator().manual_seed(s))
        assert torch.equal(vox.inverse[vox.pick], torch.arange(2, device=device))
        hits[vox.pick.cpu()] += 1
    assert (hits[:4] > 100).all() and (hits[4:] > 130).all()  # expected 150 and 200 each


def test_generator_reproducible_and_backends_agree(monkeypatch):
    need_ext("voxelize", "cpu")
    coord, offset = cloud([5000], seed=4, scale=0.5)
    outs = {}
    for name in ("ext", "torch"):
        monkeypatch.setenv("VOLT_OPS", name)
        outs[name] = voxelize(coord, offset, 0.05, generator=torch.Generator().manual_seed(11))
    a, b = outs["ext"], outs["torch"]
    for name in NAMES:
        if name != "order":  # None in train mode
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = voxelize(coord, offset, 0.05, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(a.pick, c.pick)


def test_same_result_for_one_and_two_threads():
    need_ext("voxelize", "cpu")
    coord, offset = cloud([150_000, 90_000], seed=5, scale=2.0)
    gs = torch.tensor([0.02, 0.05])
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.volt.voxelize(coord, offset, gs, 9, True))
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(NAMES, *results):
        assert torch.equal(a, b), name


BAD = {
    "nan": (torch.tensor([[0.0, float("nan"), 0.0]]), [1], [0.1], "NaN or Inf"),
    "inf": (torch.tensor([[0.0, 0.0, 0.0], [float("inf"), 0.0, 0.0]]), [2], [0.1], "NaN or Inf"),
    "zero_grid": (torch.zeros(2, 3), [2], [0.0], "grid_size must be finite and > 0"),
    "negative_grid": (torch.zeros(2, 3), [1, 2], [0.1, -0.1], "grid_size must be finite and > 0"),
    "nan_grid": (torch.zeros(2, 3), [2], [float("nan")], "grid_size must be finite and > 0"),
    "decreasing_offset": (torch.zeros(4, 3), [3, 2, 4], [0.1] * 3, "non-decreasing"),
    "short_offset": (torch.zeros(4, 3), [3], [0.1], "must equal the number of points"),
    "no_offset": (torch.zeros(4, 3), [], [], "must equal the number of points"),
    "extent": (torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0**21 * 0.01, 0.0]]), [2], [0.01], "along axis y"),
    "overflow_to_inf": (torch.tensor([[0.0, 0.0, 0.0], [3e38, 0.0, 0.0]]), [2], [1e-3], "along axis x"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "ext"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(device, backend, case, monkeypatch):
    use_backend(monkeypatch, backend, "voxelize", device)
    coord, offset, gs, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        voxelize(coord.to(device), offset, torch.tensor(gs, dtype=torch.float32), mode="test")


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        voxelize(torch.zeros(1, 3), [1], 0.1, mode="eval")
    with pytest.raises(ValueError, match="float"):
        voxelize(torch.zeros(1, 3, dtype=torch.int32), [1], 0.1)
    with pytest.raises(ValueError, match="one value per scene"):
        voxelize(torch.zeros(2, 3), [1, 2], torch.tensor([0.1, 0.2, 0.3]))


def test_volt_ops_torch_forces_reference(monkeypatch):
    calls = []
    real = vx.voxelize_reference
    monkeypatch.setattr(vx, "voxelize_reference", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("VOLT_OPS", "torch")
    voxelize(torch.rand(10, 3), [10], 0.1)
    assert calls == [1]
    if _ext.has_kernel("voxelize", "cpu"):
        monkeypatch.setenv("VOLT_OPS", "auto")
        voxelize(torch.rand(10, 3), [10], 0.1)
        assert calls == [1]  # auto picked the kernel


def test_volt_ops_ext_without_kernel_raises(monkeypatch):
    monkeypatch.setenv("VOLT_OPS", "ext")
    with pytest.raises(RuntimeError, match="VOLT_OPS=ext"):  # no kernel for the meta device
        voxelize(torch.zeros(4, 3, device="meta"), torch.tensor([4], device="meta"), 0.1)
    monkeypatch.setattr(_ext, "_STATE", {"loaded": False, "error": "ImportError: no volt._C"})
    with pytest.raises(RuntimeError, match="no volt._C"):
        voxelize(torch.zeros(4, 3), [4], 0.1)
    monkeypatch.delenv("VOLT_OPS")
    monkeypatch.setenv("VOLT_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match="no volt._C"):
        voxelize(torch.zeros(4, 3), [4], 0.1)
    monkeypatch.setenv("VOLT_REQUIRE_EXT", "0")
    assert _ext.ext_info()["extension_loaded"] is False and voxelize(torch.zeros(4, 3), [4], 0.1).num_voxels == 1


def test_fake_kernel_for_torch_compile():
    need_ext("voxelize", "cpu")
    coord, offset = cloud([300, 200], seed=6)
    torch.library.opcheck(torch.ops.volt.voxelize.default, (coord, offset, torch.tensor([0.1, 0.2]), 5, False),
                          test_utils=("test_schema", "test_faketensor"))
