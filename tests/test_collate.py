"""Collate (offsets, Mix3D mixing, duplicate voxels) and the reproducible DataLoader (spec §1.5, §1.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from volt.data import SceneDataset
from volt.data import pipelines as P
from volt.data.collate import Collate, collate, drop_duplicate_voxels, mix_offsets
from volt.data.loader import build_loader, set_epoch
from volt.data.pipelines_instance import InstanceCollate, build_instance_loader
from volt.data.transforms import Compose
from volt.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def sample(n: int, label: int, name: str, grid: np.ndarray | None = None) -> dict:
    rng = np.random.default_rng(label)
    return {"coord": rng.random((n, 3)).astype(np.float32),
            "grid_coord": grid if grid is not None else rng.integers(0, 50, (n, 3)).astype(np.int32),
            "feat": rng.random((n, 6)).astype(np.float32), "segment": np.full(n, label, np.int64),
            "condition": "ScanNet" if label % 2 == 0 else "ScanNet200", "name": name}


SIZES = (5, 7, 4, 6, 3)


def batch_of(k: int) -> list[dict]:
    return [sample(n, i, f"s{i}") for i, n in enumerate(SIZES[:k])]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_offsets_and_mixing(k):
    samples = batch_of(k)
    ends = np.cumsum(SIZES[:k])
    plain = collate(samples)
    assert plain["offset"].tolist() == ends.tolist() == plain["unmixed_offset"].tolist()
    assert plain["offset"].dtype == torch.int64 and plain["grid_coord"].dtype == torch.int32
    assert plain["segment"].dtype == torch.int64 and plain["feat"].shape == (ends[-1], 6)
    assert plain["name"] == [f"s{i}" for i in range(k)] and len(plain["condition"]) == k
    mixed = collate(samples, mix_prob=1.0, rng=np.random.default_rng(0))
    merged = [int(ends[i]) for i in range(1, k, 2)] + ([int(ends[-1])] if k % 2 else [])
    assert mixed["offset"].tolist() == merged  # 0+1, 2+3, ... ; an odd last sample stays alone
    assert mixed["unmixed_offset"].tolist() == ends.tolist()
    for key in ("coord", "grid_coord", "feat", "segment"):  # rows untouched: labels stay with their points
        assert torch.equal(mixed[key], plain[key])
    starts = np.concatenate([[0], ends[:-1]])
    for i, (s, e) in enumerate(zip(starts, ends)):
        assert (mixed["segment"][s:e] == i).all()
        assert torch.equal(mixed["coord"][s:e], torch.from_numpy(samples[i]["coord"]))
    never = collate(samples, mix_prob=0.0, rng=np.random.default_rng(0))
    assert never["offset"].tolist() == ends.tolist()


def test_mix_prob_is_per_batch():
    rng = np.random.default_rng(0)
    mixed = sum(len(collate(batch_of(4), 0.5, rng)["offset"]) == 2 for _ in range(400))
    assert 160 < mixed < 240
    assert mix_offsets(torch.tensor([3, 5, 9, 10])).tolist() == [5, 10]
    with pytest.raises(ValueError, match="rng"):
        collate(batch_of(2), mix_prob=0.5)


def test_validation_inverse_is_shifted_to_batch_rows():
    a, b = sample(4, 0, "a"), sample(3, 1, "b")
    a["inverse"], a["origin_segment"] = np.array([0, 0, 1, 2, 3, 3]), np.arange(6)
    b["inverse"], b["origin_segment"] = np.array([2, 1, 0, 0]), np.arange(4)
    out = collate([a, b])
    assert out["inverse"].tolist() == [0, 0, 1, 2, 3, 3, 6, 5, 4, 4]
    assert out["origin_segment"].tolist() == list(range(6)) + list(range(4))
    with pytest.raises(DataError, match="orphan"):
        drop_duplicate_voxels(collate([a, b], mix_prob=1, rng=np.random.default_rng(0)))


def test_duplicate_voxels_after_mixing():
    g0 = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], np.int32)
    g1 = np.array([[1, 0, 0], [5, 5, 5], [0, 0, 0], [7, 7, 7]], np.int32)
    g2 = np.array([[0, 0, 0], [1, 0, 0]], np.int32)
    samples = [sample(3, 0, "a", g0), sample(4, 1, "b", g1), sample(2, 2, "c", g2)]
    kept = collate(samples, mix_prob=1, rng=np.random.default_rng(0))  # default "keep": the reference's overlay
    assert kept["offset"].tolist() == [7, 9] and len(kept["segment"]) == 9
    merged = kept["grid_coord"][:7]
    assert len(torch.unique(merged, dim=0)) == 5  # two voxels are shared by the overlaid clouds
    dropped = collate(samples, mix_prob=1, rng=np.random.default_rng(0), duplicates="drop")
    assert dropped["offset"].tolist() == [5, 7] and dropped["unmixed_offset"].tolist() == [3, 5, 7]
    assert dropped["segment"].tolist() == [0, 0, 0, 1, 1, 2, 2]  # sample 0 wins the shared voxels
    assert dropped["grid_coord"][3:5].tolist() == [[5, 5, 5], [7, 7, 7]]
    assert torch.equal(dropped["coord"][3:5], torch.from_numpy(samples[1]["coord"][[1, 3]]))
    for i in range(2):  # no duplicates left inside any scene
        lo, hi = [0, 5][i], [5, 7][i]
        assert len(torch.unique(dropped["grid_coord"][lo:hi], dim=0)) == hi - lo
    unmixed = collate(samples, duplicates="drop")  # not mixed: each sample's voxels are already unique
    assert len(unmixed["segment"]) == 9
    with pytest.raises(ValueError):
        Collate(duplicates="average")


def test_a_test_fragment_collates_to_a_batch_of_one():
    rng = np.random.default_rng(0)
    scene = {"name": "room", "coord": (rng.random((800, 3)) * 2).astype(np.float32),
             "color": rng.integers(0, 256, (800, 3)).astype(np.uint8),
             "normal": np.tile(np.float32([0, 0, 1]), (800, 1)), "segment20": rng.integers(-1, 20, 800)}
    frag = next(P.test_views(scene, P.scannet_test(grid_size=0.1)))
    b = collate([frag])
    v = len(frag["index"])
    assert b["offset"].tolist() == [v] and b["feat"].shape == (v, 6) and b["grid_coord"].dtype == torch.int32
    assert torch.equal(b["index"], torch.from_numpy(frag["index"])) and b["condition"] == ["ScanNet"]
    assert b["num_points"] == [800] and b["origin_segment"].tolist() == scene["segment20"].tolist()


def test_inconsistent_samples_are_rejected():
    a, b = sample(4, 0, "a"), sample(3, 1, "b")
    b["segment"] = b["segment"][:2]
    with pytest.raises(DataError, match="b"):
        collate([a, b])
    del b["segment"]
    with pytest.raises(DataError, match="keys"):
        collate([a, b])


@pytest.fixture(scope="module")
def demo_rooms(demo_processed):
    return SceneDataset(demo_processed / "scannet", "train")


def batches(loader) -> list[dict]:
    return list(loader)


def same_batches(x: list[dict], y: list[dict]) -> bool:
    if len(x) != len(y):
        return False
    for a, b in zip(x, y):
        if a.keys() != b.keys():
            return False
        for k in a:
            if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k]):
                return False
            if not isinstance(a[k], torch.Tensor) and a[k] != b[k]:
                return False
    return True


def test_loader_with_workers_is_deterministic(demo_rooms):
    kw = {"batch_size": 2, "num_workers": 2, "seed": 11, "mix_prob": 0.5}
    runs = [batches(build_loader(demo_rooms, P.scannet_train(), **kw)) for _ in range(2)]
    assert len(runs[0]) == 4 and same_batches(runs[0], runs[1])
    b = runs[0][0]
    assert b["feat"].shape[1] == 6 and b["unmixed_offset"].numel() == 2 and len(b["name"]) == 2
    assert int(b["unmixed_offset"][-1]) == b["coord"].shape[0] == int(b["offset"][-1])
    loader = build_loader(demo_rooms, P.scannet_train(), **kw)
    set_epoch(loader, 1)
    assert not same_batches(batches(loader), runs[0])  # a new epoch: new order and augmentations
    other = batches(build_loader(demo_rooms, P.scannet_train(), **{**kw, "seed": 12}))
    assert not same_batches(other, runs[0])


def test_loader_in_process_and_sharded(demo_rooms):
    kw = {"batch_size": 2, "num_workers": 0, "seed": 5}
    first = batches(build_loader(demo_rooms, P.scannet_train(), **kw))
    assert same_batches(first, batches(build_loader(demo_rooms, P.scannet_train(), **kw)))
    names = [[n for b in batches(build_loader(demo_rooms, P.scannet_val(), batch_size=1, rank=r, world_size=2,
                                              shuffle=False)) for n in b["name"]] for r in (0, 1)]
    assert set(names[0]).isdisjoint(names[1]) and len(names[0]) + len(names[1]) == len(demo_rooms)
    with pytest.raises(ValueError):
        build_loader(demo_rooms, batch_size=1, rank=2, world_size=2)


class ScenesWithTransform(list):
    """A list dataset that applies a transform itself (like SceneDataset(transform=...))."""

    def __init__(self, items: list, transform: Compose):
        super().__init__(items)
        self.transform = transform


def test_pipeline_transform_and_collate_draw_independent_streams():
    pipe, own = Compose([]), Compose([])
    for workers in (0, 2):  # 0: the main process is worker 0; 2: what each worker's init does
        loader = build_loader(ScenesWithTransform([{"x": 1}], own), pipe, mix_prob=0.5, seed=3,
                              num_workers=workers)
        draws = {}
        for worker in range(max(workers, 1)):
            loader.volt_seeder.seed_worker(loader.dataset, worker)
            streams = {"pipeline": pipe.rng, "transform": own.rng, "collate": loader.collate_fn.rng}
            draws[worker] = {k: g.random(4).tolist() for k, g in streams.items()}
            values = [tuple(v) for v in draws[worker].values()]
            assert len(set(values)) == 3, draws[worker]  # no two streams share their numbers
        loader.volt_seeder.seed_worker(loader.dataset, 0)  # reseeding again repeats the streams
        assert pipe.rng.random(4).tolist() == draws[0]["pipeline"]
        assert loader.collate_fn.rng.random(4).tolist() == draws[0]["collate"]
        if workers:
            assert draws[0] != draws[1]


def instance_sample(n: int, i: int) -> dict:
    out = sample(n, i, f"s{i}")
    out.update(instance=np.arange(n) % 3, superpoint=np.arange(n) // 2)
    return out


def test_instance_loader_collates_with_its_reseeded_instance_collate():
    data = [instance_sample(n, i) for i, n in enumerate(SIZES * 4)]
    kw = {"batch_size": 2, "seed": 4, "mix_prob": 0.5, "epoch": 1}
    loader = build_instance_loader(data, None, **kw)
    assert isinstance(loader.collate_fn, InstanceCollate) and isinstance(loader.collate_fn, Collate)
    assert loader.volt_seeder.collate is loader.collate_fn and loader.collate_fn.mix_prob == 0.5
    runs = [batches(loader), batches(build_instance_loader(data, None, **kw))]
    assert len(runs[0]) == 10 and same_batches(runs[0], runs[1])
    mixed = [len(b["offset"]) < len(b["unmixed_offset"]) for b in runs[0]]
    assert any(mixed) and not all(mixed)  # mix_prob reaches the collate
    for b in runs[0]:  # ids unique across the two samples of a batch
        first, second = np.split(b["superpoint"].numpy(), [int(b["unmixed_offset"][0])])
        assert set(first).isdisjoint(second) and b["instance"].dtype == torch.int64
    with pytest.raises(ValueError, match="duplicate"):
        InstanceCollate(duplicates="drop")  # refused when built, not at the first batch
