"""Every training knob in one place: typed dataclasses with the reference defaults (VOLT_SPEC.md §1.2–§1.4).

YAML files in `configs/` set only what differs from these defaults; there is no inheritance and no class
names in YAML. `load_config(path, ["train.lr=0.002", "data.datasets.0.root=/data/scannet"])` safe-loads the
YAML, merges it into the defaults, applies `key=value` overrides (the value text is converted to the field's
type) and returns a `Config`. An unknown key or a value of the wrong type raises DataError naming the key.
`to_dict` / `to_yaml` / `save_config` give the resolved config that every run writes as `run_dir/config.yaml`
and stores in every checkpoint; `config_from_dict` reads it back (a round trip gives an equal Config).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from volt.data.io import atomic_write
from volt.errors import DataError


@dataclass
class VoltCfg:
    preset: str = "volt-s"  # volt-s | volt-b | volt-tiny (volt.models.PRESETS)
    drop_path: float | None = None  # None: the preset's (0.3 for volt-s/b)
    qk_norm: bool = True
    attn_backend: str = "auto"  # auto | sdpa | flash | varlen


@dataclass
class SpUNetCfg:
    base_channels: int = 32
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256, 128, 96, 96])
    layers: list[int] = field(default_factory=lambda: [2, 3, 4, 6, 2, 2, 2, 2])
    backend: str = "volt"  # volt | spconv (spconv: CUDA training only)


@dataclass
class ModelCfg:
    backbone: str = "volt"  # volt | spunet
    in_channels: int = 6  # 6 indoors (color + normal), 4 outdoors (xyz + strength)
    volt: VoltCfg = field(default_factory=VoltCfg)
    spunet: SpUNetCfg = field(default_factory=SpUNetCfg)
    losses: dict[str, float] = field(default_factory=lambda: {"ce": 1.0, "lovasz": 1.0})
    label_smoothing: float = 0.1


@dataclass
class DistillCfg:
    checkpoint: str = ""  # teacher checkpoint (our format); empty = no distillation
    config: str = ""  # teacher config YAML; empty = the config stored in the checkpoint
    weight: float = 0.5  # loss = (1 - w)·GT + w·distill, per condition
    # Per-dataset teachers {condition: checkpoint}, every condition covered; instead of `checkpoint`.
    checkpoints: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetCfg:
    condition: str = "ScanNet"  # head name; one head per condition
    pipeline: str = "scannet"  # transform chains: scannet | scannet200 | nuscenes (volt.data.pipelines)
    root: str = "data/scannet"  # processed folders root/<split>/<scene>/
    train_split: list[str] = field(default_factory=lambda: ["train"])
    val_split: str = "val"
    segment_field: str = "segment20"  # stored label field used as `segment`
    num_classes: int = 20
    grid_size: float = 0.02  # metres; 0.05 outdoors
    ratio: float = 1.0  # joint training: relative number of samples per epoch
    # Joint training with other input features: this dataset's features fill channels
    # [feat_start, feat_start + C) of model.in_channels, the others are zero (volt.data.samplers.JointSample).
    feat_start: int = 0


@dataclass
class DataCfg:
    datasets: list[DatasetCfg] = field(default_factory=lambda: [DatasetCfg()])  # one head each
    batch_size: int = 16  # global: split evenly over the DDP ranks
    val_batch_size: int = 1  # per rank
    num_workers: int = 4  # per rank
    mix_prob: float = 0.85  # Mix3D-style pairwise overlay, per batch
    # Voxels two mixed scenes share: keep (the reference's overlay) | drop (first wins; sparse convolutions
    # need unique voxels) | auto (drop when the backbone or the teacher is a SpUNet, else keep).
    duplicates: str = "auto"
    # Joint training (VOLT_SPEC.md §1.8): ratio = shuffled batches mixing datasets | round_robin = every
    # batch from one dataset, datasets taking turns in proportion to their ratios.
    sampling: str = "ratio"
    # Where training scenes are grid-sampled: worker = each scene in its loader worker (the reference) |
    # batch = the whole batch in ONE volt.ops.voxelize call, each scene with its own grid size
    # (volt/data/batch_grid.py; the transforms after GridSample then run in the collate).
    grid_sampling: str = "worker"
    epoch_samples: int = 0  # samples of the first dataset per data pass; 0 = its size (reference)


@dataclass
class TrainCfg:
    out_dir: str = "outputs/run"
    resume: str = "auto"  # auto: out_dir/last.pt when present | never | a checkpoint path
    epochs: int = 800  # total passes over the training data
    eval_epochs: int = 100  # evaluation/checkpoint cycles; each covers epochs // eval_epochs passes
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # β1 is cycled by OneCycle
    pct_start: float = 0.05
    div_factor: float = 10.0
    final_div_factor: float = 1000.0
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    grad_accum: int = 1
    clip_grad: float | None = None  # max gradient norm; None = no clipping
    amp: bool = True
    amp_dtype: str = "float16"  # float16 (with GradScaler) | bfloat16
    ema: bool = True
    ema_decay: float = 0.999
    seed: int | None = None  # None: drawn at start, broadcast from rank 0, written to config.yaml
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 20  # optimizer steps between log lines
    save_every: int = 0  # optimizer steps between mid-epoch last.pt saves; 0 = at epoch ends only
    stop_at_step: int | None = None  # stop early (saving last.pt) after this many steps; schedule unchanged


@dataclass
class EvalCfg:
    enabled: bool = True  # quick voxel-level validation of the EMA model after each cycle
    every: int = 1  # validate every N evaluation cycles (and always after the last)
    max_scenes: int | None = None  # validate on the first N scenes only (smoke runs)
    datasets: list[str] = field(default_factory=list)  # conditions to validate; empty = all (best.pt: mean mIoU)


@dataclass
class InstanceCfg:
    """The SPFormer-style instance head and its fine-tuning (VOLT_SPEC.md §2); used when task is "instance"."""

    init_checkpoint: str = ""  # semantic checkpoint whose backbone.* keys ALL load (strict); empty = from scratch
    init_weights: str = "auto"  # auto (EMA weights when the checkpoint has them) | ema | model
    stuff_classes: list[int] = field(default_factory=lambda: [0, 1])  # no instances of these (wall, floor)
    aug_exclude_stuff: bool = False  # instance augmentations skip stuff instances (reference: they move too)
    precise_bn_batches: int = 0  # before each validation, BN statistics recomputed over this many train batches
    num_queries: int = 400
    d_model: int = 384
    num_heads: int = 8
    ffn_dim: int = 1024
    num_layers: int = 6
    aux_loss: bool = True  # the loss after every layer (re-matched per layer), not only the last
    loss_weights: dict[str, float] = field(default_factory=lambda: {"class": 0.2, "bce": 1.0, "dice": 1.0})
    cost_weights: dict[str, float] = field(default_factory=lambda: {"class": 0.5, "bce": 1.0, "dice": 1.0})
    no_object_weight: float = 0.1
    label_smoothing: float = 0.05
    topk: int = 100  # inference: best (query, class) pairs kept before matrix NMS
    mask_thresh: float = 0.55  # superpoint in the mask when sigmoid > this
    score_thresh: float = 0.0
    npoint_thresh: int = 100  # drop predicted masks of <= this many points
    schedule: str = "poly"  # poly (lr·(1 - step/total)^power, the reference) | onecycle (the semantic schedule)
    poly_power: float = 0.9


@dataclass
class Config:
    task: str = "semantic"  # semantic | instance
    model: ModelCfg = field(default_factory=ModelCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    instance: InstanceCfg = field(default_factory=InstanceCfg)


# --- conversion -------------------------------------------------------------------------------------------
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _fail(source: Any, key: str, problem: str) -> DataError:
    return DataError(source, f"config key '{key}': {problem}")


def _coerce(value: Any, tp: Any, key: str, source: Any, text: bool) -> Any:
    """`value` converted to type `tp`; `text` means it came from a key=value override string."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (text and isinstance(value, str) and value.lower() in ("null", "none", "~"))
        if is_null and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source, text)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # an item already converted (e.g. a list edited by an override)
            return value
        if text and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise _fail(source, key, f"expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return _merge(tp(), value, key, source)
    if origin in (list, tuple, Sequence):
        if text and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise _fail(source, key, f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}.{i}", source, text) for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if text and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise _fail(source, key, f"expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, args[0], f"{key}.{k}", source, text): _coerce(v, args[1], f"{key}.{k}", source, text)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text and isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()):
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # Also from YAML files: PyYAML reads `1e-3` (no dot) as a string.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field '{key}' has an unsupported type {tp!r}")
    name = getattr(tp, "__name__", str(tp))
    raise _fail(source, key, f"expected {name}, got {type(value).__name__} {value!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merge(obj: Any, data: Mapping, prefix: str, source: Any) -> Any:
    """A copy of dataclass `obj` with the fields in `data` replaced (recursively merged for sections)."""
    if not isinstance(data, Mapping):
        raise _fail(source, prefix or "<root>", f"expected a mapping, got {type(data).__name__}")
    hints = _hints(type(obj))
    changes = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            known = ", ".join(hints)
            raise _fail(source, path, f"unknown key (known keys{' of ' + prefix if prefix else ''}: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = _merge(current, value, path, source)  # sections merge; lists and scalars replace
        else:
            changes[key] = _coerce(value, hints[key], path, source, text=False)
    return dataclasses.replace(obj, **changes)


def config_from_dict(data: Mapping | None, source: str | os.PathLike | None = None) -> Config:
    """Defaults merged with a plain dict (a parsed YAML file or a checkpoint's stored config)."""
    return _merge(Config(), data or {}, "", source)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply `section.key=value` strings; list items are addressed by index (data.datasets.0.root=...)."""
    for item in overrides:
        if "=" not in item:
            raise DataError(None, f"override {item!r} is not of the form key=value")
        key, text = (s.strip() for s in item.split("=", 1))
        cfg = _set_path(cfg, key.split("."), text, key)
    return cfg


def _set_path(obj: Any, parts: list[str], text: str, key: str) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(obj, list):
        if not re.fullmatch(r"\d+", head) or int(head) >= len(obj):
            raise _fail(None, key, f"'{head}' is not an index of this list of {len(obj)} items")
        items = list(obj)
        items[int(head)] = _set_path(items[int(head)], rest, text, key) if rest else text
        return items
    if not dataclasses.is_dataclass(obj):
        raise _fail(None, key, f"'{head}' goes below a value that has no keys")
    hints = _hints(type(obj))
    if head not in hints:
        raise _fail(None, key, f"unknown key '{head}' (known keys: {', '.join(hints)})")
    current = getattr(obj, head)
    if rest and (dataclasses.is_dataclass(current) or isinstance(current, list)):
        new = _set_path(current, rest, text, key)
        if isinstance(current, list):  # re-check the edited list against the field type
            new = _coerce(new, hints[head], key, None, text=True)
    elif rest:
        raise _fail(None, key, f"'{head}' has no sub-keys")
    else:
        new = _coerce(text, hints[head], key, None, text=True)
    return dataclasses.replace(obj, **{head: new})


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file (optional) <- key=value overrides."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DataError(path, f"not valid YAML ({exc})") from exc
        if not isinstance(data, Mapping):
            raise DataError(path, f"the top level must be a mapping of sections, got {type(data).__name__}")
    cfg = apply_overrides(config_from_dict(data, path), overrides)
    check_config(cfg, path)
    return cfg


_CHOICES = {
    "model.backbone": ("volt", "spunet"),
    "model.spunet.backend": ("volt", "spconv"),
    "train.amp_dtype": ("float16", "bfloat16"),
    "train.device": ("auto", "cpu", "cuda"),
    "data.duplicates": ("auto", "keep", "drop"),
    "task": ("semantic", "instance"),
    "instance.init_weights": ("auto", "ema", "model"),
    "instance.schedule": ("poly", "onecycle"),
    "data.sampling": ("ratio", "round_robin"),
    "data.grid_sampling": ("worker", "batch"),
}
INSTANCE_PIPELINES = ("scannet", "scannet200")  # indoor meshes with superpoints (the instance data chains)
# Keys the instance trainer never reads (its own model and loaders): set under task: instance, they would be
# silently ignored.
_SEMANTIC_ONLY_DATA = ("sampling", "grid_sampling", "epoch_samples")


def check_config(cfg: Config, source: str | os.PathLike | None = None) -> None:
    """Values with a fixed set of choices or a valid range, and the limits of task: instance; DataError names
    the key."""
    for key, choices in _CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in choices:
            raise _fail(source, key, f"must be one of {list(choices)}, got {value!r}")
    t = cfg.train
    positive = {"train.epochs": t.epochs, "train.eval_epochs": t.eval_epochs, "train.grad_accum": t.grad_accum,
                "train.lr": t.lr, "train.log_every": t.log_every, "eval.every": cfg.eval.every,
                "data.batch_size": cfg.data.batch_size, "data.val_batch_size": cfg.data.val_batch_size}
    for key, value in positive.items():
        if value <= 0:
            raise _fail(source, key, f"must be > 0, got {value}")
    if t.epochs % t.eval_epochs:
        raise _fail(source, "train.epochs", f"must be a multiple of train.eval_epochs ({t.eval_epochs}), got {t.epochs}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise _fail(source, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    if not 0.0 < t.pct_start < 1.0:
        raise _fail(source, "train.pct_start", f"must be in (0, 1), got {t.pct_start}")
    if len(t.betas) != 2:
        raise _fail(source, "train.betas", f"needs two values (beta1, beta2), got {t.betas}")
    if not cfg.data.datasets:
        raise _fail(source, "data.datasets", "needs at least one dataset")
    names = [d.condition for d in cfg.data.datasets]
    if len(set(names)) != len(names):
        raise _fail(source, "data.datasets", f"condition names must be unique, got {names}")
    if not 0.0 <= cfg.data.mix_prob <= 1.0:
        raise _fail(source, "data.mix_prob", f"must be in [0, 1], got {cfg.data.mix_prob}")
    if cfg.task == "instance":  # before the joint checks: a distill key set here is an instance error first
        _check_instance(cfg, source)
    _check_joint(cfg, names, source)


def _check_instance(cfg: Config, source: Any) -> None:
    """task: instance: one indoor dataset, stuff classes among its classes, known loss/cost weight names, and
    no semantic-only key (distill.*, data.sampling/grid_sampling/epoch_samples) changed from its default."""
    if len(cfg.data.datasets) != 1:
        raise _fail(source, "data.datasets",
                    f"the instance task trains on exactly one dataset, got {len(cfg.data.datasets)}")
    ds, i = cfg.data.datasets[0], cfg.instance
    if ds.pipeline not in INSTANCE_PIPELINES:
        raise _fail(source, "data.datasets.0.pipeline",
                    f"the instance task needs one of {list(INSTANCE_PIPELINES)}, got {ds.pipeline!r}")
    outside = sorted({c for c in i.stuff_classes if not 0 <= c < ds.num_classes})
    if outside:
        raise _fail(source, "instance.stuff_classes", f"classes {outside} are not in [0, data.datasets.0.num_classes"
                                                      f"={ds.num_classes})")
    if set(range(ds.num_classes)) <= set(i.stuff_classes):
        raise _fail(source, "instance.stuff_classes", f"leaves no instance class: all {ds.num_classes} classes are stuff")
    # The head merges these dicts into its defaults (the same names as here), so a misspelt name would be ignored.
    defaults = InstanceCfg()
    for name in ("loss_weights", "cost_weights"):
        known = getattr(defaults, name)
        for key in getattr(i, name):
            if key not in known:
                raise _fail(source, f"instance.{name}.{key}", f"unknown key (known keys: {', '.join(known)})")
    ignored = "is ignored by the instance task (task: instance); leave it at its default"
    for f in dataclasses.fields(DistillCfg):
        value, default = getattr(cfg.distill, f.name), getattr(DistillCfg(), f.name)
        if value != default:
            raise _fail(source, f"distill.{f.name}", f"{ignored} {default!r}, got {value!r}")
    for name in _SEMANTIC_ONLY_DATA:
        value, default = getattr(cfg.data, name), getattr(DataCfg(), name)
        if value != default:
            raise _fail(source, f"data.{name}", f"{ignored} {default!r}, got {value!r}")


def _check_joint(cfg: Config, names: list[str], source: Any) -> None:
    """Joint-training keys: ratios, feature slots, evaluated conditions and per-dataset teachers."""
    for i, d in enumerate(cfg.data.datasets):
        if not d.ratio > 0:
            raise _fail(source, f"data.datasets.{i}.ratio", f"must be > 0, got {d.ratio}")
        if not 0 <= d.feat_start < cfg.model.in_channels:
            raise _fail(source, f"data.datasets.{i}.feat_start",
                        f"must lie in [0, model.in_channels={cfg.model.in_channels}), got {d.feat_start}")
    if cfg.data.epoch_samples < 0:
        raise _fail(source, "data.epoch_samples", f"must be >= 0, got {cfg.data.epoch_samples}")
    unknown = [c for c in cfg.eval.datasets if c not in names]
    if unknown:
        raise _fail(source, "eval.datasets", f"unknown conditions {unknown}; configured: {names}")
    teachers = cfg.distill.checkpoints
    if teachers and cfg.distill.checkpoint:
        raise _fail(source, "distill.checkpoints", "set either distill.checkpoint (one teacher) or "
                                                    "distill.checkpoints (one per condition), not both")
    if teachers and sorted(teachers) != sorted(names):
        raise _fail(source, "distill.checkpoints", f"needs one teacher per condition {names}, got {sorted(teachers)}")


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (lists, dicts, str, int, float, bool, None) of a config or section."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config atomically (a reader never sees a half-written file)."""
    return atomic_write(path, lambda tmp: tmp.write_text(to_yaml(cfg)))
