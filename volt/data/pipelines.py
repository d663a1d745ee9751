"""The named transform chains of spec §1.6: ScanNet / ScanNet200 and nuScenes, for train, val and test.

Train/val builders return a `Compose` that maps a SceneDataset item (dict of numpy arrays + name) to a
collect-ready sample: coord, grid_coord, feat, segment, condition, name (val adds inverse and
origin_segment, so predictions can be scored on every original point). Test builders return a
`TestPipeline` (pre-transform, TTA views, test-mode voxelization into fragments, post-transform);
`test_views(scene, pipeline)` yields every fragment of every view as a sample with coord, grid_coord, feat,
index (rows -> points of the pre-transformed cloud), origin_inverse (original point -> index space; the
identity unless the pre-transform subsamples, as nuScenes' 2.5 cm pre-sampling does), num_points (size of
the index space), view and fragment numbers. Accumulate softmax[index] over fragments and views into a
(num_points, C) buffer, then label original point p with argmax(buffer[origin_inverse[p]]).

Every builder takes plain kwargs: grid_size, the label field (segment20 / segment200 / segment), the
condition name, and for the instance augmentations `exclude_classes` (stuff classes; none by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from volt.data import transforms as T
from volt.data import transforms_instance as I
from volt.data.transforms import Compose, Sample


@dataclass
class TestPipeline:
    """Precise-evaluation chain: pre once, then for every view: view -> voxelize (test mode) -> post per fragment."""

    pre: Compose
    views: list[Compose]
    voxelize: T.GridSample
    post: Compose
    seed: int = 0  # only used when the pre-transform is random (nuScenes pre-sampling picks)


def indoor_fields(label: str, extra: Sequence[str] = ()) -> T.SelectFields:
    """Select coord, color, normal, the label field (renamed to segment) and `extra` fields of an indoor scene."""
    return T.SelectFields(("coord", "color", "normal", label, *extra), rename={label: "segment"})


def instance_augmentations(exclude_classes: Sequence[int] = ()) -> list:
    """The instance augmentations of spec §1.6 ScanNet train (also used by the instance-segmentation chain)."""
    inst = {"exclude_classes": tuple(exclude_classes)}
    return [
        I.InstanceShift(p=0.2, shift_range=(0.1, 0.1, 0.1), **inst),
        I.InstanceRotate(p=0.2, angle=(-0.25, 0.25), axis="z", **inst),
        I.InstanceFlip(p=0.2, flip_prob=0.5, **inst),
        I.InstanceScale(p=0.2, scale=(0.9, 1.1), **inst),
        I.InstanceDropOut(p=0.1, drop_ratio=0.5, **inst),
        I.InstanceColorDropout(p=0.2, drop_value=0, **inst),
        I.SwapInstances(p=0.2, **inst),
    ]


def scannet_train(label: str = "segment20", condition: str = "ScanNet", grid_size: float = 0.02,
                  exclude_classes: Sequence[int] = (), seed: int | None = None) -> Compose:
    """Spec §1.6 ScanNet train, items 1-17, in order."""
    return Compose([
        indoor_fields(label, ("instance",)),
        T.CenterShift(apply_z=True),
        T.RandomDropout(ratio=0.2, application_ratio=0.2),
        T.RandomRotate(angle=(-1, 1), axis="z", center=(0, 0, 0), p=0.5),
        T.RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", p=0.5),
        T.RandomRotate(angle=(-1 / 64, 1 / 64), axis="y", p=0.5),
        T.RandomScale(scale=(0.9, 1.1)),
        T.RandomFlip(p=0.5),
        T.RandomJitter(sigma=0.005, clip=0.02),
        T.ElasticDistortion(params=((0.2, 0.4), (0.8, 1.6)), p=0.95),
        T.ChromaticAutoContrast(p=0.2, blend_factor=None),
        T.ChromaticTranslation(p=0.95, ratio=0.05),
        T.ChromaticJitter(p=0.95, std=0.05),
        *instance_augmentations(exclude_classes),
        T.GridSample(grid_size, mode="train"),
        T.SphereCrop(sample_rate=0.6, mode="random"),
        T.CenterShift(apply_z=False),
        T.NormalizeColor(),
        T.Collect(feat_keys=("color", "normal"), condition=condition),
    ], seed=seed)


def scannet_val(label: str = "segment20", condition: str = "ScanNet", grid_size: float = 0.02,
                seed: int | None = None) -> Compose:
    """CenterShift(z) -> origin_segment -> GridSample train mode with inverse -> CenterShift(xy) -> colour / 255."""
    return Compose([
        indoor_fields(label),
        T.CenterShift(apply_z=True),
        T.Copy("segment", "origin_segment"),
        T.GridSample(grid_size, mode="train", return_inverse=True),
        T.CenterShift(apply_z=False),
        T.NormalizeColor(),
        T.Collect(feat_keys=("color", "normal"), condition=condition),
    ], seed=seed)


def scannet_tta_views() -> list[Compose]:
    """13 views: scales {1, 0.95, 1.05} x z-rotations {0, ½π, π, 3/2π} about the origin, then flip of x and y."""
    views = []
    for scale in (1.0, 0.95, 1.05):
        for angle in (0, 0.5, 1, 1.5):
            steps: list[Any] = [T.RandomRotate(angle=(angle, angle), axis="z", center=(0, 0, 0), p=1)]
            if scale != 1.0:
                steps.append(T.RandomScale(scale=(scale, scale)))
            views.append(Compose(steps))
    views.append(Compose([T.RandomFlip(p=1)]))
    return views


def scannet_test(label: str = "segment20", condition: str = "ScanNet", grid_size: float = 0.02,
                 seed: int = 0) -> TestPipeline:
    """Pre CenterShift(z) + colour / 255; 13 TTA views; test-mode fragments; post CenterShift(xy)."""
    pre = Compose([T.SelectFields(("coord", "color", "normal", label), rename={label: "segment"}, optional=(label,)),
                   T.CenterShift(apply_z=True), T.Copy("segment", "origin_segment"), T.NormalizeColor()])
    post = Compose([T.CenterShift(apply_z=False),
                    T.Collect(feat_keys=("color", "normal"), condition=condition, keys=("coord", "grid_coord"))])
    return TestPipeline(pre, scannet_tta_views(), T.GridSample(grid_size, mode="test"), post, seed)


def nuscenes_train(label: str = "segment", condition: str = "nuScenes", grid_size: float = 0.05,
                   seed: int | None = None) -> Compose:
    """Spec §1.6 nuScenes train, items 1-9 (no dropout, elastic, colour or instance augmentation)."""
    return Compose([
        T.SelectFields(("coord", "strength", label), rename={label: "segment"}),
        T.RandomRotate(angle=(-1, 1), axis="z", center=(0, 0, 0), p=0.5),
        T.RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", p=0.5),
        T.RandomRotate(angle=(-1 / 64, 1 / 64), axis="y", p=0.5),
        T.PointClipDistance(max_dist=70, z_min=-4, z_max=2),
        T.RandomScale(scale=(0.9, 1.1)),
        T.RandomFlip(p=0.5),
        T.RandomJitter(sigma=0.005, clip=0.02),
        T.GridSample(grid_size, mode="train"),
        T.SphereCrop(sample_rate=0.6, mode="random"),
        T.Collect(feat_keys=("coord", "strength"), condition=condition),
    ], seed=seed)


def nuscenes_val(label: str = "segment", condition: str = "nuScenes", grid_size: float = 0.05,
                 seed: int | None = None) -> Compose:
    """origin_segment -> PointClipDistance -> GridSample train mode with inverse."""
    return Compose([
        T.SelectFields(("coord", "strength", label), rename={label: "segment"}),
        T.Copy("segment", "origin_segment"),
        T.PointClipDistance(max_dist=70, z_min=-4, z_max=2),
        T.GridSample(grid_size, mode="train", return_inverse=True),
        T.Collect(feat_keys=("coord", "strength"), condition=condition),
    ], seed=seed)


def nuscenes_test(label: str = "segment", condition: str = "nuScenes", grid_size: float = 0.05,
                  presample: float = 0.025, seed: int = 0) -> TestPipeline:
    """Pre: clip + one random point per `presample` voxel (inverse kept); 10 views = scales {0.9 .. 1.1} x
    {none, flip x and y}; test-mode fragments at grid_size."""
    pre = Compose([
        T.SelectFields(("coord", "strength", label), rename={label: "segment"}, optional=(label,)),
        T.PointClipDistance(max_dist=70, z_min=-4, z_max=2),
        T.Copy("segment", "origin_segment"),
        T.GridSample(presample, mode="train", return_inverse=True),
    ])
    views = [Compose([T.RandomScale(scale=(s, s)), *([T.RandomFlip(p=1)] if flip else [])])
             for flip in (False, True) for s in (1.0, 0.9, 0.95, 1.05, 1.1)]  # untransformed first
    post = Compose([T.Collect(feat_keys=("coord", "strength"), condition=condition, keys=("coord", "grid_coord"))])
    return TestPipeline(pre, views, T.GridSample(grid_size, mode="test"), post, seed)


def test_views(scene: Sample, pipeline: TestPipeline, rng: np.random.Generator | None = None) -> Iterator[Sample]:
    """Every fragment of every TTA view of one scene (see the module docstring for the keys)."""
    rng = np.random.default_rng(pipeline.seed) if rng is None else rng
    base = pipeline.pre(scene, rng)
    num_points = len(base["coord"])
    origin_inverse = np.asarray(base.pop("inverse", np.arange(num_points)), np.int64)
    origin_segment = base.pop("origin_segment", None)
    extras: Sample = {"origin_inverse": origin_inverse, "num_points": num_points}
    if origin_segment is not None:
        extras["origin_segment"] = np.asarray(origin_segment, np.int64)
    base.pop("grid_coord", None)  # the pre-sampling's grid; each view is voxelized afresh
    for v, view in enumerate(pipeline.views):
        for f, frag in enumerate(pipeline.voxelize(view(base, rng), rng)):
            out = pipeline.post(frag, rng)
            out.update(extras, view=v, fragment=f)
            yield out


test_views.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name
TestPipeline.__test__ = False  # type: ignore[attr-defined]


# (dataset, split) -> builder; ScanNet200 = ScanNet with the 200-class labels and its own condition.
PIPELINES: dict[tuple[str, str], Callable[..., Compose | TestPipeline]] = {
    ("scannet", "train"): scannet_train,
    ("scannet", "val"): scannet_val,
    ("scannet", "test"): scannet_test,
    ("scannet200", "train"): partial(scannet_train, label="segment200", condition="ScanNet200"),
    ("scannet200", "val"): partial(scannet_val, label="segment200", condition="ScanNet200"),
    ("scannet200", "test"): partial(scannet_test, label="segment200", condition="ScanNet200"),
    ("nuscenes", "train"): nuscenes_train,
    ("nuscenes", "val"): nuscenes_val,
    ("nuscenes", "test"): nuscenes_test,
}


def build_pipeline(dataset: str, split: str, **kwargs: Any) -> Compose | TestPipeline:
    """The chain for `dataset` ("scannet", "scannet200", "nuscenes") and `split` ("train", "val", "test")."""
    key = (dataset.lower(), split)
    if key not in PIPELINES:
        raise KeyError(f"no pipeline for dataset {dataset!r} split {split!r}; known: {sorted(PIPELINES)}")
    return PIPELINES[key](**kwargs)
