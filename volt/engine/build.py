"""Objects of a training run from a `Config`: the segmentor (with its frozen teacher) and the data loaders.

- `build_backbone(model_cfg, num_classes=0)`: VolumeTransformer from a preset, or SparseUNet (features when
  num_classes is 0, class logits otherwise).
- `build_teacher(cfg)`: the frozen distillation teacher (VOLT_SPEC.md §1.2): its architecture comes from
  `distill.config` (a YAML config) or else from the config stored in the checkpoint (or else the SpUNet
  defaults with the student's input channels); its output layout from the checkpoint's keys — a final conv
  with class logits (single-dataset teacher, e.g. a converted reference checkpoint) or feature backbone +
  `seg_heads.<condition>` (our own teachers); the weights load strictly.
- `build_segmentor(cfg, device)`: Segmentor with one head per dataset condition, the configured losses and
  the teacher; on `device`.
- `build_loaders(cfg, info)`: (train loader, validation loader) of this rank (volt.data.loader + pipelines).
  One trainer epoch repeats the data epochs // eval_epochs times (the reference's `loop`). Several datasets
  (joint training) are concatenated, each through its own pipeline; dataset k contributes
  round(len(first) · loop · ratio_k / ratio_0) samples per epoch, cycling through its scenes across epochs.
  The global batch is split evenly over the ranks; validation uses the first dataset's val split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volt.config import Config, DatasetCfg, ModelCfg, config_from_dict, load_config
from volt.data.dataset import SceneDataset
from volt.data.loader import build_loader
from volt.data.loader import set_epoch as set_loader_epoch
from volt.data.pipelines import build_pipeline
from volt.engine.checkpoint import load_checkpoint, load_teacher
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


def _teacher_config(cfg: Config, stored: dict) -> ModelCfg:
    d = cfg.distill
    if d.config:
        return load_config(d.config).model
    if stored:
        try:
            return config_from_dict(stored, d.checkpoint).model
        except DataError as exc:
            raise DataError(d.checkpoint, f"the stored config is not a volt config ({exc.problem}); "
                                          "pass the teacher's config YAML as distill.config") from exc
    # A converted reference teacher without a config: the reference SpUNet-v1m1 architecture.
    return ModelCfg(backbone="spunet", in_channels=cfg.model.in_channels)


def _head_classes(state: dict[str, torch.Tensor], prefix: str) -> dict[str, int]:
    return {k[len(prefix):].split(".")[0]: int(v.shape[0])
            for k, v in state.items() if k.startswith(prefix) and k.endswith(".weight")}


def build_teacher(cfg: Config) -> FrozenTeacher | None:
    """The frozen teacher of `cfg.distill`, on the CPU (the segmentor moves it with itself); None if unset."""
    path = cfg.distill.checkpoint
    if not path:
        return None
    ckpt = load_checkpoint(path)
    model_cfg = _teacher_config(cfg, ckpt.get("config") or {})
    state = ckpt["model"]
    student = conditions(cfg)
    if "backbone.final.weight" in state:  # single-dataset teacher: the backbone's last conv gives the classes
        classes = int(state["backbone.final.weight"].shape[0])
        wrong = {c: n for c, n in student.items() if n != classes}
        if wrong:
            raise DataError(path, f"the teacher predicts {classes} classes but the student's conditions have {wrong}")
        return load_teacher(path, build_backbone(model_cfg, classes))
    heads = _head_classes(state, "seg_heads.")
    if not heads:
        raise DataError(path, "the teacher checkpoint has neither 'backbone.final.*' nor 'seg_heads.*' keys")
    backbone = build_backbone(model_cfg, 0)
    missing = {c: n for c, n in student.items() if heads.get(c) != n}
    if missing:
        raise DataError(path, f"the teacher's heads {heads} do not cover the student's conditions {missing} "
                              "(same name and class count needed)")
    return load_teacher(path, backbone, ConditionHeads(backbone.out_channels, heads))


def build_segmentor(cfg: Config, device: torch.device | str = "cpu") -> Segmentor:
    m = cfg.model
    criteria = Criteria(m.losses, label_smoothing=m.label_smoothing, ignore_index=-1)
    model = Segmentor(build_backbone(m), conditions(cfg), criteria=criteria, teacher=build_teacher(cfg),
                      distill_weight=cfg.distill.weight)
    return model.to(device)


def class_names(ds: DatasetCfg) -> list[str] | None:
    """Class names of the dataset's label field from a validation scene's meta.json (None if unavailable)."""
    split = Path(ds.root) / ds.val_split
    scene = next((p for p in sorted(split.iterdir()) if (p / "meta.json").is_file()), None) if split.is_dir() else None
    if scene is None:
        return None
    names = SceneDataset.class_names(scene, ds.segment_field)
    return names if len(names) == ds.num_classes else None


# --- data -------------------------------------------------------------------------------------------------
FIELDS = {"scannet": ("coord", "color", "normal", "instance"), "scannet200": ("coord", "color", "normal", "instance"),
          "nuscenes": ("coord", "strength")}


def scene_dataset(ds: DatasetCfg, split: str | list[str]) -> SceneDataset:
    if ds.pipeline not in FIELDS:
        raise DataError(None, f"config key 'data.datasets[{ds.condition}].pipeline': unknown pipeline "
                              f"{ds.pipeline!r}; choose one of {sorted(FIELDS)}")
    return SceneDataset(ds.root, split, fields=[*FIELDS[ds.pipeline], ds.segment_field])


class JointDataset:
    """Training scenes of one epoch over several datasets, tagged with their dataset for `Dispatch`.

    `counts[k]` entries belong to dataset k; entry j of dataset k in epoch e is its scene
    (j + e·counts[k]) mod len(dataset k), so a dataset used below its size still visits all its scenes.
    """

    def __init__(self, datasets: list[SceneDataset], counts: list[int]):
        self.datasets, self.counts = datasets, counts
        self.starts = [sum(counts[:k]) for k in range(len(counts))]
        self.epoch = 0

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = max(i for i, s in enumerate(self.starts) if s <= index)
        j = index - self.starts[k]
        item = self.datasets[k][(j + self.epoch * self.counts[k]) % len(self.datasets[k])]
        return {**item, "_dataset": k}


class Dispatch:
    """Pipeline of a joint item = its dataset's pipeline; `reseed` gives each pipeline its own child stream."""

    def __init__(self, pipelines: list[Any]):
        self.pipelines = pipelines

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        item = dict(item)
        return self.pipelines[item.pop("_dataset")](item)

    def reseed(self, seed: np.random.SeedSequence) -> None:
        for pipeline, child in zip(self.pipelines, seed.spawn(len(self.pipelines))):
            pipeline.reseed(child)


class EpochLoader:
    """A volt.data.loader DataLoader with the trainer's protocol: len(), iter(), set_epoch(epoch)."""

    def __init__(self, loader: Any, joint: JointDataset | None = None):
        self.loader, self.joint = loader, joint

    def set_epoch(self, epoch: int) -> None:
        set_loader_epoch(self.loader, epoch)
        if self.joint is not None:
            self.joint.epoch = epoch  # reaches the workers: the dataset is copied to them at iter()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def duplicates_rule(cfg: Config) -> str:
    if cfg.data.duplicates != "auto":
        return cfg.data.duplicates
    return "drop" if cfg.model.backbone == "spunet" or cfg.distill.checkpoint else "keep"


def build_loaders(cfg: Config, info: Any) -> tuple[Any, Any]:
    """(train loader, val loader or None) of rank `info.rank` of `info.world_size`."""
    d, t = cfg.data, cfg.train
    if d.batch_size % info.world_size:
        raise DataError(None, f"config key 'data.batch_size': {d.batch_size} does not split evenly over "
                              f"{info.world_size} ranks")
    loop = t.epochs // t.eval_epochs
    datasets = [scene_dataset(ds, ds.train_split) for ds in d.datasets]
    pipelines = [build_pipeline(ds.pipeline, "train", label=ds.segment_field, condition=ds.condition,
                                grid_size=ds.grid_size) for ds in d.datasets]
    main = len(datasets[0]) * loop
    counts = [main] + [round(main * ds.ratio / d.datasets[0].ratio) for ds in d.datasets[1:]]
    shard = {"seed": t.seed, "rank": info.rank, "world_size": info.world_size, "num_workers": d.num_workers,
             "pin_memory": info.device.type == "cuda"}
    joint = JointDataset(datasets, counts)
    train = EpochLoader(build_loader(joint, Dispatch(pipelines), batch_size=d.batch_size // info.world_size,
                                     shuffle=True, drop_last=True, mix_prob=d.mix_prob,
                                     duplicates=duplicates_rule(cfg), **shard), joint)
    first = d.datasets[0]
    if not cfg.eval.enabled or not (Path(first.root) / first.val_split).is_dir():
        return train, None
    val_pipeline = build_pipeline(first.pipeline, "val", label=first.segment_field, condition=first.condition,
                                  grid_size=first.grid_size)
    val = build_loader(scene_dataset(first, first.val_split), val_pipeline, batch_size=d.val_batch_size,
                       shuffle=False, drop_last=False, mix_prob=0.0, **shard)
    return train, EpochLoader(val)
