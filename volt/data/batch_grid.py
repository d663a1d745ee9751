"""Grid sampling of a whole training batch in one `volt.ops.voxelize` call (VOLT_SPEC.md §5 item 10).

With `data.grid_sampling: batch`, each dataset's train chain is cut at its GridSample:
- the loader workers run the part before it on each scene (`split_at_grid_sample` -> head) and keep the
  scene's dataset tag (`Dispatch(heads, keep_tag=True)`);
- `BatchGridCollate` concatenates the batch's scenes and voxelizes them in ONE call with one grid size per
  scene (a 2 cm room and a 5 cm sweep together), keeps each scene's random point per voxel and its
  `grid_coord` (relative to that scene's own min corner, exactly as a per-scene call gives), runs the
  scene's part after GridSample (SphereCrop, CenterShift, NormalizeColor, Collect, ...) and its joint tags,
  then the usual collate (mixing).
The transforms and their order are the same as in worker mode; only the random draws come from the
collate's generator (reseeded per worker and epoch like every pipeline), so the picks differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from volt.data.collate import Collate
from volt.data.transforms import Compose, GridSample, Sample, take, torch_generator
from volt.errors import DataError
from volt.ops import voxelize


def split_at_grid_sample(pipeline: Compose) -> tuple[Compose, GridSample, Compose]:
    """(transforms before the train-mode GridSample, the GridSample, transforms after it)."""
    where = [i for i, t in enumerate(pipeline.transforms) if isinstance(t, GridSample)]
    if len(where) != 1 or pipeline.transforms[where[0]].mode != "train":
        raise ValueError(f"batched grid sampling needs exactly one train-mode GridSample in the chain, found {len(where)}")
    i = where[0]
    if pipeline.transforms[i].return_inverse:
        raise ValueError("batched grid sampling does not compose `inverse` (validation chains keep worker mode)")
    return Compose(pipeline.transforms[:i]), pipeline.transforms[i], Compose(pipeline.transforms[i + 1:])


class BatchGridCollate(Collate):
    """Collate side: one voxelize call for the batch, then each scene's tail and tags, then `collate`.

    grid_sizes[k], tails[k], tags[k]: dataset k's grid size, transforms after GridSample, and the tagging
    function applied last (e.g. `JointSample.tag`: grid_size + feature placement; identity when None)."""

    def __init__(self, grid_sizes: Sequence[float], tails: Sequence[Compose],
                 tags: Sequence[Callable[[Sample], Sample] | None], mix_prob: float = 0.0,
                 duplicates: str = "keep", seed: int | None = None):
        super().__init__(mix_prob, duplicates, seed)
        if not len(grid_sizes) == len(tails) == len(tags):
            raise ValueError("grid_sizes, tails and tags need one entry per dataset")
        self.grid_sizes, self.tails, self.tags = [float(g) for g in grid_sizes], list(tails), list(tags)

    def grid_sample(self, samples: Sequence[Sample]) -> list[Sample]:
        """The batch's scenes after their own grid sampling (one voxelize call), tails and tags."""
        for s in samples:
            if "_dataset" not in s or "coord" not in s:
                raise DataError(s.get("name"), "batched grid sampling needs 'coord' and the '_dataset' tag "
                                               "(the worker side must be Dispatch(..., keep_tag=True))")
        kinds = [int(s["_dataset"]) for s in samples]
        sizes = np.array([len(s["coord"]) for s in samples], dtype=np.int64)
        ends = np.cumsum(sizes)
        coord = torch.from_numpy(np.concatenate([np.asarray(s["coord"], np.float32) for s in samples]))
        grid = torch.tensor([self.grid_sizes[k] for k in kinds], dtype=torch.float32)
        vox = voxelize(coord, torch.from_numpy(ends), grid, "train", generator=torch_generator(self.rng))
        pick, grid_coord, vends = vox.pick.numpy(), vox.grid_coord.numpy(), vox.voxel_offset.numpy()
        out = []
        for j, (s, k) in enumerate(zip(samples, kinds)):
            v0, p0 = (vends[j - 1], ends[j - 1]) if j else (0, 0)
            data = {key: value for key, value in s.items() if key != "_dataset"}
            data = take(data, pick[v0:vends[j]] - p0)  # the scene's random point of each of its voxels
            data["grid_coord"] = grid_coord[v0:vends[j]]
            data = self.tails[k](data, self.rng)
            out.append(self.tags[k](data) if self.tags[k] is not None else data)
        return out

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return super().__call__(self.grid_sample(samples))

    def __repr__(self) -> str:
        return (f"BatchGridCollate(grid_sizes={self.grid_sizes}, mix_prob={self.mix_prob}, "
                f"duplicates={self.duplicates!r})")
