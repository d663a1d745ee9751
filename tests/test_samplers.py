"""Joint sampling (volt.data.samplers, VOLT_SPEC.md §1.8): ratios, determinism, DDP sharding, grid-aware mixing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from volt.data.collate import collate, mix_offsets
from volt.data.loader import build_loader, set_epoch
from volt.data.samplers import (
    Dispatch,
    JointDataset,
    JointSample,
    RatioBatchSampler,
    RoundRobinBatchSampler,
    joint_counts,
    place_features,
)
from volt.errors import DataError

SAMPLERS = [RatioBatchSampler, RoundRobinBatchSampler]


def dataset_of(index: int, counts: list[int]) -> int:
    return int(np.searchsorted(np.cumsum(counts), index, side="right"))


def epoch(sampler, e: int) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


def test_joint_counts_follow_the_ratios():
    assert joint_counts(100, [1, 1]) == [100, 100]
    assert joint_counts(100, [2, 1, 0.5]) == [100, 50, 25]
    assert joint_counts(10, [3, 1]) == [10, 3]  # round(10/3)
    with pytest.raises(ValueError, match="positive"):
        joint_counts(10, [1, 0])


def test_ratio_sampler_draws_each_dataset_its_share_in_mixed_batches():
    counts = [60, 30, 30]
    sampler = RatioBatchSampler(counts, batch_size=8, seed=3)
    batches = epoch(sampler, 0)
    assert len(batches) == len(sampler) == 120 // 8 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)  # no entry twice; the 120 % 8 = 0 remainder drops nothing
    per_dataset = Counter(dataset_of(i, counts) for i in flat)
    assert per_dataset == {0: 60, 1: 30, 2: 30}
    mixed = sum(len({dataset_of(i, counts) for i in b}) > 1 for b in batches)
    assert mixed > len(batches) // 2  # a global shuffle: most batches hold several datasets


def test_round_robin_batches_hold_one_dataset_and_take_turns():
    counts = [32, 16, 16]  # ratios 2 : 1 : 1, batch 4: 8, 4 and 4 batches
    sampler = RoundRobinBatchSampler(counts, batch_size=4, seed=0)
    batches = epoch(sampler, 0)
    assert len(batches) == len(sampler) == 16
    owners = [{dataset_of(i, counts) for i in b} for b in batches]
    assert all(len(o) == 1 for o in owners)
    order = [o.pop() for o in owners]
    assert Counter(order) == {0: 8, 1: 4, 2: 4}
    assert order[:8] == [0, 1, 2, 0, 0, 1, 2, 0]  # a smooth weighted round robin, not 8 x A then 4 x B ...
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(64))


@pytest.mark.parametrize("cls", SAMPLERS)
def test_order_is_a_function_of_seed_and_epoch(cls):
    counts = [20, 12]
    a, b = cls(counts, 4, seed=7), cls(counts, 4, seed=7)
    assert epoch(a, 2) == epoch(b, 2)
    assert epoch(a, 3) != epoch(a, 2)
    assert epoch(cls(counts, 4, seed=8), 2) != epoch(a, 2)
    assert epoch(a, 2) == epoch(b, 2)  # going back to an epoch gives its order again


@pytest.mark.parametrize("cls", SAMPLERS)
@pytest.mark.parametrize("world", [1, 2, 4])
def test_ddp_shards_cover_each_index_once(cls, world):
    counts = [40, 24]
    global_batches = epoch(cls(counts, 8, seed=1), 5)
    ranks = [epoch(cls(counts, 8, world_size=world, rank=r, seed=1), 5) for r in range(world)]
    assert all(len(r) == len(global_batches) for r in ranks)
    for step, batch in enumerate(global_batches):
        shares = [r[step] for r in ranks]
        assert all(len(s) == 8 // world for s in shares)
        assert sorted(i for s in shares for i in s) == sorted(batch)  # together: the global batch, once
    every = [i for r in ranks for b in r for i in b]
    assert len(every) == len(set(every)) == len(global_batches) * 8


def test_round_robin_ranks_train_the_same_dataset_at_every_step():
    counts = [24, 8]
    ranks = [epoch(RoundRobinBatchSampler(counts, 4, world_size=2, rank=r, seed=0), 1) for r in range(2)]
    for a, b in zip(*ranks):
        assert {dataset_of(i, counts) for i in a + b} == {dataset_of(a[0], counts)}


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match="multiple of world_size"):
        RatioBatchSampler([8], 6, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        RoundRobinBatchSampler([8], 4, world_size=2, rank=2)


def test_joint_dataset_locates_entries_and_cycles_scenes():
    joint = JointDataset([[{"name": f"a{i}"} for i in range(3)], [{"name": f"b{i}"} for i in range(2)]], [4, 1])
    assert [joint.locate(i) for i in (0, 3, 4)] == [(0, 0), (0, 3), (1, 0)]
    assert [joint[i]["name"] for i in range(5)] == ["a0", "a1", "a2", "a0", "b0"]
    joint.epoch = 1
    assert joint[4] == {"name": "b1", "_dataset": 1}
    with pytest.raises(IndexError):
        joint[5]


def test_joint_dataset_locate_skips_zero_count_datasets():
    sizes, counts = [3, 2, 4, 0, 1], [2, 0, 3, 0, 1]
    joint = JointDataset([[{"name": f"{k}{i}"} for i in range(n)] for k, n in enumerate(sizes)], counts)
    owners = [k for k, c in enumerate(counts) for _ in range(c)]  # dataset of each joint index, in order
    located = [joint.locate(i) for i in range(len(joint))]
    assert [k for k, _ in located] == owners == [0, 0, 2, 2, 2, 4]
    assert [j for _, j in located] == [0, 1, 0, 1, 2, 0]
    for bad in (-1, len(joint)):
        with pytest.raises(IndexError):
            joint.locate(bad)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_set_epoch_moves_the_joint_dataset_to_the_next_scenes(num_workers):
    # 4 scenes, 2 entries per epoch: epoch e must read scenes 2e, 2e + 1 (mod 4), also in the worker copies
    scenes = [_toy_item(f"a{i}", 3, 2, i) for i in range(4)]
    joint = JointDataset([scenes], [2])
    loader = build_loader(joint, batch_size=1, shuffle=False, num_workers=num_workers)
    names = []
    for e in range(3):
        set_epoch(loader, e)
        names.append([b["name"][0] for b in loader])
    assert joint.epoch == 2
    assert names == [["a0", "a1"], ["a2", "a3"], ["a0", "a1"]]


def _toy_item(name: str, n: int, channels: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"name": name, "coord": rng.random((n, 3), dtype=np.float32),
            "grid_coord": rng.integers(0, 9, (n, 3)).astype(np.int32), "feat": rng.random((n, channels), np.float32),
            "segment": rng.integers(0, 3, n)}


class Jitter:
    """A toy random pipeline: adds noise from its own generator (reseeded per worker and epoch)."""

    def __init__(self, condition: str):
        self.condition, self.rng = condition, np.random.default_rng(0)

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, item):
        return {**item, "coord": item["coord"] + self.rng.normal(size=(1, 3)).astype(np.float32),
                "condition": self.condition}


def test_loader_with_a_joint_batch_sampler_is_reproducible_and_tags_samples():
    indoor = [_toy_item(f"room{i}", 5 + i, 6, i) for i in range(3)]
    outdoor = [_toy_item(f"sweep{i}", 4 + i, 4, 10 + i) for i in range(4)]
    counts = joint_counts(6, [1, 1])

    def loader(seed):
        joint = JointDataset([indoor, outdoor], counts)
        pipelines = Dispatch([JointSample(Jitter("in"), 0.02, 0, 10), JointSample(Jitter("out"), 0.05, 6, 10)])
        return build_loader(joint, pipelines, batch_sampler=RatioBatchSampler(counts, 4, seed=seed), seed=seed)

    a, b = loader(0), loader(0)
    for e in (0, 1):
        set_epoch(a, e)
        set_epoch(b, e)
        batches_a, batches_b = list(a), list(b)
        assert len(batches_a) == 3
        for x, y in zip(batches_a, batches_b):
            assert x["name"] == y["name"] and torch.equal(x["coord"], y["coord"])
    batch = batches_a[0]
    assert batch["feat"].shape[1] == 10
    for k, (cond, size) in enumerate(zip(batch["condition"], batch["grid_size"])):
        rows = slice(int(batch["offset"][k - 1]) if k else 0, int(batch["offset"][k]))
        assert size == {"in": 0.02, "out": 0.05}[cond]
        zero = slice(6, 10) if cond == "in" else slice(0, 6)  # the other dataset's channels stay empty
        assert not batch["feat"][rows, zero].any() and batch["feat"][rows].any()


def test_features_are_placed_in_their_channels():
    feat = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = place_features(feat, 6, 10)
    assert out.shape == (2, 10) and np.array_equal(out[:, 6:], feat) and not out[:, :6].any()
    assert np.array_equal(place_features(feat, 0, 4), feat)
    with pytest.raises(DataError, match="do not fit"):
        place_features(feat, 8, 10)


def test_mixing_only_overlays_scenes_of_the_same_grid():
    assert mix_offsets(torch.tensor([3, 5, 9, 10])).tolist() == [5, 10]
    assert mix_offsets(torch.tensor([3, 5, 9, 10]), [True, False]).tolist() == [5, 9, 10]
    assert mix_offsets(torch.tensor([3, 5, 9]), [False]).tolist() == [3, 5, 9]
    samples = [{**_toy_item(f"s{i}", 3 + i, 4, i), "condition": c, "grid_size": g}
               for i, (c, g) in enumerate([("A", 0.02), ("A", 0.02), ("A", 0.02), ("B", 0.05)])]
    batch = collate(samples, mix_prob=1.0, rng=np.random.default_rng(0))
    assert batch["unmixed_offset"].tolist() == [3, 7, 12, 18]
    assert batch["offset"].tolist() == [7, 12, 18]  # pair (0, 1) overlaid; the 2 cm / 5 cm pair kept apart


# --- a real 2-process (gloo) joint run ---------------------------------------------------------------------
def _joint_cfg(processed: str, out: str):
    from pathlib import Path

    from volt.config import load_config

    root = Path(__file__).resolve().parents[1]
    return load_config(root / "configs" / "demo_joint.yaml", [
        f"data.datasets.0.root={processed}/scannet", f"data.datasets.1.root={processed}/nuscenes",
        f"train.out_dir={out}", "data.num_workers=0", "train.epochs=2", "train.eval_epochs=2",
        "data.epoch_samples=4", "eval.max_scenes=1"])


def _ddp_joint_worker(rank: int, world: int, port: int, processed: str, out: str) -> None:
    import json
    import os

    from volt.engine.build import build_loaders
    from volt.engine.dist import cleanup, init_distributed
    from volt.engine.trainer import fit

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = _joint_cfg(processed, out)
    train, _ = build_loaders(cfg, init_distributed("cpu"))
    train.set_epoch(1)
    names = [b["name"] for b in train]
    with open(f"{out}_rank{rank}.json", "w") as f:
        json.dump(names, f)
    try:
        fit(cfg)  # ratio batches: a rank often has no sample of one dataset, so its head is unused there
    finally:
        cleanup()  # a live gloo group at interpreter exit can abort the process ("terminate called ...")


def test_ddp_joint_run_shards_the_global_batches(demo_processed, tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    from volt.engine.build import build_loaders
    from volt.engine.checkpoint import load_checkpoint
    from volt.engine.dist import DistInfo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    mp.start_processes(_ddp_joint_worker, args=(2, port, str(demo_processed), out), nprocs=2, start_method="spawn")
    cpu = DistInfo(0, 0, 1, torch.device("cpu"))
    single, _ = build_loaders(_joint_cfg(str(demo_processed), str(tmp_path / "one")), cpu)
    single.set_epoch(1)
    global_names = [b["name"] for b in single]  # 8 samples per epoch, global batch 2: 4 steps
    ranks = [json.loads((tmp_path / f"ddp_rank{r}.json").read_text()) for r in range(2)]
    assert len(global_names) == 4 and all(len(r) == 4 for r in ranks)
    for step, batch in enumerate(global_names):
        assert [ranks[0][step][0], ranks[1][step][0]] == batch  # rank r holds position r of each global batch
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["step"] == 8 and ckpt["meta"]["world_size"] == 2
    val = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()][-1]
    assert val["kind"] == "val" and {"ScanNet/mIoU", "nuScenes/mIoU"} <= set(val)


def test_dispatch_routes_by_tag_and_keeps_it_when_asked():
    chains = [lambda x: {**x, "via": "A"}, lambda x: {**x, "via": "B"}]
    item = {"x": 1, "_dataset": 1}
    assert Dispatch(chains)(item) == {"x": 1, "via": "B"}  # the tag never reaches the pipeline's output
    assert Dispatch(chains, keep_tag=True)(item) == {"x": 1, "via": "B", "_dataset": 1}
    assert item == {"x": 1, "_dataset": 1}  # the input item is left as it was
