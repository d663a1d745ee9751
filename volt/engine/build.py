"""Objects of a training run from a `Config`: the segmentor (with its frozen teacher) and the data loaders.

- `build_backbone(model_cfg, num_classes=0)`: VolumeTransformer from a preset, or SparseUNet (features when
  num_classes is 0, class logits otherwise).
- `build_teacher(cfg)`: the frozen distillation teacher (VOLT_SPEC.md §1.2): its architecture comes from
  `distill.config` (a YAML config) or else from the config stored in the checkpoint (or else the SpUNet
  defaults with the student's input channels); its output layout from the checkpoint's keys — a final conv
  with class logits (single-dataset teacher, e.g. a converted reference checkpoint) or feature backbone +
  `seg_heads.<condition>` (a joint teacher: one SpUNet, one head per dataset); the weights load strictly.
  `distill.checkpoints` ({condition: checkpoint}) gives per-dataset teachers instead (`TeacherSet`).
- `build_segmentor(cfg, device)`: Segmentor with one head per dataset condition, the configured losses and
  the teacher; on `device`. `build_test_segmentor(cfg, ckpt, device, use_ema=True, source=None)`: the same
  without a teacher (or, for `task: instance`, the InstanceSegmentor), a checkpoint's (EMA) weights loaded
  strictly, in eval mode -> (model, "ema" | "model").
- `pick_dataset(datasets, which)`: a configured dataset by condition or index; `class_names(ds)` from the
  processed data's meta.json, `known_class_names(pipeline, num_classes)` from the benchmark's tables,
  `dataset_class_names(ds)` the first of those two, else class_<i>.
- `build_loaders(cfg, info)`: (train loader, validation loader(s)) of this rank (volt.data.loader + pipelines).
  One trainer epoch repeats the data epochs // eval_epochs times (the reference's `loop`). Every dataset has
  its own pipeline, grid size, label field and head (`JointSample`); dataset k contributes
  round(main · ratio_k / ratio_0) samples per epoch with main = (data.epoch_samples or len(first)) · loop,
  in the order of `data.sampling` (volt.data.samplers: ratio = mixed batches, round_robin = single-dataset
  batches). The global batch is split evenly over the ranks. Validation: one dataset -> one loader (as
  before); several -> a dict {condition: loader} over `eval.datasets` (default all with a val split).
- `test_views_for(ds, model_cfg, views)`: (the precise-test fragments of a dataset, features placed as in
  training; the number of TTA views they use).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from volt.config import Config, DatasetCfg, DistillCfg, ModelCfg, config_from_dict, load_config
from volt.data.batch_grid import BatchGridCollate, split_at_grid_sample
from volt.data.dataset import SceneDataset
from volt.data.loader import build_loader
from volt.data.loader import set_epoch as set_loader_epoch
from volt.data.pipelines import build_pipeline, test_views
from volt.data.samplers import (
    Dispatch,
    JointDataset,
    JointSample,
    RatioBatchSampler,
    RoundRobinBatchSampler,
    joint_counts,
)
from volt.engine.checkpoint import load_checkpoint, load_state_strict, load_teacher
from volt.errors import DataError
from volt.models import ConditionHeads, Criteria, FrozenTeacher, Segmentor, SparseUNet, build_volt


def conditions(cfg: Config) -> dict[str, int]:
    """{condition name: class count} of the configured datasets, in order."""
    return {d.condition: d.num_classes for d in cfg.data.datasets}


def build_backbone(m: ModelCfg, num_classes: int = 0) -> nn.Module:
    if m.backbone == "volt":
        if num_classes:
            raise ValueError("the Volt backbone emits features; its classes come from the segmentor's heads")
        kwargs: dict[str, Any] = {"qk_norm": m.volt.qk_norm, "attn_backend": m.volt.attn_backend}
        if m.volt.drop_path is not None:
            kwargs["drop_path"] = m.volt.drop_path
        return build_volt(m.volt.preset, in_channels=m.in_channels, **kwargs)
    if m.backbone == "spunet":
        s = m.spunet
        return SparseUNet(m.in_channels, num_classes, s.base_channels, s.channels, s.layers, backend=s.backend)
    raise ValueError(f"unknown backbone {m.backbone!r}; choose volt or spunet")


def _teacher_config(cfg: Config, stored: dict, source: str | os.PathLike) -> ModelCfg:
    """The teacher's architecture; `source` (its checkpoint) names the file in errors."""
    d = cfg.distill
    if d.config:
        return load_config(d.config).model
    if stored:
        try:
            return config_from_dict(stored, source).model
        except DataError as exc:
            raise DataError(source, f"the stored config is not a volt config ({exc.problem}); "
                                    "pass the teacher's config YAML as distill.config") from exc
    # A converted reference teacher without a config: the reference SpUNet-v1m1 architecture.
    return ModelCfg(backbone="spunet", in_channels=cfg.model.in_channels)


def _head_classes(state: dict[str, torch.Tensor], prefix: str) -> dict[str, int]:
    return {k[len(prefix):].split(".")[0]: int(v.shape[0])
            for k, v in state.items() if k.startswith(prefix) and k.endswith(".weight")}


def _load_teacher(cfg: Config, path: str, student: dict[str, int]) -> FrozenTeacher:
    """One frozen teacher from `path` covering the `student` conditions ({condition: classes}, checked)."""
    ckpt = load_checkpoint(path)  # read once: the config, the head layout and the weights all come from it
    model_cfg = _teacher_config(cfg, ckpt.get("config") or {}, path)
    state = ckpt["model"]
    if "backbone.final.weight" in state:  # single-dataset teacher: the backbone's last conv gives the classes
        classes = int(state["backbone.final.weight"].shape[0])
        wrong = {c: n for c, n in student.items() if n != classes}
        if wrong:
            raise DataError(path, f"the teacher predicts {classes} classes but the student's conditions have {wrong}")
        return load_teacher(ckpt, build_backbone(model_cfg, classes), source=path)
    heads = _head_classes(state, "seg_heads.")
    if not heads:
        raise DataError(path, "the teacher checkpoint has neither 'backbone.final.*' nor 'seg_heads.*' keys")
    backbone = build_backbone(model_cfg, 0)
    missing = {c: n for c, n in student.items() if heads.get(c) != n}
    if missing:
        raise DataError(path, f"the teacher's heads {heads} do not cover the student's conditions {missing} "
                              "(same name and class count needed)")
    return load_teacher(ckpt, backbone, ConditionHeads(backbone.out_channels, heads), source=path)


class TeacherBatch(NamedTuple):
    """What `TeacherSet.run` keeps: the batch, for the per-condition teacher runs."""

    grid_coord: torch.Tensor
    feat: torch.Tensor
    offset: torch.Tensor


class TeacherSet(FrozenTeacher):
    """Per-dataset teachers behind the FrozenTeacher interface the Segmentor uses.

    Condition c's pseudo-labels come from teacher c, run (lazily, in `pseudo_labels`) on the scenes of the
    batch that hold c's voxels — whole mixed scenes, as the reference's teacher sees the mixed batch — so a
    round-robin batch runs one teacher and no voxel is ever labelled by another dataset's teacher.
    """

    def __init__(self, teachers: dict[str, FrozenTeacher], classes: dict[str, int]):
        # No FrozenTeacher.__init__: there is no single model; freeze/_apply/to go through `modules()`.
        self.teachers, self.classes = dict(teachers), dict(classes)
        self.model = nn.ModuleList([t.model for t in self.teachers.values()])  # for `device`
        self.condition_heads = None
        self.freeze()

    @property
    def is_joint(self) -> bool:
        return True  # the Segmentor then checks class counts through num_classes(condition)

    def modules(self) -> list[nn.Module]:
        return [m for t in self.teachers.values() for m in t.modules()]

    def num_classes(self, condition: str) -> int | None:
        return self.classes[condition]

    def run(self, grid_coord: torch.Tensor, feat: torch.Tensor, offset: torch.Tensor) -> TeacherBatch:
        self.freeze()
        return TeacherBatch(grid_coord, feat, offset)

    def pseudo_labels(self, output: TeacherBatch, condition: str, index: torch.Tensor | None = None) -> torch.Tensor:
        if condition not in self.teachers:
            raise KeyError(f"no teacher for condition {condition!r}; teachers: {list(self.teachers)}")
        grid_coord, feat, offset = output
        teacher = self.teachers[condition]
        if index is None:
            return teacher.pseudo_labels(teacher.run(grid_coord, feat, offset), condition)
        counts = torch.diff(offset, prepend=offset.new_zeros(1))
        scene = torch.repeat_interleave(torch.arange(counts.numel(), device=offset.device), counts)  # (V,)
        chosen = torch.zeros(counts.numel(), dtype=torch.bool, device=offset.device)
        chosen[scene[index]] = True
        rows = chosen[scene]  # (V,) voxels of the scenes that hold this condition's voxels
        position = torch.cumsum(rows.long(), 0) - 1  # voxel -> row of the sub-batch
        out = teacher.run(grid_coord[rows], feat[rows], torch.cumsum(counts[chosen], 0))
        return teacher.pseudo_labels(out, condition, position[index])


def build_teacher(cfg: Config) -> FrozenTeacher | None:
    """The frozen teacher(s) of `cfg.distill`, on the CPU (the segmentor moves them with itself); None if unset."""
    student = conditions(cfg)
    if cfg.distill.checkpoints:
        # _load_teacher checked that teacher c predicts the student's class count of condition c
        return TeacherSet({c: _load_teacher(cfg, cfg.distill.checkpoints[c], {c: n}) for c, n in student.items()},
                          student)
    if not cfg.distill.checkpoint:
        return None
    return _load_teacher(cfg, cfg.distill.checkpoint, student)


def build_segmentor(cfg: Config, device: torch.device | str = "cpu") -> Segmentor:
    m = cfg.model
    criteria = Criteria(m.losses, label_smoothing=m.label_smoothing, ignore_index=-1)
    model = Segmentor(build_backbone(m), conditions(cfg), criteria=criteria, teacher=build_teacher(cfg),
                      distill_weight=cfg.distill.weight)
    return model.to(device)


def build_test_segmentor(cfg: Config, ckpt: Mapping[str, Any], device: torch.device | str = "cpu",
                         use_ema: bool = True, source: str | os.PathLike | None = None) -> tuple[nn.Module, str]:
    """(segmentor of `cfg` in eval mode on `device`, "ema" or "model"): no teacher, the checkpoint's EMA weights
    when present and `use_ema`, else its raw weights, loaded strictly; a distilled checkpoint's distill heads
    are dropped (never used at inference). `cfg.task == "instance"` gives the InstanceSegmentor (every weight,
    the backbone included, from the checkpoint). `source` names the checkpoint in errors."""
    weights = "ema" if use_ema and "ema" in ckpt else "model"
    if cfg.task == "instance":
        from volt.engine.instance_train import build_instance_segmentor  # instance_train imports this module

        model = build_instance_segmentor(cfg, load_init=False)  # no init checkpoint: the weights come next
        load_state_strict(model, ckpt[weights], source=source)
        return model.to(device).eval(), weights
    model = build_segmentor(dataclasses.replace(cfg, distill=DistillCfg()), device)
    load_state_strict(model, ckpt[weights], ignore_unexpected=("distill_heads.",), source=source)
    return model.eval(), weights


def pick_dataset(datasets: Sequence[DatasetCfg], which: str | int, source: str | os.PathLike | None = None
                 ) -> DatasetCfg:
    """The configured dataset (a joint run has several) named by its condition or its index."""
    by_name = {d.condition: d for d in datasets}
    if isinstance(which, str) and which in by_name:
        return by_name[which]
    if str(which).isdigit() and int(which) < len(datasets):
        return datasets[int(which)]
    raise DataError(source, f"dataset {which!r} is neither an index below {len(datasets)} nor one of {list(by_name)}")


def known_class_names(pipeline: str, num_classes: int) -> list[str] | None:
    """The benchmark's class names of a pipeline's label space (ScanNet 20 or 200, nuScenes 16); None if unknown."""
    from volt.data.nuscenes import CLASS_NAMES_16
    from volt.data.scannet_classes import CLASS_NAMES_20, CLASS_NAMES_200

    for names in (CLASS_NAMES_20, CLASS_NAMES_200) if pipeline.startswith("scannet") else (CLASS_NAMES_16,):
        if len(names) == num_classes:
            return list(names)
    return None


def class_names(ds: DatasetCfg) -> list[str] | None:
    """Class names of the dataset's label field from a validation scene's meta.json (None if unavailable)."""
    split = Path(ds.root) / ds.val_split
    scene = next((p for p in sorted(split.iterdir()) if (p / "meta.json").is_file()), None) if split.is_dir() else None
    if scene is None:
        return None
    names = SceneDataset.class_names(scene, ds.segment_field)
    return names if len(names) == ds.num_classes else None


def dataset_class_names(ds: DatasetCfg) -> list[str]:
    """The dataset's class names: its processed data's meta.json, else the benchmark's table, else class_<i>."""
    return (class_names(ds) or known_class_names(ds.pipeline, ds.num_classes)
            or [f"class_{i}" for i in range(ds.num_classes)])


# --- data -------------------------------------------------------------------------------------------------
FIELDS = {"scannet": ("coord", "color", "normal", "instance"), "scannet200": ("coord", "color", "normal", "instance"),
          "nuscenes": ("coord", "strength")}


def scene_dataset(ds: DatasetCfg, split: str | list[str]) -> SceneDataset:
    if ds.pipeline not in FIELDS:
        raise DataError(None, f"config key 'data.datasets[{ds.condition}].pipeline': unknown pipeline "
                              f"{ds.pipeline!r}; choose one of {sorted(FIELDS)}")
    return SceneDataset(ds.root, split, fields=[*FIELDS[ds.pipeline], ds.segment_field])


def joint_sample(ds: DatasetCfg, model_cfg: ModelCfg, split: str) -> JointSample:
    """The dataset's train/val pipeline, tagged with its grid size and its features placed in the model input."""
    pipeline = build_pipeline(ds.pipeline, split, label=ds.segment_field, condition=ds.condition,
                              grid_size=ds.grid_size)
    return JointSample(pipeline, ds.grid_size, ds.feat_start, model_cfg.in_channels)


def test_views_for(ds: DatasetCfg, model_cfg: ModelCfg, views: int | None = None
                   ) -> tuple[Callable[[dict[str, Any]], Iterator[dict[str, Any]]], int]:
    """(scene -> precise-test fragments placed as in training, number of TTA views used): the first `views`
    views of the dataset's test pipeline (all when None or 0; the untransformed view is always first)."""
    pipeline = build_pipeline(ds.pipeline, "test", label=ds.segment_field, condition=ds.condition,
                              grid_size=ds.grid_size)
    pipeline.views = pipeline.views[:views] if views else pipeline.views
    tag = JointSample(pipeline, ds.grid_size, ds.feat_start, model_cfg.in_channels)
    return (lambda scene: (tag.tag(fragment) for fragment in test_views(scene, pipeline))), len(pipeline.views)


class EpochLoader:
    """A volt.data.loader DataLoader with the trainer's protocol: len(), iter(), set_epoch(epoch)."""

    def __init__(self, loader: Any):
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        set_loader_epoch(self.loader, epoch)  # sampler, batch sampler and the joint dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def duplicates_rule(cfg: Config) -> str:
    if cfg.data.duplicates != "auto":
        return cfg.data.duplicates
    teacher = cfg.distill.checkpoint or cfg.distill.checkpoints
    return "drop" if cfg.model.backbone == "spunet" or teacher else "keep"


def build_loaders(cfg: Config, info: Any) -> tuple[Any, Any]:
    """(train loader, val loader, {condition: val loader} or None) of rank `info.rank` of `info.world_size`."""
    d, t = cfg.data, cfg.train
    if d.batch_size % info.world_size:
        raise DataError(None, f"config key 'data.batch_size': {d.batch_size} does not split evenly over "
                              f"{info.world_size} ranks")
    loop = t.epochs // t.eval_epochs
    datasets = [scene_dataset(ds, ds.train_split) for ds in d.datasets]
    counts = joint_counts((d.epoch_samples or len(datasets[0])) * loop, [ds.ratio for ds in d.datasets])
    shard = {"seed": t.seed, "rank": info.rank, "world_size": info.world_size, "num_workers": d.num_workers,
             "pin_memory": info.device.type == "cuda"}
    sampler_cls = RoundRobinBatchSampler if d.sampling == "round_robin" else RatioBatchSampler
    batches = sampler_cls(counts, d.batch_size, world_size=info.world_size, rank=info.rank, seed=t.seed)
    joint = JointDataset(datasets, counts)
    samples = [joint_sample(ds, cfg.model, "train") for ds in d.datasets]
    collate, worker = None, Dispatch(samples)
    if d.grid_sampling == "batch":  # workers stop before GridSample; one voxelize call per batch
        parts = [split_at_grid_sample(js.pipeline) for js in samples]
        collate = BatchGridCollate([grid.grid_size for _, grid, _ in parts], [tail for _, _, tail in parts],
                                   [js.tag for js in samples], d.mix_prob, duplicates_rule(cfg))
        worker = Dispatch([head for head, _, _ in parts], keep_tag=True)
    train = EpochLoader(build_loader(joint, worker, batch_sampler=batches, mix_prob=d.mix_prob,
                                     duplicates=duplicates_rule(cfg), collate=collate, **shard))
    wanted = cfg.eval.datasets or [ds.condition for ds in d.datasets]
    val: dict[str, EpochLoader] = {}  # the trainer validates each with its own head and metrics
    for ds in d.datasets:
        if cfg.eval.enabled and ds.condition in wanted and (Path(ds.root) / ds.val_split).is_dir():
            loader = build_loader(scene_dataset(ds, ds.val_split), joint_sample(ds, cfg.model, "val"),
                                  batch_size=d.val_batch_size, shuffle=False, drop_last=False, mix_prob=0.0, **shard)
            val[ds.condition] = EpochLoader(loader)
    if len(d.datasets) == 1:
        return train, next(iter(val.values()), None)
    return train, val or None
