"""Sparse convolution: kernel maps and gather-GEMM-scatter vs dense conv3d, ext vs reference, determinism."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from volt.ops._ext import has_kernel
from volt.ops.kernel_map import (
    KernelMap,
    downsample_map,
    downsample_map_reference,
    inverse_map,
    submanifold_map,
    submanifold_map_reference,
)
from volt.ops.sparse_conv import sparse_conv

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ["torch", "ext"]


@pytest.fixture(params=[(d, b) for d in DEVICES for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def backend(request, monkeypatch) -> str:
    device, name = request.param
    if name == "ext" and not has_kernel("sparse_conv_forward", device):
        pytest.skip(f"the extension has no sparse_conv kernels for {device}")
    monkeypatch.setenv("VOLT_OPS", name)
    return device


def random_coords(scenes: int, grid: int, density: float, seed: int, device: str = "cpu") -> torch.Tensor:
    """Unique voxel coords of `scenes` scenes in a grid^3 box, in shuffled (unsorted) order."""
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(scenes, grid, grid, grid, generator=g) < density
    c = occ.nonzero().to(torch.int32)
    return c[torch.randperm(c.shape[0], generator=g)].contiguous().to(device)


def to_dense(feat: torch.Tensor, coords: torch.Tensor, scenes: int, size: int) -> torch.Tensor:
    c = coords.long()
    dense = feat.new_zeros(scenes, size, size, size, feat.shape[1])
    dense = dense.index_put((c[:, 0], c[:, 1], c[:, 2], c[:, 3]), feat)  # differentiable scatter
    return dense.permute(0, 4, 1, 2, 3)


def at_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    c = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]


def dense_case(case: str, coords, weight, scenes: int, grid: int):
    """(sparse result fn, dense result fn) for one convolution type, both mapping (feat, weight) -> rows."""
    w5 = lambda w: w.permute(0, 4, 1, 2, 3)  # (out, kx, ky, kz, in) -> conv3d's (out, in, kx, ky, kz)
    if case.startswith("subm"):
        k = weight.shape[1]
        kmap = submanifold_map(coords, k)
        dense = lambda f, w: at_sites(F.conv3d(to_dense(f, coords, scenes, grid), w5(w), padding=k // 2), coords)
    elif case == "down":
        out_coords, kmap = downsample_map(coords, 2, 2)
        dense = lambda f, w: at_sites(F.conv3d(to_dense(f, coords, scenes, grid), w5(w), stride=2), out_coords)
    else:  # inverse of the down map: coarse features -> the fine coords
        out_coords, down = downsample_map(coords, 2, 2)
        kmap = inverse_map(down)
        # conv_transpose3d weight is (in, out, kx, ky, kz); no kernel flip in spconv's inverse conv
        dense = lambda f, w: at_sites(
            F.conv_transpose3d(to_dense(f, out_coords, scenes, grid // 2), w.permute(4, 0, 1, 2, 3), stride=2), coords
        )
    return (lambda f, w: sparse_conv(f, w, kmap)), dense, kmap


@pytest.mark.parametrize("case", ["subm3", "subm5", "down", "inverse"])
def test_matches_dense_conv3d(backend, case):
    device, scenes, grid = backend, 2, 8
    coords = random_coords(scenes, grid, 0.35, seed=1, device=device)
    k = {"subm3": 3, "subm5": 5}.get(case, 2)
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(4, k, k, k, 3, generator=g, dtype=torch.float64).to(device)
    sparse, dense, kmap = dense_case(case, coords, weight, scenes, grid)
    feat = torch.randn(kmap.num_in, 3, generator=g, dtype=torch.float64).to(device)
    grads = []
    for fn in (sparse, dense):
        f, w = feat.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = fn(f, w)
        (out * torch.arange(out.numel(), device=device).reshape(out.shape).sin()).sum().backward()
        grads.append((out.detach(), f.grad, w.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_scenes_do_not_interact(backend):
    device = backend
    coords = random_coords(1, 6, 0.5, seed=3, device=device)
    both = torch.cat([coords, coords + torch.tensor([1, 0, 0, 0], dtype=torch.int32, device=device)])
    feat = torch.randn(both.shape[0], 4, dtype=torch.float64, device=device)
    w = torch.randn(5, 3, 3, 3, 4, dtype=torch.float64, device=device)
    joint = sparse_conv(feat, w, submanifold_map(both, 3))
    n = coords.shape[0]
    alone = sparse_conv(feat[n:], w, submanifold_map(both[n:], 3))
    torch.testing.assert_close(joint[n:], alone, rtol=0, atol=1e-12)
    oc = downsample_map(both, 2, 2)[0]
    oc1 = downsample_map(both[:n], 2, 2)[0]
    assert torch.equal(oc[: oc1.shape[0]], oc1) and (oc[oc1.shape[0] :, 0] == 1).all()


def _maps(device: str, coords: torch.Tensor) -> list:
    out = []
    for k in (1, 3, 5):
        out.append((submanifold_map(coords, k), submanifold_map_reference(coords, k)))
    for k, s in ((2, 2), (3, 2), (1, 2), (3, 1), ((2, 3, 1), (2, 1, 3))):
        out.append((downsample_map(coords, k, s), downsample_map_reference(coords, k, s)))
    return out


def _same_map(a: KernelMap, b: KernelMap) -> None:
    assert torch.equal(a.in_idx, b.in_idx) and torch.equal(a.out_idx, b.out_idx)
    assert torch.equal(a.offsets, b.offsets) and a.offsets.device.type == "cpu"
    assert (a.num_in, a.num_out, a.kernel_size, a.symmetric) == (b.num_in, b.num_out, b.kernel_size, b.symmetric)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "sorted", "empty", "single"])
def test_ext_maps_equal_reference(device, kind, monkeypatch):
    if not has_kernel("submanifold_map", device):
        pytest.skip(f"the extension has no kernel-map kernels for {device}")
    monkeypatch.setenv("VOLT_OPS", "ext")
    coords = {
        "random": random_coords(3, 12, 0.3, seed=4),
        "sorted": torch.unique(random_coords(2, 12, 0.3, seed=5), dim=0),
        "empty": torch.zeros(0, 4, dtype=torch.int32),
        "single": torch.tensor([[1, 7, 0, 3]], dtype=torch.int32),
    }[kind].to(device)
    for a, b in _maps(device, coords):
        if isinstance(a, tuple):
            assert torch.equal(a[0], b[0])
            a, b = a[1], b[1]
        _same_map(a, b)


def test_submanifold_map_is_symmetric(backend):
    """(i, o) in tap k  <=>  (o, i) in tap K-1-k: the backward relies on it for grad_feat."""
    kmap = submanifold_map(random_coords(2, 8, 0.4, seed=15, device=backend), (3, 5, 1))
    assert kmap.symmetric and not downsample_map(random_coords(1, 4, 0.5, seed=15), 2, 2)[1].symmetric
    kvol, off = kmap.kernel_volume, kmap.offsets.tolist()
    key = lambda a, b: sorted(zip(a.tolist(), b.tolist()))
    for k in range(kvol):
        m = kvol - 1 - k
        ins, outs = kmap.in_idx[off[k] : off[k + 1]], kmap.out_idx[off[k] : off[k + 1]]
        assert key(outs, ins) == key(kmap.in_idx[off[m] : off[m + 1]], kmap.out_idx[off[m] : off[m + 1]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 5, 3), (32, 32, 3), (16, 70, 1), (64, 20, 3), (6, 32, 5)])
def test_ext_conv_matches_reference(device, shape, monkeypatch):
    if not has_kernel("sparse_conv_forward", device):
        pytest.skip(f"the extension has no sparse_conv kernels for {device}")
    c_in, c_out, k = shape
    coords = random_coords(2, 16, 0.2, seed=6, device=device)
    kmap = submanifold_map(coords, k)
    g = torch.Generator().manual_seed(7)
    feat = torch.randn(kmap.num_in, c_in, generator=g).to(device)
    weight = (torch.randn(c_out, k, k, k, c_in, generator=g) / (k**1.5 * c_in) ** 0.5).to(device)
    bias = torch.randn(c_out, generator=g).to(device)
    results = []
    for name in ("torch", "ext"):
        monkeypatch.setenv("VOLT_OPS", name)
        f, w, b = (t.clone().requires_grad_(True) for t in (feat, weight, bias))
        out = sparse_conv(f, w, kmap, b)
        out.backward(torch.ones_like(out))
        results.append((out, f.grad, w.grad, b.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_cpu_ext_independent_of_threads(monkeypatch):
    if not has_kernel("sparse_conv_forward", "cpu"):
        pytest.skip("the extension has no CPU sparse_conv kernels")
    monkeypatch.setenv("VOLT_OPS", "ext")
    coords = random_coords(2, 24, 0.15, seed=8)
    g = torch.Generator().manual_seed(9)
    feat = torch.randn(coords.shape[0], 32, generator=g)
    weights = [torch.randn(48, k, k, k, 32, generator=g) for k in (3, 2)] + [torch.randn(48, 2, 2, 2, 48)]
    saved = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            kmap = submanifold_map(coords, 3)
            oc, down = downsample_map(coords, 2, 2)
            f = feat.clone().requires_grad_(True)
            ws = [w.clone().requires_grad_(True) for w in weights]
            fine = sparse_conv(f, ws[0], kmap)
            back = sparse_conv(sparse_conv(f, ws[1], down), ws[2], inverse_map(down))  # unsorted (table) path
            (fine * fine.detach().cos() + back * back.detach().sin()).sum().backward()
            runs.append((kmap.in_idx, kmap.out_idx, oc, down.in_idx, down.out_idx, fine, back, f.grad))
            runs[-1] += tuple(w.grad for w in ws)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_bit_reproducible(backend):
    """Two identical calls give identical bits (no atomics racing across taps), maps and gradients included."""
    device = backend
    coords = random_coords(2, 16, 0.25, seed=16, device=device)
    g = torch.Generator().manual_seed(17)
    feat = torch.randn(coords.shape[0], 16, generator=g).to(device)
    shapes = [(24, 3, 3, 3, 16), (24, 2, 2, 2, 16), (24, 2, 2, 2, 24)]  # subm, down, inverse
    weights = [torch.randn(*s, generator=g).to(device) for s in shapes]
    runs = []
    for _ in range(2):
        oc, down = downsample_map(coords, 2, 2)
        maps = [submanifold_map(coords, 3), down]
        f = feat.clone().requires_grad_(True)
        ws = [w.clone().requires_grad_(True) for w in weights]
        coarse = sparse_conv(f, ws[1], maps[1])
        out = sparse_conv(f, ws[0], maps[0]) + sparse_conv(coarse, ws[2], inverse_map(maps[1]))
        out.backward(torch.cos(out.detach()))
        runs.append((oc, maps[0].in_idx, maps[1].out_idx, out, f.grad, *(w.grad for w in ws)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_gradcheck_float64(backend):
    device = backend
    coords = random_coords(2, 4, 0.4, seed=10, device=device)
    feat = torch.randn(coords.shape[0], 2, dtype=torch.float64, device=device, requires_grad=True)
    for kmap in (submanifold_map(coords, 3), downsample_map(coords, 2, 2)[1]):
        k = kmap.kernel_size[0]
        weight = torch.randn(3, k, k, k, 2, dtype=torch.float64, device=device, requires_grad=True)
        bias = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)

        def fn(f, w, b, kmap=kmap):
            return sparse_conv(f, w, kmap, b)

        assert torch.autograd.gradcheck(fn, (feat, weight, bias), fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """Schemas, fake (meta) kernels and dispatch of the extension ops (torch.compile readiness)."""
    if not has_kernel("sparse_conv_forward", device):
        pytest.skip(f"the extension has no sparse_conv kernels for {device}")
    coords = random_coords(2, 6, 0.4, seed=14, device=device)
    kmap = submanifold_map(coords, 3)
    feat, grad = torch.randn(kmap.num_in, 4, device=device), torch.randn(kmap.num_out, 5, device=device)
    pairs = (kmap.in_idx, kmap.out_idx, kmap.offsets)
    ops = torch.ops.volt
    torch.library.opcheck(ops.sparse_conv_forward, (feat, torch.randn(27, 4, 5, device=device), *pairs, kmap.num_out))
    torch.library.opcheck(ops.sparse_conv_weight_grad, (feat, grad, *pairs))
    torch.library.opcheck(ops.submanifold_map, (coords, [3, 3, 3]))
    torch.library.opcheck(ops.downsample_map, (coords, [2, 2, 2], [2, 2, 2]))


def test_empty_and_single_voxel(backend):
    device = backend
    w = torch.randn(5, 3, 3, 3, 4, device=device)
    empty = torch.zeros(0, 4, dtype=torch.int32, device=device)
    out = sparse_conv(torch.zeros(0, 4, device=device), w, submanifold_map(empty, 3))
    assert out.shape == (0, 5)
    one = torch.tensor([[0, 2, 3, 4]], dtype=torch.int32, device=device)
    f = torch.randn(1, 4, device=device)
    torch.testing.assert_close(sparse_conv(f, w, submanifold_map(one, 3)), f @ w[:, 1, 1, 1, :].t())
    oc, down = downsample_map(one, 2, 2)
    assert oc.tolist() == [[0, 1, 1, 2]]
    torch.testing.assert_close(sparse_conv(f, w[:, :2, :2, :2], down), f @ w[:, 0, 1, 0, :].t())


def test_reduced_precision(backend):
    device = backend
    coords = random_coords(1, 10, 0.3, seed=11, device=device)
    kmap = submanifold_map(coords, 3)
    feat = torch.randn(kmap.num_in, 16, device=device)
    weight = torch.randn(8, 3, 3, 3, 16, device=device) / 12
    exact = sparse_conv(feat, weight, kmap)
    half = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=half):
        out = sparse_conv(feat, weight, kmap)
    assert out.dtype == half
    torch.testing.assert_close(out.float(), exact, rtol=0.03, atol=0.03)
    mixed = sparse_conv(feat.to(half), weight, kmap)  # no autocast: promoted to float32
    assert mixed.dtype == torch.float32


@pytest.mark.parametrize(
    "coords, match",
    [
        (torch.tensor([[0, -1, 0, 0]]), ">= 0"),
        (torch.tensor([[0, 65536, 0, 0]]), "overflow"),
        (torch.tensor([[32768, 0, 0, 0]]), "overflow"),
        (torch.tensor([[0, 0, 0]]), r"\(N, 4\)"),
        (torch.tensor([[0.0, 1, 2, 3]]), "integer"),
        (torch.tensor([[0, 1, 2, 3], [1, 1, 2, 3], [0, 1, 2, 3]]), "duplicate"),
    ],
)
@pytest.mark.parametrize("name", BACKENDS)
def test_bad_coords(coords, match, name, monkeypatch):
    if name == "ext" and not has_kernel("submanifold_map", "cpu"):
        pytest.skip("the extension has no CPU kernel-map kernels")
    monkeypatch.setenv("VOLT_OPS", name)
    with pytest.raises(ValueError, match=match):
        submanifold_map(coords, 3)
    with pytest.raises(ValueError, match=match):  # duplicates would break one pair per output and tap
        downsample_map(coords, 2, 2)


def test_bad_shapes():
    coords = random_coords(1, 6, 0.5, seed=12)
    kmap = submanifold_map(coords, 3)
    feat = torch.randn(kmap.num_in, 4)
    with pytest.raises(ValueError, match="odd"):
        submanifold_map(coords, 2)
    with pytest.raises(ValueError, match="kernel"):
        sparse_conv(feat, torch.randn(5, 5, 5, 5, 4), kmap)
    with pytest.raises(ValueError, match="C_in"):
        sparse_conv(feat, torch.randn(5, 3, 3, 3, 6), kmap)
    with pytest.raises(ValueError, match="spconv layout"):
        sparse_conv(feat, torch.randn(5, 27, 4), kmap)
    with pytest.raises(ValueError, match="num_in"):
        sparse_conv(feat[:-1], torch.randn(5, 3, 3, 3, 4), kmap)
    with pytest.raises(ValueError, match="bias"):
        sparse_conv(feat, torch.randn(5, 3, 3, 3, 4), kmap, torch.randn(4))


@pytest.mark.skipif(importlib.util.find_spec("spconv") is None, reason="spconv is not installed")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside spconv's dependencies
def test_matches_spconv_single_thread():
    import spconv.pytorch as spconv

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU scatter races with more threads (VOLT_SPEC §5.3)
    try:
        coords = torch.unique(random_coords(2, 10, 0.3, seed=13), dim=0)  # spconv needs contiguous int32
        feat = torch.randn(coords.shape[0], 3)
        x = spconv.SparseConvTensor(feat, coords, [14, 14, 14], 2)
        algo = spconv.ConvAlgo.Native
        sub = spconv.SubMConv3d(3, 4, 3, bias=False, indice_key="s", algo=algo)
        down = spconv.SparseConv3d(3, 4, 2, stride=2, bias=False, indice_key="d", algo=algo)
        inv = spconv.SparseInverseConv3d(4, 5, 2, bias=False, indice_key="d", algo=algo)
        with torch.no_grad():
            torch.testing.assert_close(sub(x).features, sparse_conv(feat, sub.weight, submanifold_map(coords, 3)))
            d = down(x)
            oc, km = downsample_map(coords, 2, 2)
            order = torch.argsort((d.indices.long() * torch.tensor([10**6, 10**4, 100, 1])).sum(1))
            assert torch.equal(d.indices[order], oc)
            torch.testing.assert_close(d.features[order], sparse_conv(feat, down.weight, km))
            torch.testing.assert_close(inv(d).features, sparse_conv(d.features[order], inv.weight, inverse_map(km)))
    finally:
        torch.set_num_threads(saved)
