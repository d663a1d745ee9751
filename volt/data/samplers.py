"""Joint (multi-dataset) sampling, VOLT_SPEC.md §1.8: one index space over several datasets, the two batch orders.

- `JointDataset(datasets, counts)`: the training entries of one epoch; `counts[k]` entries belong to dataset k
  (ids starts[k] .. starts[k] + counts[k]), entry j of dataset k in epoch e is its scene
  (j + e·counts[k]) mod len(dataset k), so a dataset used below its size still visits every scene.
- `JointSample(pipeline, grid_size, feat_start, channels)`: one dataset's pipeline, then the sample's grid size
  (key "grid_size": collate never overlays scenes of different grids) and its features placed in channels
  [feat_start, feat_start + C) of a `channels`-wide input (zeros elsewhere), so indoor (colour + normal) and
  outdoor (xyz + strength) scenes can share one backbone. `Dispatch` routes a joint entry to its dataset's.
- `joint_counts(main, ratios)`: entries per dataset per epoch, round(main · r_k / r_0).
- `RatioBatchSampler(counts, batch_size, ...)`: every entry of the epoch, globally shuffled, so batches mix
  datasets (the reference's RatioShuffleSampler, indoor joint configs).
- `RoundRobinBatchSampler(counts, batch_size, ...)`: every batch from one dataset; each dataset's entries are
  shuffled and cut into batches, and the datasets take turns in proportion to their batch counts (a smooth
  weighted round robin: ratios 2:1:1 give A B C A A B C A ...), the reference's MultiDatasetDataloader.
Both are batch samplers over global batches of `batch_size` (all ranks together); a remainder smaller than a
global batch is dropped (per dataset in round robin). Rank r of w takes positions r, r + w, ... of every global
batch (stride sharding, as the reference), so the ranks together cover each global batch exactly once and, in
round robin, train the same dataset at every step. The order is a function of (seed, epoch): call
`set_epoch(epoch)` before each epoch (on the samplers and the JointDataset: volt.data.loader.set_epoch does both).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from volt.errors import DataError


class JointDataset:
    """Training entries of one epoch over several datasets, tagged with their dataset for `Dispatch`."""

    def __init__(self, datasets: Sequence[Any], counts: Sequence[int]):
        if len(datasets) != len(counts):
            raise ValueError(f"{len(datasets)} datasets but {len(counts)} counts")
        empty = [k for k, d in enumerate(datasets) if len(d) == 0 and counts[k] > 0]
        if empty:
            raise DataError(None, f"joint dataset(s) {empty} have no scenes but are asked for samples")
        self.datasets, self.counts = list(datasets), [int(c) for c in counts]
        self.starts = [sum(self.counts[:k]) for k in range(len(self.counts))]
        self.epoch = 0

    def __len__(self) -> int:
        return sum(self.counts)

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset k, entry j within dataset k) of a joint index."""
        if not 0 <= index < len(self):
            raise IndexError(f"joint index {index} out of range [0, {len(self)})")
        # the last dataset starting at or before index; a zero-count dataset shares its start with the next
        # one, so the last of equal starts is the one that holds entries
        k = bisect_right(self.starts, index) - 1
        return k, index - self.starts[k]

    def set_epoch(self, epoch: int) -> None:
        """Select the scenes of `epoch` (volt.data.loader.set_epoch calls it; the workers get the dataset's
        copy at iter())."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, j = self.locate(index)
        item = self.datasets[k][(j + self.epoch * self.counts[k]) % len(self.datasets[k])]
        return {**item, "_dataset": k}


class JointSample:
    """A dataset's pipeline followed by the joint-training tags (see the module docstring)."""

    def __init__(self, pipeline: Callable[[dict[str, Any]], dict[str, Any]], grid_size: float,
                 feat_start: int = 0, channels: int | None = None):
        self.pipeline, self.grid_size, self.feat_start, self.channels = pipeline, float(grid_size), feat_start, channels

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return self.tag(self.pipeline(item))

    def tag(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Add "grid_size" and place "feat" (also used on precise-test fragments)."""
        sample = dict(sample)
        sample["grid_size"] = self.grid_size
        sample["feat"] = place_features(sample["feat"], self.feat_start, self.channels, sample.get("name"))
        return sample

    def reseed(self, seed: np.random.SeedSequence) -> None:
        if hasattr(self.pipeline, "reseed"):
            self.pipeline.reseed(seed)


def place_features(feat: np.ndarray, start: int, channels: int | None, name: Any = None) -> np.ndarray:
    """(N, C) features -> (N, channels) with the C columns at [start, start + C), zeros elsewhere."""
    feat = np.asarray(feat, np.float32)
    c = feat.shape[1]
    if channels is None or (start == 0 and c == channels):
        return feat
    if start + c > channels:
        raise DataError(name, f"{c} feature channels from channel {start} do not fit the model's {channels} "
                              "input channels (data.datasets.*.feat_start, model.in_channels)")
    out = np.zeros((feat.shape[0], channels), np.float32)
    out[:, start:start + c] = feat
    return out


class Dispatch:
    """Pipeline of a joint item = its dataset's pipeline; `reseed` gives each pipeline its own child stream.
    The `_dataset` tag is removed before the pipeline runs; `keep_tag` puts it back on the output (batched
    grid sampling needs it in the collate)."""

    def __init__(self, pipelines: Sequence[Callable[[dict[str, Any]], dict[str, Any]]], keep_tag: bool = False):
        self.pipelines, self.keep_tag = list(pipelines), keep_tag

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        item = dict(item)
        k = item.pop("_dataset")
        out = self.pipelines[k](item)
        return {**out, "_dataset": k} if self.keep_tag else out

    def reseed(self, seed: np.random.SeedSequence) -> None:
        for pipeline, child in zip(self.pipelines, seed.spawn(len(self.pipelines))):
            if hasattr(pipeline, "reseed"):
                pipeline.reseed(child)


def joint_counts(main: int, ratios: Sequence[float]) -> list[int]:
    """Entries per dataset and epoch: `main` for the first, round(main · r_k / r_0) for the others."""
    if not ratios or any(not r > 0 for r in ratios):
        raise ValueError(f"ratios must be positive, got {list(ratios)}")
    return [int(main)] + [round(main * r / ratios[0]) for r in ratios[1:]]


class _ShardedBatches:
    """Global batches of joint indices (made by `global_batches`), this rank's stride share of each."""

    def __init__(self, counts: Sequence[int], batch_size: int, *, world_size: int = 1, rank: int = 0,
                 seed: int = 0, epoch: int = 0):
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch size {batch_size} must be a positive multiple of world_size "
                             f"{world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
        self.counts = [int(c) for c in counts]
        self.starts = np.cumsum([0, *self.counts[:-1]]).tolist()
        self.batch_size, self.world_size, self.rank, self.seed, self.epoch = batch_size, world_size, rank, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))

    def global_batches(self) -> list[np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank::self.world_size].tolist()


class RatioBatchSampler(_ShardedBatches):
    """All entries of the epoch in one global shuffle: batches mix datasets (see the module docstring)."""

    def __len__(self) -> int:
        return sum(self.counts) // self.batch_size

    def global_batches(self) -> list[np.ndarray]:
        order = self.rng().permutation(sum(self.counts))
        return list(order[:len(self) * self.batch_size].reshape(-1, self.batch_size))


class RoundRobinBatchSampler(_ShardedBatches):
    """Single-dataset batches, datasets taking turns by their batch counts (see the module docstring)."""

    def batches_per_dataset(self) -> list[int]:
        return [c // self.batch_size for c in self.counts]

    def __len__(self) -> int:
        return sum(self.batches_per_dataset())

    def global_batches(self) -> list[np.ndarray]:
        rng = self.rng()
        batches, keys = [], []
        for k, (start, count, n) in enumerate(zip(self.starts, self.counts, self.batches_per_dataset())):
            ids = start + rng.permutation(count)[:n * self.batch_size]
            batches += list(ids.reshape(n, self.batch_size))
            # batch i of dataset k sits at (i + 0.5) / n of the epoch; ties go to the earlier dataset
            keys += [((i + 0.5) / n, k) for i in range(n)]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return [batches[i] for i in order]
