"""Data chains of the instance task (VOLT_SPEC.md §2 "Training recipe", "Val/test transform"): per-scene
transforms that carry `instance` and `superpoint` through grid sampling, and the batch collation.

- `scannet_instance_train(...)` / `scannet_instance_val(...)` -> Compose mapping a SceneDataset item (coord,
  color, normal, the label field, instance, superpoint) to a sample with coord, grid_coord, feat, segment,
  instance, superpoint (int64, one per voxel: grid sampling keeps the picked point's ids), condition, name;
  val adds inverse (original point -> row), origin_segment and origin_instance (per original point).
- `InstanceCollate(mix_prob, seed=...)`, a `volt.data.collate.Collate`: `volt.data.collate.collate`
  (concatenation, Mix3D pairwise mixing with probability mix_prob per batch; duplicates kept, the Volt
  overlay) plus `instance` / `superpoint` (V,) int64 and `origin_instance`. Ids are made unique across the
  batch, so two mixed scenes never share an instance or superpoint: superpoints become 0..S-1 in row order
  of appearance per sample plus the running count; a row without a superpoint (-1) gets a superpoint of its
  own; instance ids >= 0 are shifted past the previous samples' ids.
- `build_instance_loader(dataset, pipeline, *, mix_prob, **build_loader keywords)`: volt.data.loader.build_loader
  with `InstanceCollate(mix_prob)`.

Train augmentation (spec §2, differing from semseg): RandomDropout 0.2 applied with p 0.5, z rotation p 0.95,
x/y tilt ±π/24, scale 0.8-1.2, flip, jitter, RandomShift ±0.5 m, elastic, colour (translation ratio 0.1),
the instance augmentations (volt.data.transforms_instance, `exclude_classes` removes stuff instances),
GridSample, SphereCrop 60-100 % and a cap of `point_max` voxels. Val: no rotation (the reference's fixed
0.35π val rotation is not reproduced: it only moves the scene).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from volt.data import transforms as T
from volt.data.collate import Collate, collate
from volt.data.loader import build_loader
from volt.data.pipelines import indoor_fields, instance_augmentations
from volt.data.transforms import Compose
from volt.errors import DataError
from volt.ops.superpoint import number_by_first_appearance

INSTANCE_KEYS = ("instance", "superpoint")
# Collect's instance and superpoint are int64 rows; origin_instance (val) passes through as int64 too
COLLECT_KEYS = ("coord", "grid_coord", "segment", *INSTANCE_KEYS)


def scannet_instance_train(label: str = "segment20", condition: str = "ScanNet", grid_size: float = 0.02,
                           exclude_classes: Sequence[int] = (), point_max: int = 102400,
                           seed: int | None = None) -> Compose:
    return Compose([
        indoor_fields(label, INSTANCE_KEYS),
        T.CenterShift(apply_z=True),
        T.RandomDropout(ratio=0.2, application_ratio=0.5),
        T.RandomRotate(angle=(-1, 1), axis="z", center=(0, 0, 0), p=0.95),
        T.RandomRotate(angle=(-1 / 24, 1 / 24), axis="x", p=0.5),
        T.RandomRotate(angle=(-1 / 24, 1 / 24), axis="y", p=0.5),
        T.RandomScale(scale=(0.8, 1.2)),
        T.RandomFlip(p=0.5),
        T.RandomJitter(sigma=0.005, clip=0.02),
        T.RandomShift((0.5, 0.5, 0.0)),
        T.ElasticDistortion(params=((0.2, 0.4), (0.8, 1.6)), p=0.95),
        T.ChromaticAutoContrast(p=0.2, blend_factor=None),
        T.ChromaticTranslation(p=0.95, ratio=0.1),
        T.ChromaticJitter(p=0.95, std=0.05),
        *instance_augmentations(exclude_classes),
        T.GridSample(grid_size, mode="train"),
        T.SphereCrop(sample_rate=0.6, mode="random"),
        T.SphereCrop(point_max=point_max, mode="random"),
        T.CenterShift(apply_z=False),
        T.NormalizeColor(),
        T.Collect(feat_keys=("color", "normal"), condition=condition, keys=COLLECT_KEYS),
    ], seed=seed)


def scannet_instance_val(label: str = "segment20", condition: str = "ScanNet", grid_size: float = 0.02,
                         seed: int | None = 0) -> Compose:
    """CenterShift(z) -> origin_* copies -> GridSample (one point per voxel, inverse kept) -> CenterShift(xy)."""
    return Compose([
        indoor_fields(label, INSTANCE_KEYS),
        T.CenterShift(apply_z=True),
        T.Copy("segment", "origin_segment"),
        T.Copy("instance", "origin_instance"),
        T.GridSample(grid_size, mode="train", return_inverse=True),
        T.CenterShift(apply_z=False),
        T.NormalizeColor(),
        T.Collect(feat_keys=("color", "normal"), condition=condition, keys=COLLECT_KEYS),
    ], seed=seed)


def _unique_ids(values: list[np.ndarray]) -> torch.Tensor:
    """Concatenate per-sample id arrays with ids made unique across samples (see the module docstring)."""
    out, base = [], 0
    for v in values:
        v = np.asarray(v, np.int64)
        ids = np.full(len(v), -1, np.int64)
        has = v >= 0
        if has.any():
            local = number_by_first_appearance(v[has])
            ids[has] = local + base
            base += int(local.max()) + 1
        missing = int((~has).sum())  # rows without a superpoint: one of their own each
        ids[~has] = base + np.arange(missing)
        base += missing
        out.append(ids)
    return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0, dtype=torch.int64)


def _shifted_instances(rows: list[np.ndarray], origin: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """instance (rows) and origin_instance (points; may be empty) with each sample's ids shifted past the
    previous samples' ids."""
    inst, orig, base = [], [], 0
    for r, o in zip(rows, origin):
        r, o = np.asarray(r, np.int64), np.asarray(o, np.int64)
        inst.append(np.where(r >= 0, r + base, -1))
        orig.append(np.where(o >= 0, o + base, -1))
        top = max(int(r.max()) if r.size else -1, int(o.max()) if o.size else -1)
        base += top + 1
    return torch.from_numpy(np.concatenate(inst)), torch.from_numpy(np.concatenate(orig))


def collate_instances(samples: Sequence[dict[str, Any]], mix_prob: float = 0.0,
                      rng: np.random.Generator | None = None) -> dict[str, Any]:
    """`collate` + unique instance/superpoint ids (see the module docstring)."""
    for s in samples:
        missing = [k for k in INSTANCE_KEYS if k not in s]
        if missing:
            raise DataError(s.get("name"), f"instance sample without {missing}")
    with_origin = ["origin_instance" in s for s in samples]
    if any(with_origin) and not all(with_origin):
        raise DataError(None, "some samples have 'origin_instance' and others not")
    rest = [{k: v for k, v in s.items() if k not in (*INSTANCE_KEYS, "origin_instance")} for s in samples]
    batch = collate(rest, mix_prob, rng, duplicates="keep")  # "drop" would desync the id rows
    batch["superpoint"] = _unique_ids([s["superpoint"] for s in samples])
    origin = [s.get("origin_instance", np.zeros(0, np.int64)) for s in samples]
    batch["instance"], orig = _shifted_instances([s["instance"] for s in samples], origin)
    if all(with_origin):
        batch["origin_instance"] = orig
    return batch


class InstanceCollate(Collate):
    """`collate_instances` with its own generator (reseeded per worker by volt.data.loader); duplicates are
    always kept (dropping rows would desync the id rows)."""

    def __init__(self, mix_prob: float = 0.0, duplicates: str = "keep", seed: int | None = None):
        if duplicates != "keep":
            raise ValueError(f"InstanceCollate keeps duplicate voxels, got duplicates={duplicates!r}")
        super().__init__(mix_prob, duplicates, seed)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_instances(samples, self.mix_prob, self.rng)


def build_instance_loader(dataset: Any, pipeline: Any, *, mix_prob: float = 0.0, **kw: Any) -> DataLoader:
    """volt.data.loader.build_loader (same keywords, sharding and seeding) with `InstanceCollate(mix_prob)` as
    its collate."""
    return build_loader(dataset, pipeline, collate=InstanceCollate(mix_prob), **kw)
