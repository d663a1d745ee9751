"""Instance-segmentation training (VOLT_SPEC.md §2): the semantic loop of volt.engine.trainer with the
InstanceSegmentor, the instance data chains and AP validation. `fit(cfg)` picks it when cfg.task is "instance".

- `build_instance_segmentor(cfg, load_init=True)`: backbone (cfg.model) + SPFormer-style head (cfg.instance),
  with the backbone of `instance.init_checkpoint` loaded STRICTLY: every `backbone.*` key of the semantic
  checkpoint must match the backbone exactly (a missing or unexpected key or a shape mismatch is a DataError
  listing them — the reference silently dropped the q/k-norm weights, spec §1.9 item 1); the checkpoint's
  heads (seg_heads, distill_heads) are not used. `instance.init_weights` picks the EMA or raw weights.
- `build_instance_loaders(cfg, info)`: train (instance train chain, mixing data.mix_prob, ids unique per
  batch) and val (instance val chain with inverse, batch data.val_batch_size, unsharded; only the main rank iterates it).
- `InstanceTrainer(Trainer)`: those hooks; training accuracy = class accuracy of the matched queries of the
  final layer; `evaluate()` scores point-level masks with the ScanNet instance evaluator (the dataset's class
  names, instance.stuff_classes ignored) on the main rank and returns {"metric": AP50 (best.pt is chosen by
  AP50, as the reference's evaluator), "AP", "AP50", "AP25"};
  the learning rate follows `instance.schedule` (poly with power 0.9 by default, the reference's PolyLR).
  With `instance.precise_bn_batches` > 0 the validated model's BatchNorm statistics are first recomputed
  over that many training batches (`recompute_batchnorm`; off by default, as in the reference): a short
  fine-tune's running statistics lag behind its weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from volt.config import Config, DatasetCfg
from volt.data.dataset import SceneDataset
from volt.data.pipelines_instance import build_instance_loader, scannet_instance_train, scannet_instance_val
from volt.engine import dist
from volt.engine.build import EpochLoader, build_backbone
from volt.engine.checkpoint import load_checkpoint, load_state_strict
from volt.engine.ema import unwrap
from volt.engine.instance_test import ap_summary, evaluate_loader, instance_evaluator
from volt.engine.optim import poly_scheduler
from volt.engine.trainer import Trainer, epoch_batches, to_device
from volt.errors import DataError
from volt.models.instance_segmentor import InstanceSegmentor


def load_backbone_strict(backbone: nn.Module, path: str | Path, weights: str = "auto") -> dict[str, Any]:
    """Load the `backbone.*` weights of a semantic checkpoint into `backbone`; every key must match."""
    ckpt = load_checkpoint(path)
    if weights == "ema" and "ema" not in ckpt:
        raise DataError(path, "instance.init_weights is 'ema' but the checkpoint has no EMA weights")
    use = "ema" if weights == "ema" or (weights == "auto" and "ema" in ckpt) else "model"
    state = {k[len("backbone."):]: v for k, v in ckpt[use].items() if k.startswith("backbone.")}
    if not state:
        raise DataError(path, f"the checkpoint's {use} weights have no 'backbone.*' keys: not a segmentor checkpoint")
    load_state_strict(backbone, state, source=f"{path} ({use} weights, backbone.*)")
    return {"weights": use, "keys": len(state)}


def build_instance_segmentor(cfg: Config, load_init: bool = True) -> InstanceSegmentor:
    i, ds = cfg.instance, cfg.data.datasets[0]
    backbone = build_backbone(cfg.model)
    if load_init and i.init_checkpoint:
        load_backbone_strict(backbone, i.init_checkpoint, i.init_weights)
    return InstanceSegmentor(backbone, ds.num_classes, tuple(i.stuff_classes), num_queries=i.num_queries,
                             d_model=i.d_model, num_heads=i.num_heads, ffn_dim=i.ffn_dim, num_layers=i.num_layers,
                             aux_loss=i.aux_loss, loss_weights=i.loss_weights, cost_weights=i.cost_weights,
                             no_object_weight=i.no_object_weight, label_smoothing=i.label_smoothing, topk=i.topk,
                             mask_thresh=i.mask_thresh, score_thresh=i.score_thresh, npoint_thresh=i.npoint_thresh)


def scene_fields(ds: DatasetCfg, optional_labels: bool = False, split: str | None = None) -> list[str]:
    """Stored fields the instance chains read; with optional_labels, label files a split lacks are left out.
    (check_config has limited task: instance to the superpoint pipelines, volt.config.INSTANCE_PIPELINES.)"""
    fields = ["coord", "color", "normal", "superpoint", ds.segment_field, "instance"]
    if optional_labels:
        d = Path(ds.root) / (split or ds.val_split)
        first = next((p for p in sorted(d.iterdir()) if p.is_dir()), None) if d.is_dir() else None
        if first is not None:
            fields = [f for f in fields if f in fields[:4] or (first / f"{f}.npy").is_file()]
    return fields


def build_instance_loaders(cfg: Config, info: Any) -> tuple[Any, Any]:
    d, t = cfg.data, cfg.train  # one dataset, a superpoint pipeline: checked by volt.config.check_config
    if d.batch_size % info.world_size:
        raise DataError(None, f"config key 'data.batch_size': {d.batch_size} does not split over {info.world_size} ranks")
    ds = d.datasets[0]
    loop = t.epochs // t.eval_epochs
    stuff = tuple(cfg.instance.stuff_classes)
    train_set = SceneDataset(ds.root, ds.train_split, fields=scene_fields(ds))
    # one trainer epoch = `loop` passes over the scenes (the reference's data loop)
    repeated = _Repeat(train_set, loop)
    train_chain = scannet_instance_train(ds.segment_field, ds.condition, ds.grid_size,
                                         exclude_classes=stuff if cfg.instance.aug_exclude_stuff else ())
    shard = {"seed": t.seed, "num_workers": d.num_workers, "pin_memory": info.device.type == "cuda"}
    train = EpochLoader(build_instance_loader(repeated, train_chain, batch_size=d.batch_size // info.world_size,
                                              shuffle=True, drop_last=True, mix_prob=d.mix_prob, rank=info.rank,
                                              world_size=info.world_size, **shard))
    if not cfg.eval.enabled or not (Path(ds.root) / ds.val_split).is_dir():
        return train, None
    val_set = SceneDataset(ds.root, ds.val_split, fields=scene_fields(ds))
    val = build_instance_loader(val_set, scannet_instance_val(ds.segment_field, ds.condition, ds.grid_size),
                                batch_size=d.val_batch_size, shuffle=False, **shard)
    return train, EpochLoader(val)


class _Repeat:
    """`dataset` repeated `times` times (item i = dataset[i % len])."""

    def __init__(self, dataset: Any, times: int):
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % len(self.dataset)]


def recompute_batchnorm(model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> int:
    """Precise BN: every BatchNorm's running statistics = their average over `batches` (train-mode forward
    without the loss, no grad); momenta are restored afterwards. Returns the number of batches used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    was_training, used = model.training, 0
    model.train()
    try:
        with torch.no_grad():
            for batch in batches:
                model(to_device({k: v for k, v in batch.items() if k != "instance"}, device))  # no targets: no loss
                used += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used


class InstanceTrainer(Trainer):
    """Trainer hooks for the instance task; see the module docstring."""

    def build_scheduler(self) -> Any:
        if self.cfg.instance.schedule == "poly":
            return poly_scheduler(self.optimizer, self.total_steps, self.cfg.instance.poly_power)
        return super().build_scheduler()

    def build_model(self) -> nn.Module:
        model = build_instance_segmentor(self.cfg, load_init=True)
        if self.cfg.instance.init_checkpoint:
            self.log.info(f"backbone initialised from {self.cfg.instance.init_checkpoint} (strict: every key loaded)")
        return model.to(self.device)

    def build_loaders(self) -> tuple[Any, Any]:
        return build_instance_loaders(self.cfg, self.info)

    def batch_accuracy(self, out: Any, batch: dict[str, Any]) -> tuple[int, int]:
        return int(out.parts.get("matched_correct", 0)), int(out.parts.get("matched", 0))

    def evaluate(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if self.info.is_main and self.val_loader is not None:
            self.val_loader.set_epoch(0)  # the same voxel picks at every validation
            model = self.ema.module if self.ema is not None else unwrap(self.model)
            n = self.cfg.instance.precise_bn_batches
            if n:  # the next epoch's first batches (train_epoch re-seeds the loader, so training is unchanged)
                batches = itertools.islice(epoch_batches(self.train_loader, self.pos.epoch, 0), n)
                recompute_batchnorm(model, batches, self.device)
            amp = self.amp_dtype if self.device.type == "cuda" else None
            # the dataset's class names (read once by Trainer.__init__) and its stuff classes ignored
            evaluator = instance_evaluator(self.cfg, self.class_names.get(self.cfg.data.datasets[0].condition))
            result = evaluate_loader(model, self.val_loader, evaluator, amp_dtype=amp,
                                     max_batches=self.cfg.eval.max_scenes)
            summary = ap_summary(result)
            metric = summary["AP50"] if summary["AP50"] == summary["AP50"] else -1.0  # NaN (no GT) never wins
            record = {"metric": metric, **summary}
        return dist.broadcast_object(record) if self.info.distributed else record
