"""Transforms and named pipelines (spec §1.6, §1.7): geometry, colour, instance augmentations, crops, grid
sampling, the ScanNet/nuScenes chains on demo data, test-time views and seeded reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from volt.data import SceneDataset
from volt.data import pipelines as P
from volt.data import transforms as T
from volt.data import transforms_instance as I
from volt.data.loader import worker_seed
from volt.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_root(demo_processed) -> Path:
    return demo_processed


def cloud(n: int = 500, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((n, 3)).astype(np.float32)
    return {"name": "toy", "coord": (rng.random((n, 3)) * [4, 3, 2]).astype(np.float32),
            "color": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True),
            "segment": rng.integers(-1, 5, n).astype(np.int32)}


def pairwise(c: np.ndarray) -> np.ndarray:
    return np.linalg.norm(c[:, None] - c[None], axis=-1)


RIGID = [T.RandomRotate(angle=(-1, 1), axis="z", center=(0, 0, 0), p=1),
         T.RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", p=1),
         T.RandomRotate(angle=(-1, 1), axis="y", center=(1, 2, 3), p=1),
         T.RandomFlip(p=1), T.RandomFlip(p=0.5), T.CenterShift(apply_z=True), T.RandomShift((0.5, 0.5, 0.0))]


@pytest.mark.parametrize("t", RIGID, ids=repr)
def test_rigid_transforms_preserve_distances(t):
    data = cloud(200)
    before = {k: v.copy() for k, v in data.items() if isinstance(v, np.ndarray)}
    out = t(dict(data), np.random.default_rng(1))
    np.testing.assert_allclose(pairwise(out["coord"]), pairwise(data["coord"]), atol=2e-5)
    assert out["coord"].dtype == np.float32
    assert all(np.array_equal(data[k], v) for k, v in before.items())  # inputs are never written


def test_shift_moves_every_point_by_one_bounded_vector():
    data = cloud(100)
    for seed in range(20):
        out = T.RandomShift((0.5, 0.25, 0.0))(dict(data), np.random.default_rng(seed))
        delta = (out["coord"] - data["coord"]).astype(np.float64)
        np.testing.assert_allclose(delta, np.broadcast_to(delta[0], delta.shape), atol=1e-6)  # one vector
        assert abs(delta[0, 0]) <= 0.5 + 1e-6 and abs(delta[0, 1]) <= 0.25 + 1e-6 and delta[0, 2] == 0
    with pytest.raises(DataError, match="toy.*coord"):
        T.RandomShift()({"name": "toy"}, np.random.default_rng(0))


def test_collect_packs_instance_keys_as_int64():
    data = {**cloud(50), "grid_coord": np.zeros((50, 3), np.int64), "instance": np.arange(50, dtype=np.int32),
            "superpoint": np.arange(50, dtype=np.int32) // 5, "origin_instance": np.arange(60, dtype=np.int32)}
    keys = ("coord", "grid_coord", "segment", "instance", "superpoint")
    out = T.Collect(keys=keys)(dict(data), np.random.default_rng(0))
    for k in ("instance", "superpoint", "origin_instance"):
        assert out[k].dtype == np.int64 and np.array_equal(out[k], data[k])
    assert out["grid_coord"].dtype == np.int32 and out["feat"].shape == (50, 6)
    assert "instance" not in T.Collect()(dict(data), np.random.default_rng(0))  # only when asked for
    data.pop("superpoint")
    with pytest.raises(DataError, match="toy.*superpoint"):
        T.Collect(keys=keys)(data, np.random.default_rng(0))


def test_scale_scales_distances():
    data = cloud(100)
    out = T.RandomScale(scale=(1.2, 1.2))(dict(data), np.random.default_rng(0))
    np.testing.assert_allclose(pairwise(out["coord"]), 1.2 * pairwise(data["coord"]), rtol=1e-5, atol=1e-5)


def plane(n: int = 300, seed: int = 0) -> dict:
    """Points on a tilted plane, all with the plane's unit normal."""
    rng = np.random.default_rng(seed)
    e1, e2 = np.array([1.0, 0.2, 0.5]), np.array([-0.3, 1.0, 0.4])
    uv = rng.random((n, 2)) * 2
    coord = (np.array([0.5, 0.4, 1.0]) + uv[:, :1] * e1 + uv[:, 1:] * e2).astype(np.float32)
    nrm = np.cross(e1, e2)
    normal = np.tile(nrm / np.linalg.norm(nrm), (n, 1)).astype(np.float32)
    return {"name": "plane", "coord": coord, "normal": normal, "segment": np.zeros(n, np.int32),
            "instance": np.zeros(n, np.int32)}


@pytest.mark.parametrize("seed", range(4))
def test_normals_follow_the_geometry(seed):
    chain = T.Compose([*RIGID, T.RandomScale(), T.RandomJitter(sigma=0, clip=0),
                       I.InstanceRotate(p=1), I.InstanceFlip(p=1, flip_prob=0.5)], seed=seed)
    out = chain(plane())
    n, c = out["normal"], out["coord"]
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    d = c - c[0]
    cos = np.abs((d * n).sum(1)) / np.maximum(np.linalg.norm(d, axis=1), 1e-9)
    assert cos.max() < 1e-4  # still perpendicular to the plane's in-plane directions


def test_jitter_is_clipped():
    data = cloud(2000)
    out = T.RandomJitter(sigma=0.05, clip=0.02)(dict(data), np.random.default_rng(0))
    d = out["coord"] - data["coord"]
    assert np.abs(d).max() <= 0.02 + 1e-6 and np.abs(d).max() > 0.019


def test_box_blur_and_trilinear_basics():
    a = np.zeros((5, 1, 1, 1), np.float32)
    a[2] = 3
    np.testing.assert_allclose(T.box_blur(a, 0)[:, 0, 0, 0], [0, 1, 1, 1, 0])
    grid = np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1)  # f = 4x + 2y + z on the unit cube
    pts = np.array([[0.5, 0.5, 0.5], [1, 0, 0.25], [2, 0, 0]], np.float32)
    np.testing.assert_allclose(T.trilinear(grid, np.zeros(3), 1.0, pts)[:, 0], [3.5, 4.25, 0])  # 0 outside


@pytest.mark.parametrize("granularity,magnitude", [(0.2, 0.4), (0.8, 1.6)])
def test_elastic_is_bounded_and_smooth(granularity, magnitude):
    rng = np.random.default_rng(3)
    base = (rng.random((3000, 3)) * [3, 2, 1.5]).astype(np.float32)
    near = base + rng.uniform(-1e-3, 1e-3, base.shape).astype(np.float32)  # partners 1 mm away
    data = {"name": "toy", "coord": np.concatenate([base, near])}
    t = T.ElasticDistortion(params=((granularity, magnitude),), p=1)
    out = t(dict(data), np.random.default_rng(7))
    disp = out["coord"] - data["coord"]
    replay = np.random.default_rng(7)
    replay.random()  # the application draw
    grid, origin = T.elastic_noise(data["coord"], granularity, replay)
    np.testing.assert_allclose(disp, T.trilinear(grid, origin, granularity, data["coord"]) * magnitude, atol=1e-6)
    # bounded: trilinear weights are convex, so |displacement| <= magnitude * max|grid|
    assert np.abs(disp).max() <= magnitude * np.abs(grid).max() + 1e-6
    assert np.abs(disp).max() > 0.01 * magnitude  # and it does move points
    # smooth: |d(p) - d(q)| <= magnitude * (max edge difference / cell) * |p - q|_1
    slope = max(np.abs(np.diff(grid, axis=a)).max() for a in range(3)) / granularity
    k = len(base)
    lhs = np.abs(disp[:k] - disp[k:]).max(1)
    rhs = magnitude * slope * np.abs(data["coord"][:k] - data["coord"][k:]).sum(1)
    assert (lhs <= rhs + 1e-5).all()


def test_elastic_grid_covers_the_cloud_at_granularity_spacing():
    coord = np.array([[0, 0, 0], [1.1, 0.5, 0.3]], np.float32)
    grid, origin = T.elastic_noise(coord, 0.2, np.random.default_rng(0))
    assert grid.shape == (8, 5, 4, 3)  # extent // cell + 3 nodes per axis
    np.testing.assert_allclose(origin, [-0.2, -0.2, -0.2])


def test_colours_stay_in_range():
    data = cloud(3000)
    data["color"][:, 2] = 77  # a flat channel must survive auto-contrast
    chain = T.Compose([T.ChromaticAutoContrast(p=1), T.ChromaticTranslation(p=1, ratio=0.5),
                       T.ChromaticJitter(p=1, std=0.5)], seed=0)
    out = chain(data)
    assert out["color"].dtype == np.float32 and out["color"].min() >= 0 and out["color"].max() <= 255
    norm = T.NormalizeColor()(out, None)
    assert norm["color"].min() >= 0 and norm["color"].max() <= 1
    full = T.ChromaticAutoContrast(p=1, blend_factor=1.0)({"color": np.array([[10, 20, 5], [60, 120, 5]], np.uint8)},
                                                          np.random.default_rng(0))
    np.testing.assert_allclose(full["color"], [[0, 0, 5], [255, 255, 5]])


def rooms() -> dict:
    """Three boxes: instance 0 = class 0 (a 'wall'), 1 and 2 = class 3, plus unlabelled points."""
    rng = np.random.default_rng(0)
    parts, inst, seg = [], [], []
    for i, (center, cls) in enumerate([((0, 0, 1), 0), ((2, 1, 0.5), 3), ((4, 3, 0.5), 3)]):
        parts.append(rng.random((100, 3)) * 0.5 + center)
        inst += [i] * 100
        seg += [cls] * 100
    parts.append(rng.random((50, 3)) * 5)
    inst += [-1] * 50
    seg += [-1] * 50
    data = cloud(350)
    data.update(coord=np.concatenate(parts).astype(np.float32), instance=np.array(inst, np.int32),
                segment=np.array(seg, np.int32))
    return data


INSTANCE_AUGS = [I.InstanceShift, I.InstanceRotate, I.InstanceFlip, I.InstanceScale, I.InstanceDropOut,
                 I.InstanceColorDropout]
FIELDS = ("coord", "normal", "color", "segment", "instance")


@pytest.mark.parametrize("aug", INSTANCE_AUGS, ids=lambda a: a.__name__)
def test_instance_augs_touch_only_chosen_instances(aug):
    data = rooms()
    t = aug(p=1, exclude_classes=(0,)) if aug is not I.InstanceFlip else aug(p=1, flip_prob=1, exclude_classes=(0,))
    out = t(dict(data), np.random.default_rng(0))
    untouched = (data["instance"] == 0) | (data["instance"] == -1)
    for k in FIELDS:
        assert np.array_equal(out[k][untouched], data[k][untouched]), k  # bit-identical
    changed = [k for k in FIELDS if not np.array_equal(out[k][~untouched], data[k][~untouched])]
    assert changed
    for i in (1, 2):
        m = data["instance"] == i
        if aug in (I.InstanceRotate, I.InstanceFlip):  # rigid about the centroid
            np.testing.assert_allclose(pairwise(out["coord"][m]), pairwise(data["coord"][m]), atol=1e-5)
        if aug in (I.InstanceRotate, I.InstanceFlip, I.InstanceScale):
            np.testing.assert_allclose(out["coord"][m].mean(0), data["coord"][m].mean(0), atol=1e-5)
        if aug is I.InstanceDropOut:
            assert (out["segment"][m] == -1).sum() == 50 and (out["instance"][m] == -1).sum() == 50
        if aug is I.InstanceColorDropout:
            assert (out["color"][m] == 0).all()


def test_instance_augs_include_stuff_by_default_and_pick_with_p():
    data = rooms()
    moved = I.InstanceShift(p=1)(dict(data), np.random.default_rng(0))
    wall = data["instance"] == 0
    assert not np.array_equal(moved["coord"][wall], data["coord"][wall])  # the wall instance moves too
    counts = np.zeros(3)
    rng = np.random.default_rng(1)
    for _ in range(300):
        out = I.InstanceShift(p=0.2)(dict(data), rng)
        counts += [not np.array_equal(out["coord"][data["instance"] == i], data["coord"][data["instance"] == i])
                   for i in range(3)]
    assert np.all(np.abs(counts / 300 - 0.2) < 0.08)


def test_swap_instances_swaps_centroids():
    data = rooms()
    data["segment"][data["instance"] == 0] = 3  # three eligible instances: one pair swaps, one stays
    out = I.SwapInstances(p=1)(dict(data), np.random.default_rng(0))
    before = np.array([data["coord"][data["instance"] == i].mean(0) for i in range(3)])
    after = np.array([out["coord"][data["instance"] == i].mean(0) for i in range(3)])
    still = [i for i in range(3) if np.allclose(after[i], before[i])]
    assert len(still) == 1
    a, b = [i for i in range(3) if i not in still]
    np.testing.assert_allclose(after[a], before[b], atol=1e-5)
    np.testing.assert_allclose(after[b], before[a], atol=1e-5)
    assert np.array_equal(out["coord"][data["instance"] == -1], data["coord"][data["instance"] == -1])


def test_sphere_crop_keeps_the_nearest_points():
    data = cloud(1000)
    data["segment"] = np.arange(1000, dtype=np.int32)  # tracks the original row
    out = T.SphereCrop(point_max=300, mode="center")(dict(data), np.random.default_rng(0))
    center = (data["coord"].min(0) + data["coord"].max(0)) / 2
    d2 = np.square(data["coord"] - center).sum(1)
    assert np.array_equal(out["segment"], np.sort(np.argsort(d2)[:300]))
    t = T.SphereCrop(sample_rate=0.6, mode="random")
    idx, center = t.crop_indices(data["coord"], np.random.default_rng(5))
    out = t(dict(data), np.random.default_rng(5))
    assert 600 <= len(out["coord"]) <= 1000 and np.array_equal(out["segment"], idx)
    d2 = np.square(data["coord"] - center).sum(1)
    assert np.array_equal(idx, np.sort(np.argsort(d2)[:len(idx)]))
    assert any(np.array_equal(center, c) for c in data["coord"])  # the centre is one of the points


def test_point_clip_distance_projects_and_clamps_without_removing():
    coord = np.array([[100, 0, 0], [0, 0, -10], [30, 40, 1], [60, 80, 30], [1, 2, 1.5]], np.float32)
    out = T.PointClipDistance(max_dist=70, z_min=-4, z_max=2)({"coord": coord}, None)["coord"]
    assert len(out) == 5
    np.testing.assert_allclose(out[0], [70, 0, 0])
    np.testing.assert_allclose(out[1], [0, 0, -4])
    np.testing.assert_allclose(out[2], [30, 40, 1])
    r = 70 / np.linalg.norm(coord[3])
    np.testing.assert_allclose(out[3], [60 * r, 80 * r, 2], rtol=1e-6)  # projected, then z clamped
    np.testing.assert_allclose(out[4], coord[4])


def test_grid_sample_train_is_one_point_per_voxel():
    data = cloud(3000)
    data["segment"] = np.arange(3000, dtype=np.int32)
    g = 0.25
    out = T.GridSample(g, mode="train", return_inverse=True)(dict(data), np.random.default_rng(0))
    cells = np.floor(data["coord"] / np.float32(g)).astype(np.int64)
    rel = cells - cells.min(0)
    assert len(out["coord"]) == len(np.unique(rel, axis=0)) == len(np.unique(out["grid_coord"], axis=0))
    np.testing.assert_array_equal(out["grid_coord"], rel[out["segment"]])  # each row sits in its voxel
    np.testing.assert_array_equal(out["coord"], data["coord"][out["segment"]])
    np.testing.assert_array_equal(out["grid_coord"][out["inverse"]], rel)  # inverse: point -> its voxel's row
    assert out["grid_coord"].dtype == np.int32 and out["grid_coord"].min() == 0
    # chained sampling composes the inverse (nuScenes test pre-sampling, then another grid)
    twice = T.GridSample(2 * g, mode="train", return_inverse=True)(dict(out), np.random.default_rng(1))
    coarse = np.floor(data["coord"] / np.float32(2 * g)).astype(np.int64)
    np.testing.assert_array_equal(twice["grid_coord"][twice["inverse"]], coarse - coarse.min(0))


def test_grid_sample_test_fragments_cover_every_point():
    data = cloud(3000)
    frags = T.GridSample(0.25, mode="test")(dict(data), np.random.default_rng(0))
    cells = np.floor(data["coord"] / np.float32(0.25)).astype(np.int64)
    counts = np.unique(cells, axis=0, return_counts=True)[1]
    assert len(frags) == counts.max()
    seen = np.concatenate([f["index"] for f in frags])
    assert np.array_equal(np.unique(seen), np.arange(3000))
    for f in frags:
        assert len(f["index"]) == len(counts) == len(np.unique(f["grid_coord"], axis=0))
        np.testing.assert_array_equal(f["coord"], data["coord"][f["index"]])
        np.testing.assert_array_equal(f["grid_coord"], cells[f["index"]] - cells.min(0))


def test_scannet_train_chain_on_a_demo_room(demo_root):
    ds = SceneDataset(demo_root / "scannet", "train")
    scene = ds[0]
    out = P.scannet_train(seed=0)(scene)
    assert set(out) == {"coord", "grid_coord", "feat", "segment", "condition", "name"}
    assert out["feat"].shape == (len(out["coord"]), 6) and out["feat"].dtype == np.float32
    assert out["grid_coord"].dtype == np.int32 and out["grid_coord"].min() >= 0
    assert out["segment"].dtype == np.int64 and out["segment"].min() >= -1 and out["segment"].max() < 20
    assert out["condition"] == "ScanNet" and out["name"] == scene["name"]
    assert 0 <= out["feat"][:, :3].min() and out["feat"][:, :3].max() <= 1
    np.testing.assert_allclose(np.linalg.norm(out["feat"][:, 3:], axis=1), 1, atol=1e-4)
    assert len(np.unique(out["grid_coord"], axis=0)) == len(out["grid_coord"])  # one row per voxel
    out200 = P.build_pipeline("scannet200", "train", seed=0)(scene)
    assert out200["condition"] == "ScanNet200" and out200["segment"].max() < 200
    val = P.scannet_val(seed=0)(scene)
    assert len(val["inverse"]) == len(val["origin_segment"]) == len(scene["coord"])
    np.testing.assert_array_equal(val["origin_segment"], scene["segment20"])
    assert (val["segment"][val["inverse"]] == val["origin_segment"]).mean() > 0.9


def test_nuscenes_chains_on_a_demo_sweep(demo_root):
    scene = SceneDataset(demo_root / "nuscenes", "train")[0]
    out = P.nuscenes_train(seed=0)(scene)
    assert out["feat"].shape == (len(out["coord"]), 4) and out["condition"] == "nuScenes"
    np.testing.assert_array_equal(out["feat"][:, :3], out["coord"])  # raw augmented xyz in metres
    views = list(P.test_views(scene, P.nuscenes_test()))
    assert {v["view"] for v in views} == set(range(10))
    first = views[0]
    n = first["num_points"]
    assert len(first["origin_inverse"]) == len(scene["coord"]) and first["origin_inverse"].max() == n - 1
    for v in range(10):
        idx = np.concatenate([f["index"] for f in views if f["view"] == v])
        assert np.array_equal(np.unique(idx), np.arange(n))


def test_scannet_test_views_cover_every_point_in_every_view():
    data = cloud(1500)
    data["segment20"] = data.pop("segment")
    frags = list(P.test_views(data, P.scannet_test(grid_size=0.2)))
    assert {f["view"] for f in frags} == set(range(13))
    for v in range(13):
        mine = [f for f in frags if f["view"] == v]
        assert np.array_equal(np.unique(np.concatenate([f["index"] for f in mine])), np.arange(1500))
        assert all(f["feat"].shape == (len(f["index"]), 6) and f["grid_coord"].min() == 0 for f in mine)
    np.testing.assert_array_equal(frags[0]["origin_inverse"], np.arange(1500))
    # the views themselves: scale-major z-rotations by k·½π, then the flip of x and y
    views, c = P.scannet_tta_views(), data["coord"]
    rng = np.random.default_rng(0)
    for i, (scale, k) in enumerate([(s, k) for s in (1.0, 0.95, 1.05) for k in range(4)]):
        turned = c @ T.rotation_matrix("z", k * np.pi / 2).T * np.float32(scale)
        np.testing.assert_allclose(views[i](data, rng)["coord"], turned, atol=1e-5)
    np.testing.assert_allclose(views[12](data, rng)["coord"], c * [-1, -1, 1])


def sample_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


def test_seeded_pipelines_reproduce_and_workers_differ(demo_root):
    scene = SceneDataset(demo_root / "scannet", "train")[1]
    assert sample_equal(P.scannet_train(seed=3)(scene), P.scannet_train(seed=3)(scene))
    assert not sample_equal(P.scannet_train(seed=3)(scene), P.scannet_train(seed=4)(scene))
    by_worker = []
    for worker in (0, 1, 0):
        pipe = P.scannet_train()
        pipe.reseed(worker_seed(seed=7, rank=0, num_workers=2, worker_id=worker))
        by_worker.append(pipe(scene))
    assert sample_equal(by_worker[0], by_worker[2]) and not sample_equal(by_worker[0], by_worker[1])


def test_bad_input_names_the_scene():
    with pytest.raises(DataError, match="toy.*color"):
        P.scannet_train(seed=0)({"name": "toy", "coord": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError):
        T.GridSample(0.1, mode="fast")
