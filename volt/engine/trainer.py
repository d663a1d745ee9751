"""`fit(cfg)`: the whole training run as one plain, explicit loop (no hooks; VOLT_SPEC.md §1.3, §1.4).

Input: a `volt.config.Config` and optionally prebuilt `(train_loader, val_loader)`: anything with len(),
iter() and set_epoch(epoch) (volt.engine.build.EpochLoader wraps volt.data.loader's). Output: a
run folder `cfg.train.out_dir` with config.yaml (resolved, seed included), train.log (text), metrics.jsonl
(one JSON record per log/validation event, for plots), TensorBoard events when tensorboard is installed,
last.pt and best.pt (volt.engine.checkpoint, written atomically).

One trainer epoch is one evaluation cycle (epochs // eval_epochs passes over the data, the loader's loop).
Per micro-batch: forward under autocast -> loss / grad_accum -> backward (DDP syncs only on the last
micro-batch). Per optimizer step: optional clipping, GradScaler step; a step with inf/NaN gradients is skipped
(by the fp16 scaler, else by volt.engine.optim.optimizer_step) and counted in the log's skipped_steps; only
a step taken advances the OneCycle scheduler and updates the EMA. Schedule length =
(len(loader) // grad_accum) · eval_epochs (a remainder of fewer than grad_accum batches at the end of an
epoch is not used).
After each cycle: quick validation of the EMA model (volt.engine.evaluate.validate), last.pt, best.pt on
the best EMA mIoU. Resume (train.resume) restores model, optimizer, scheduler, scaler, EMA, best metric,
every rank's RNG states and the position (epoch + optimizer step within it); the loader is re-seeded for
that epoch and the consumed batches are skipped, so the run continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volt.config import Config, DatasetCfg, check_config, save_config, to_dict
from volt.engine import dist
from volt.engine.build import build_loaders, build_segmentor, class_names
from volt.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from volt.engine.ema import EMA, unwrap
from volt.engine.evaluate import validate
from volt.engine.optim import build_optimizer, build_scheduler, current_lr_beta1, optimizer_step
from volt.engine.runlog import RunLog

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_amp(choice: str, cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for testing/inference: "auto" = the config's train.amp_dtype when it trained with AMP and
    `device` is CUDA, else none; "off" = none; else a name of AMP_DTYPES (ValueError otherwise)."""
    if choice == "auto":
        return AMP_DTYPES[cfg.train.amp_dtype] if cfg.train.amp and device.type == "cuda" else None
    if choice == "off":
        return None
    if choice not in AMP_DTYPES:
        raise ValueError(f"amp {choice!r}: choose auto, off or one of {list(AMP_DTYPES)}")
    return AMP_DTYPES[choice]


@dataclass
class FitResult:
    run_dir: Path
    steps: int  # optimizer steps taken in total
    best_metric: float  # best validation mIoU of the EMA (or live) model; -inf without validation
    last: Path
    best: Path | None


@dataclass
class Position:
    epoch: int = 0  # trainer epoch (evaluation cycle) in progress
    step_in_epoch: int = 0  # optimizer steps already done in that epoch
    step: int = 0  # optimizer steps done in total
    best_metric: float = -math.inf


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_seed(cfg: Config) -> Config:
    """A drawn seed when the config has none, the same on every rank (broadcast from rank 0)."""
    seed = cfg.train.seed if cfg.train.seed is not None else int.from_bytes(os.urandom(4), "little")
    return replace(cfg, train=replace(cfg.train, seed=int(dist.broadcast_object(seed))))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def epoch_batches(loader: Any, epoch: int, skip: int):
    """The loader's batches of `epoch` from batch `skip` on (a loader re-seeds itself in `set_epoch`)."""
    loader.set_epoch(epoch)
    # A torch DataLoader iterator may draw worker seeds from the global RNG; keep that draw out of the
    # training RNG stream, so a resumed run (which creates its iterator at another point) stays identical.
    with torch.random.fork_rng(devices=[]):
        it = iter(loader)
    return itertools.islice(it, skip, None)


def train_accuracy(out: Any, segment: torch.Tensor) -> tuple[int, int]:
    """(correct, labelled) voxels of the seg heads' argmax in a training step."""
    correct = labelled = 0
    for condition, logits in out.logits.items():
        target = segment[out.index[condition]]
        valid = target >= 0
        correct += int((logits.detach().argmax(1)[valid] == target[valid]).sum())
        labelled += int(valid.sum())
    return correct, labelled


def apply_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scheduler: Any, ema: EMA | None,
               model: nn.Module, clip_grad: float | None = None) -> tuple[bool, float | None]:
    """One optimizer step; the schedule and the EMA advance only when it was not skipped (inf/NaN grads)."""
    stepped, grad_norm = optimizer_step(optimizer, scaler, clip_grad)
    optimizer.zero_grad(set_to_none=True)
    if stepped:
        scheduler.step()
        if ema is not None:
            ema.update(model)
    return stepped, grad_norm


class Trainer:
    """Holds the objects of one run; `run()` is the loop. Built by `fit`."""

    def __init__(self, cfg: Config, info: dist.DistInfo, loaders: tuple[Any, Any] | None):
        t = cfg.train
        self.cfg, self.info, self.device = cfg, info, info.device
        self.run_dir = Path(t.out_dir)
        self.log = RunLog(self.run_dir, enabled=info.is_main)
        seed_everything(t.seed)  # the same initial weights on every rank
        self.model = self.build_model()
        self.train_loader, self.val_loader = loaders if loaders is not None else self.build_loaders()
        self.steps_per_epoch = len(self.train_loader) // t.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training loader gives {len(self.train_loader)} batches per epoch, fewer than "
                             f"train.grad_accum = {t.grad_accum}")
        self.total_steps = self.steps_per_epoch * t.eval_epochs
        self.optimizer = build_optimizer(self.model, t.lr, t.weight_decay, t.betas)
        self.scheduler = self.build_scheduler()
        self.amp_dtype = AMP_DTYPES[t.amp_dtype] if t.amp else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(self.model, t.ema_decay) if t.ema else None
        self.ddp = None
        if info.distributed:
            find_unused = len(cfg.data.datasets) > 1  # a batch may not reach every condition's head
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (BN statistics) stay per rank during training, as the reference's broadcast_buffers=False;
            # newer torch spells it forward_sync_buffers (and still syncs them once at init: same values).
            ddp_cls = nn.parallel.DistributedDataParallel
            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp_cls).parameters
                       else "broadcast_buffers")
            self.ddp = ddp_cls(self.model, device_ids=ids, find_unused_parameters=find_unused, **{no_sync: False})
        # read once (from a val scene's meta.json), not at every validation
        self.class_names = {ds.condition: class_names(ds) for ds in cfg.data.datasets} if self.val_loader is not None else {}
        self.pos = Position()
        seed_everything(t.seed + 1_000_003 * info.rank)  # per-rank randomness (drop-path) from here on

    # --- what a task changes (the instance trainer overrides these) ---------------------------------------------
    def build_model(self) -> nn.Module:
        return build_segmentor(self.cfg, self.device)

    def build_loaders(self) -> tuple[Any, Any]:
        return build_loaders(self.cfg, self.info)

    def build_scheduler(self) -> Any:
        """The lr schedule over self.total_steps optimizer steps (one-cycle; the instance task may use poly)."""
        t = self.cfg.train
        return build_scheduler(self.optimizer, t.lr, self.total_steps, t.pct_start, t.div_factor,
                               t.final_div_factor, t.base_momentum, t.max_momentum)

    def batch_accuracy(self, out: Any, batch: dict[str, Any]) -> tuple[int, int]:
        """(correct, labelled) of one training step, for the log's train_acc."""
        return train_accuracy(out, batch["segment"])

    def evaluate(self) -> dict[str, Any]:
        """Validate the EMA model; a log record whose "metric" (higher is better) picks best.pt.

        A joint run's val loaders (a dict {condition: loader}) are validated one dataset
        at a time, each with its own head and classes: keys "<condition>/mIoU", ... and "metric" = "mIoU_mean",
        the mean of the datasets' mIoU."""
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        if not isinstance(self.val_loader, Mapping):
            first = self.cfg.data.datasets[0]
            return self.validate_dataset(model, self.val_loader, first, self.class_names[first.condition])
        by_name = {ds.condition: ds for ds in self.cfg.data.datasets}
        record: dict[str, Any] = {}
        for condition, loader in self.val_loader.items():
            one = self.validate_dataset(model, loader, by_name[condition], self.class_names[condition])
            record.update({f"{condition}/{k}": v for k, v in one.items() if k != "metric"})
        record["mIoU_mean"] = float(np.mean([record[f"{c}/mIoU"] for c in self.val_loader]))
        record["metric"] = record["mIoU_mean"]
        rows = [f"  {c:<16} {100 * record[f'{c}/mIoU']:6.2f} {100 * record[f'{c}/mIoU_present']:13.2f} "
                f"{100 * record[f'{c}/allAcc']:7.2f}" for c in self.val_loader]
        self.log.info(f"validation per dataset (each with its own head)\n  {'dataset':<16} {'mIoU':>6} "
                      f"{'mIoU present':>13} {'allAcc':>7}\n" + "\n".join(rows))
        return record

    def validate_dataset(self, model: nn.Module, loader: Any, ds: DatasetCfg,
                         names: list[str] | None) -> dict[str, Any]:
        """Quick validation of one dataset (its condition's head, its class count)."""
        loader.set_epoch(0)  # the same voxel picks at every validation: comparable scores
        result = validate(model, loader, ds.num_classes, device=self.device, amp_dtype=self.amp_dtype,
                          class_names=names, max_batches=self.cfg.eval.max_scenes,
                          distributed=self.info.distributed)
        m = result.metrics
        record = {"metric": m.miou, "mIoU": m.miou, "mAcc": m.macc, "allAcc": m.allacc,
                  "mIoU_present": m.miou_present, "batches": result.batches, "class_iou": [float(x) for x in m.iou]}
        if result.loss is not None:
            record["loss"] = result.loss
        return record

    # --- checkpoints ----------------------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        rngs = dist.all_gather_object(capture_rng())  # every rank's generators, for an exact resume
        path = self.run_dir / name
        if self.info.is_main:
            meta = {"step_in_epoch": self.pos.step_in_epoch, "best_metric": self.pos.best_metric,
                    "world_size": self.info.world_size, "rng_per_rank": rngs,
                    "total_steps": self.total_steps}
            save_checkpoint(path, self.model, to_dict(self.cfg), optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler, ema=self.ema, step=self.pos.step,
                            epoch=self.pos.epoch, rng=rngs[0], meta=meta)
        dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")  # RNG states must stay CPU tensors; weights are copied
        meta = ckpt.get("meta", {})
        if meta.get("total_steps") != self.total_steps:
            raise ValueError(f"{path}: the checkpoint's schedule has {meta.get('total_steps')} steps, this run "
                             f"{self.total_steps}; resume with the same data, batch size and epochs")
        unwrap(self.model).load_state_dict(ckpt["model"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.pos = Position(ckpt["epoch"], meta["step_in_epoch"], ckpt["step"], float(meta["best_metric"]))
        rngs = meta.get("rng_per_rank", [ckpt["rng"]])
        restore_rng(rngs[self.info.rank] if len(rngs) == self.info.world_size else ckpt["rng"])
        self.log.info(f"resumed from {path}: epoch {self.pos.epoch}, step {self.pos.step} "
                      f"({self.pos.step_in_epoch} into the epoch), best metric {self.pos.best_metric:.4f}")

    def resume_path(self) -> Path | None:
        choice = self.cfg.train.resume
        if choice == "never":
            return None
        if choice == "auto":
            last = self.run_dir / "last.pt"
            return last if last.is_file() else None
        return Path(choice)

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        t = self.cfg.train
        if self.info.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        path = self.resume_path()
        if path is not None:
            self.resume(path)
        self.log.info(f"{self.steps_per_epoch} steps per epoch x {t.eval_epochs} epochs = {self.total_steps} "
                      f"steps; world {self.info.world_size}, device {self.device}, amp {t.amp_dtype if t.amp else 'off'}")
        bar = self.log.progress(self.total_steps, initial=self.pos.step)
        stopped = False
        while self.pos.epoch < t.eval_epochs and not stopped:
            stopped = self.train_epoch(bar)
            if stopped:
                break
            self.pos.epoch, self.pos.step_in_epoch = self.pos.epoch + 1, 0
            self.evaluate_and_save()
        bar.close()
        if stopped:
            self.save("last.pt")
        best = self.run_dir / "best.pt"
        self.log.close()
        return FitResult(self.run_dir, self.pos.step, self.pos.best_metric, self.run_dir / "last.pt",
                         best if best.is_file() else None)

    def train_epoch(self, bar: Any) -> bool:
        """Train the rest of the current epoch; True when train.stop_at_step stopped it early."""
        t, accum = self.cfg.train, self.cfg.train.grad_accum
        if t.stop_at_step is not None and self.pos.step >= t.stop_at_step:
            return True  # resumed with the stop step already reached
        model = self.ddp if self.ddp is not None else self.model
        model.train()
        start = self.pos.step_in_epoch
        batches = epoch_batches(self.train_loader, self.pos.epoch, start * accum)
        window: dict[str, float] = {}
        timer = time.perf_counter()
        for i, batch in enumerate(itertools.islice(batches, (self.steps_per_epoch - start) * accum)):
            batch = to_device(batch, self.device)
            last_micro = (i + 1) % accum == 0
            sync = contextlib.nullcontext() if self.ddp is None or last_micro else self.ddp.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = model(batch)
                self.scaler.scale(out.loss / accum).backward()
            correct, labelled = self.batch_accuracy(out, batch)
            for key, value in (("loss", float(out.loss.detach())), ("correct", correct), ("labelled", labelled)):
                window[key] = window.get(key, 0.0) + value
            for key, value in out.parts.items():  # per-condition parts exist only when it is in the batch
                if key != "loss":
                    window[key] = window.get(key, 0.0) + float(value)
                    window["#" + key] = window.get("#" + key, 0.0) + 1
            window["micro"] = window.get("micro", 0.0) + 1
            if not last_micro:
                continue
            lr_beta1 = current_lr_beta1(self.optimizer)  # the values this step uses
            stepped, grad_norm = apply_step(self.optimizer, self.scaler, self.scheduler, self.ema, self.model,
                                            t.clip_grad)
            if not stepped:
                window["skipped"] = window.get("skipped", 0.0) + 1
            self.pos.step += 1
            self.pos.step_in_epoch += 1
            bar.update(1)
            if self.pos.step % t.log_every == 0 or self.pos.step_in_epoch == self.steps_per_epoch:
                self.log_train(window, time.perf_counter() - timer, grad_norm, lr_beta1)
                window, timer = {}, time.perf_counter()
            if t.save_every and self.pos.step % t.save_every == 0 and self.pos.step_in_epoch < self.steps_per_epoch:
                self.save("last.pt")
            if t.stop_at_step is not None and self.pos.step >= t.stop_at_step:
                return True
        return False

    def log_train(self, window: dict[str, float], seconds: float, grad_norm: float | None,
                  lr_beta1: tuple[float, float]) -> None:
        # The union of every rank's keys: a rank whose batches missed a dataset has none of its parts.
        keys = sorted(set().union(*dist.all_gather_object(sorted(window))))
        totals = dist.all_reduce_sum(torch.tensor([window.get(k, 0.0) for k in keys], dtype=torch.float64))
        w = dict(zip(keys, totals.tolist()))
        micro = w.pop("micro")
        lr, beta1 = lr_beta1
        record = {"epoch": self.pos.epoch, "step": self.pos.step, "lr": lr, "beta1": beta1,
                  "loss": w.pop("loss") / micro, "train_acc": w.pop("correct") / max(w.pop("labelled"), 1.0),
                  "skipped_steps": w.pop("skipped", 0.0),
                  "seconds_per_step": seconds * self.cfg.train.grad_accum * self.info.world_size / micro}
        # a part averages over the micro-batches that had it (a dataset absent from some batches)
        record.update({k: v / max(w[f"#{k}"], 1.0) for k, v in w.items() if not k.startswith("#")})
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        if self.device.type == "cuda":
            record["max_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log.metrics("train", record)

    def evaluate_and_save(self) -> None:
        """After an epoch: validate (EMA model), save last.pt and, on a new best mIoU, best.pt."""
        ev, epoch = self.cfg.eval, self.pos.epoch
        improved = False
        due = epoch % ev.every == 0 or epoch == self.cfg.train.eval_epochs
        if ev.enabled and self.val_loader is not None and due:
            record = {"epoch": epoch, "step": self.pos.step, **self.evaluate()}
            improved = record["metric"] > self.pos.best_metric
            if improved:
                self.pos.best_metric = record["metric"]
            record["best_metric"] = self.pos.best_metric
            self.log.metrics("val", record)
        self.save("last.pt")
        if improved:
            self.save("best.pt")


def fit(cfg: Config, loaders: tuple[Any, Any] | None = None) -> FitResult:
    """Train according to `cfg` (single process, or one rank of a torchrun job); see the module docstring."""
    check_config(cfg)
    info = dist.init_distributed(cfg.train.device)
    cfg = resolve_seed(cfg)
    if cfg.task == "instance":
        from volt.engine.instance_train import InstanceTrainer  # imported here: it subclasses Trainer

        return InstanceTrainer(cfg, info, loaders).run()
    return Trainer(cfg, info, loaders).run()
