"""volt.ops.patchify: tokens equal torch.unique(dim=0, sorted=True, return_inverse=True) on (scene, px, py, pz)
(the reference toolkit's way), the C++/CUDA kernels equal the reference with torch.equal (random, edge cases,
hypothesis), slots and cu_seqlens, bad input, offset and per-voxel scene forms, backend selection."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, assert_outputs_equal, need_ext, use_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volt.ops import _ext
from volt.ops.patchify import patchify, patchify_reference

NAMES = ("patch_coord", "token_scene", "voxel2token", "slot", "cu_seqlens")


def unique_dim0(grid: torch.Tensor, scene: torch.Tensor, p: int):
    """What the reference toolkit computes: unique (scene, grid // P) rows, lexicographic, with inverse."""
    rows = torch.cat([scene[:, None], torch.div(grid.long(), p, rounding_mode="floor")], 1)
    return torch.unique(rows, dim=0, sorted=True, return_inverse=True)


def assert_parity(grid, scene, num_scenes, p, device):
    args = (grid.to(device), scene.to(device), num_scenes, p)
    ext = torch.ops.volt.patchify(*args)
    ref = patchify_reference(*args)
    assert_outputs_equal(NAMES, ext, ref)
    return ref


def voxels(v: int, seed: int, lo: int = -40, hi: int = 200, dtype=torch.int32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (v, 3), generator=g).to(dtype)


@pytest.mark.parametrize("p", [1, 2, 5, 7])
def test_reference_is_torch_unique_dim0(p):
    grid = voxels(3000, seed=p)
    scene = torch.randint(0, 3, (3000,), generator=torch.Generator().manual_seed(1))
    patch_coord, token_scene, v2t, slot, cu = patchify_reference(grid, scene, 3, p)
    tokens, inverse = unique_dim0(grid, scene, p)
    assert torch.equal(patch_coord, tokens[:, 1:].int()) and torch.equal(token_scene, tokens[:, 0])
    assert torch.equal(v2t, inverse)
    o = grid.long() - torch.div(grid.long(), p, rounding_mode="floor") * p
    assert torch.equal(slot, o[:, 0] * p * p + o[:, 1] * p + o[:, 2]) and (slot >= 0).all() and (slot < p**3).all()
    # every voxel is its token's patch corner + its in-patch offset
    assert torch.equal(patch_coord[v2t].long() * p + o, grid.long())
    assert cu.tolist() == [0, *torch.cumsum(torch.bincount(token_scene, minlength=3), 0).tolist()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_random(device, dtype, seed):
    need_ext("patchify", device)
    g = torch.Generator().manual_seed(seed)
    v = int(torch.randint(1, 20000, (), generator=g))
    b = int(torch.randint(1, 6, (), generator=g))
    scene = torch.randint(0, b, (v,), generator=g)
    if seed % 2:
        scene = torch.sort(scene).values
    for p in (1, 3, 5):
        assert_parity(voxels(v, seed, dtype=dtype), scene, b + seed % 2, p, device)


def _edge_cases():
    i32 = torch.iinfo(torch.int32)
    return {
        "empty": (torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.int64), 2, 5),
        "empty_no_scenes": (torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.int64), 0, 5),
        "one_voxel": (torch.tensor([[3, 9, 4]], dtype=torch.int32), torch.tensor([0]), 1, 5),
        "one_patch": (torch.randint(10, 15, (100, 3), dtype=torch.int32), torch.zeros(100, dtype=torch.int64), 1, 5),
        "negative": (voxels(2000, 3, lo=-1000, hi=-1), torch.zeros(2000, dtype=torch.int64), 1, 5),
        "int32_extremes": (torch.tensor([[i32.min, i32.max, 0], [i32.max, i32.min, -1], [0, 0, i32.max]] * 2,
                                        dtype=torch.int32), torch.tensor([0, 0, 1, 1, 2, 2]), 3, 1),
        "huge_int64_multiword": (torch.randint(-2**31, 2**31 - 1, (500, 3)), torch.randint(0, 900, (500,)), 900, 1),
        "scenes_without_voxels": (voxels(500, 4), torch.tensor([1] * 200 + [4] * 300), 6, 5),
        "many_scenes": (voxels(5000, 5), torch.randint(0, 300, (5000,)), 300, 5),
        "large_patch": (voxels(3000, 6), torch.randint(0, 2, (3000,)), 2, 1000),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(_edge_cases()))
def test_parity_edge_cases(device, case):
    need_ext("patchify", device)
    grid, scene, b, p = _edge_cases()[case]
    ref = assert_parity(grid, scene, b, p, device)
    if grid.shape[0]:
        tokens, inverse = unique_dim0(grid, scene, p)
        assert torch.equal(ref[2].cpu(), inverse) and ref[0].shape[0] == tokens.shape[0]


@pytest.mark.parametrize("device", DEVICES)
def test_parity_across_work_chunks(device):
    """The CPU kernel works in 65536-voxel chunks: tokens whose voxels straddle chunk boundaries."""
    need_ext("patchify", device)
    grid = voxels(200_000, 10, lo=0, hi=60)
    scene = torch.sort(torch.randint(0, 3, (200_000,), generator=torch.Generator().manual_seed(3))).values
    assert_parity(grid, scene, 3, 5, device)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=st.integers(0, 400), b=st.integers(1, 4), p=st.integers(1, 6), span=st.integers(1, 60),
       seed=st.integers(0, 2**31), sorted_scenes=st.booleans())
def test_parity_hypothesis(v, b, p, span, seed, sorted_scenes):
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(-span, span, (v, 3), generator=g, dtype=torch.int32)
    scene = torch.randint(0, b, (v,), generator=g)
    if sorted_scenes:
        scene = torch.sort(scene).values
    for device in DEVICES:
        if _ext.has_kernel("patchify", device):
            assert_parity(grid, scene, b, p, device)


@pytest.mark.parametrize("backend", ["torch", "ext"])
def test_public_function_offset_and_batch_forms(backend, monkeypatch):
    use_backend(monkeypatch, backend, "patchify", "cpu")
    grid = voxels(900, 7, lo=0)
    offset = torch.tensor([300, 300, 900])
    by_offset = patchify(grid, offset, patch_size=5)
    by_batch = patchify(grid, batch=torch.repeat_interleave(torch.arange(3), torch.tensor([300, 0, 600])),
                        num_scenes=3)
    for name in NAMES:
        assert torch.equal(getattr(by_offset, name), getattr(by_batch, name)), name
    counts = torch.diff(by_offset.cu_seqlens)
    assert counts[1] == 0 and by_offset.max_seqlen == int(counts.max()) and by_offset.patch_size == 5
    assert by_offset.num_tokens == int(by_offset.cu_seqlens[-1])
    single = patchify(grid[:300])
    assert torch.equal(single.patch_coord, by_offset.patch_coord[: int(by_offset.cu_seqlens[1])])


BAD = {
    "scene_out_of_range": ({"batch": torch.tensor([0, 3]), "num_scenes": 3}, "scene ids must lie in"),
    "negative_scene": ({"batch": torch.tensor([0, -1]), "num_scenes": 2}, "scene ids must lie in"),
    "zero_patch": ({"offset": torch.tensor([2]), "patch_size": 0}, "patch_size must be >= 1"),
    "bad_offset": ({"offset": torch.tensor([1])}, "must equal the number of voxels"),
    "decreasing_offset": ({"offset": torch.tensor([2, 1, 2])}, "non-decreasing"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "ext"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(device, backend, case, monkeypatch):
    use_backend(monkeypatch, backend, "patchify", device)
    kwargs, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        patchify(torch.tensor([[0, 0, 0], [7, 8, 9]], dtype=torch.int32, device=device), **kwargs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="int32 or int64"):
        patchify(torch.zeros(2, 3), torch.tensor([2]))
    with pytest.raises(ValueError, match="either offset or batch"):
        patchify(torch.zeros(2, 3, dtype=torch.int32), torch.tensor([2]), batch=torch.zeros(2))
    with pytest.raises(ValueError, match="one scene id per voxel"):
        patchify(torch.zeros(2, 3, dtype=torch.int32), batch=torch.zeros(3))


def test_volt_ops_ext_without_kernel_raises(monkeypatch):
    monkeypatch.setenv("VOLT_OPS", "ext")
    with pytest.raises(RuntimeError, match="VOLT_OPS=ext"):
        patchify(torch.zeros(2, 3, dtype=torch.int32, device="meta"), batch=torch.zeros(2, device="meta",
                                                                                         dtype=torch.int64),
                 num_scenes=1)


def test_fake_kernel_for_torch_compile():
    need_ext("patchify", "cpu")
    torch.library.opcheck(torch.ops.volt.patchify.default, (voxels(400, 8), torch.randint(0, 2, (400,)), 2, 5),
                          test_utils=("test_schema", "test_faketensor"))
