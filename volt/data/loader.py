"""Build a reproducible torch DataLoader: dataset -> pipeline -> collate (with mixing), sharded per rank.

`build_loader(dataset, pipeline, batch_size=..., num_workers=..., seed=..., rank=..., world_size=...)` wraps
the dataset so that item i is `pipeline(dataset[i])`, shards and shuffles it with a DistributedSampler
(also for one process: same code path, shuffle order = f(seed, epoch)), and collates with `Collate`.
Joint training passes a `batch_sampler` instead (volt.data.samplers: it shards by itself, so batch_size,
shuffle and drop_last are then unused); `set_epoch` reaches it and the wrapped dataset (a JointDataset's
scenes per epoch) too. `collate` replaces the default `Collate(mix_prob, duplicates)` (batched grid sampling
passes a `volt.data.batch_grid.BatchGridCollate`, the instance task an `InstanceCollate`).

Seeding (spec §1.3: per-worker seed = seed + rank·num_workers + worker_id): every worker reseeds its copy
of the pipeline and of the collate function from two independent children of SeedSequence(seed +
rank·num_workers + worker_id, spawn_key=(epoch,)) (the pipeline and a transform the dataset applies itself
split the first child again), and seeds torch from that sequence. Batch i always goes to worker i % num_workers,
so two runs with the same seed, world size and num_workers produce identical batches; call
`set_epoch(loader, epoch)` before each epoch so every epoch draws fresh augmentations (and a new shuffle).
With num_workers = 0 the main process plays worker 0. Nothing touches the global numpy/torch RNG of the
main process (the loader has its own torch.Generator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from volt.data.collate import Collate


class PipelineDataset(Dataset):
    """Item i = pipeline(dataset[i]); `pipeline` None passes items through."""

    def __init__(self, dataset: Any, pipeline: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        self.dataset, self.pipeline = dataset, pipeline

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        return self.pipeline(item) if self.pipeline is not None else item

    def reseed(self, seed: np.random.SeedSequence) -> None:
        # the pipeline, and a transform the dataset applies itself (SceneDataset(transform=Compose(...))):
        # one child stream each, so the two never draw the same numbers
        targets = (self.pipeline, getattr(self.dataset, "transform", None))
        for target, child in zip(targets, seed.spawn(len(targets))):
            if hasattr(target, "reseed"):
                target.reseed(child)


def worker_seed(seed: int, rank: int, num_workers: int, worker_id: int, epoch: int = 0) -> np.random.SeedSequence:
    """The seed stream of one worker: entropy seed + rank·num_workers + worker_id, one child per epoch."""
    return np.random.SeedSequence(seed + rank * max(num_workers, 1) + worker_id, spawn_key=(epoch,))


class WorkerSeeder:
    """worker_init_fn: reseed this worker's pipeline and collate; `epoch` is set by `set_epoch`."""

    def __init__(self, seed: int, rank: int, num_workers: int, collate: Collate, epoch: int = 0):
        self.seed, self.rank, self.num_workers, self.collate, self.epoch = seed, rank, num_workers, collate, epoch

    def seed_worker(self, dataset: PipelineDataset, worker_id: int) -> None:
        seq = worker_seed(self.seed, self.rank, self.num_workers, worker_id, self.epoch)
        # independent children: one shared sequence would give the pipeline and the collate equal draws
        pipe_seq, collate_seq = seq.spawn(2)
        dataset.reseed(pipe_seq)
        self.collate.reseed(collate_seq)

    def __call__(self, worker_id: int) -> None:
        self.seed_worker(get_worker_info().dataset, worker_id)  # the worker's own copy of the dataset
        seq = worker_seed(self.seed, self.rank, self.num_workers, worker_id, self.epoch)
        torch.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))  # the worker process only


def build_loader(dataset: Any, pipeline: Callable[[dict[str, Any]], dict[str, Any]] | None = None, *,
                 batch_size: int = 1, num_workers: int = 0, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, mix_prob: float = 0.0, duplicates: str = "keep", rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False, epoch: int = 0,
                 batch_sampler: Any = None, collate: Collate | None = None) -> DataLoader:
    """A DataLoader over `pipeline(dataset[i])` batches; see the module docstring for seeding."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
    data = PipelineDataset(dataset, pipeline)
    if collate is None:  # a given collate (e.g. volt.data.batch_grid) brings its own mixing settings
        collate = Collate(mix_prob=mix_prob, duplicates=duplicates)
    seeder = WorkerSeeder(seed, rank, num_workers, collate, epoch)
    common = {"num_workers": num_workers, "collate_fn": collate, "pin_memory": pin_memory,
              "worker_init_fn": seeder if num_workers > 0 else None,
              "generator": torch.Generator().manual_seed(seed), "persistent_workers": False}
    if batch_sampler is not None:
        loader = DataLoader(data, batch_sampler=batch_sampler, **common)
    else:
        sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
        loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)
    loader.volt_seeder = seeder  # what set_epoch needs, whichever sampler the loader has
    set_epoch(loader, epoch)
    return loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select the shuffle order, the scenes (a JointDataset) and the augmentation streams of `epoch` (call
    before iterating)."""
    # the wrapped dataset is pickled to the workers at iter(), so setting it here reaches them too
    for target in (loader.sampler, loader.batch_sampler, getattr(loader.dataset, "dataset", None)):
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
    seeder = loader.volt_seeder
    seeder.epoch = epoch  # picked up when the workers start for this epoch
    if loader.num_workers == 0:  # the main process is worker 0
        seeder.seed_worker(loader.dataset, 0)
