"""Evaluation: quick voxel-level validation during training, and the precise fragment x TTA test.

`validate(model, loader, num_classes, ...)` (VOLT_SPEC.md §1.6 "val"): the model runs in eval mode on
each batch (a dict from the data pipeline; `model(batch)` returns a SegmentorOutput or a logits tensor
(V, C)); the voxel argmax is mapped back to every original point with `pred[inverse]` and scored against
`origin_segment` (batches without `inverse` are scored per voxel against `segment`). The confusion
matrix is summed over the whole split (and over ranks with `distributed=True`).

`precise_test(model, scenes, views, num_classes, ...)` (§1.6 "test", the reported number, §1.9 item 7):
for each scene dict (`name`, `coord` and, when labelled, `label_key` over the raw points), `views(scene)`
(volt.data.pipelines.test_views) yields fragment dicts {coord, grid_coord, feat, index} over all TTA views;
each fragment runs as one scene (offset = [n]), its softmax (float32) is added into a (num_points, C)
buffer at `index`, and the label is the argmax. Fragments may carry `num_points` (the buffer size) and
`origin_inverse` (raw point -> buffer row; nuScenes' 2.5 cm pre-sampling): labels are then expanded with
`pred[origin_inverse]`, and `origin_segment` (raw labels, used when the scene dict has no `label_key`).
Every buffer row must be covered by some fragment.
Predictions are cached as `{out_dir}/{name}_pred.npy` (int16 training indices per raw point) beside
`{name}_pred.json` recording `num_views` (the number of TTA views `views` yields); a cached prediction is
reused only when that record equals this call's `num_views`, so a test with other views recomputes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from volt.data.io import atomic_write
from volt.engine.metrics import ConfusionMatrix, SegMetrics
from volt.errors import DataError

Fragment = Mapping[str, Any]


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode + no_grad for the duration, restoring the previous training flag afterwards."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():  # not inference_mode: lazily built caches must stay usable in training
            yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _logits(out: Any) -> Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, Mapping):
        raise TypeError("the model returned per-condition logits (training mode); evaluation needs model.eval()")
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise TypeError(f"the model must return logits (V, C) or an object with .logits, got {type(logits).__name__}")
    return logits


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


# --- quick validation --------------------------------------------------------------------------------------
@dataclass
class Validation:
    metrics: SegMetrics
    loss: float | None  # mean of the model's per-batch loss, when it computes one
    batches: int


def validate(
    model: Callable[[dict], Any],
    loader: Iterable[Mapping[str, Any]],
    num_classes: int,
    *,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    class_names: Sequence[str] | None = None,
    max_batches: int | None = None,
    distributed: bool = False,
) -> Validation:
    """Voxel predictions -> original points (`pred[inverse]`) -> confusion matrix over the split."""
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, class_names)
    losses: list[float] = []
    batches = 0
    with _eval_mode(model):
        for batch in itertools.islice(loader, max_batches):
            batch = _to_device(batch, device)
            with _autocast(device, amp_dtype):
                out = model(batch)
            pred = _logits(out).argmax(1)  # (V,)
            if "inverse" in batch:
                if "origin_segment" not in batch:
                    raise KeyError("a validation batch with 'inverse' needs 'origin_segment'")
                cm.update(pred[batch["inverse"]], batch["origin_segment"])
            else:
                cm.update(pred, batch["segment"])
            loss = getattr(out, "loss", None)
            if isinstance(loss, Tensor):
                losses.append(float(loss))
            batches += 1
    if distributed:
        cm.all_reduce()
    return Validation(cm.compute(), float(np.mean(losses)) if losses else None, batches)


# --- precise test ------------------------------------------------------------------------------------------
def _collate(group: Sequence[Fragment], device: torch.device, condition: str | None) -> tuple[dict, Tensor]:
    """Fragments -> one batch of len(group) scenes, plus the concatenated point ids (sum n_i,)."""

    def cat(key: str, dtype: torch.dtype) -> Tensor:
        parts = [f[key] if isinstance(f[key], Tensor) else torch.as_tensor(np.asarray(f[key])) for f in group]
        return torch.cat([p.to(device=device, dtype=dtype) for p in parts])

    for key in ("grid_coord", "feat", "index"):
        if key not in group[0]:
            raise KeyError(f"test fragments need '{key}' (got keys {sorted(group[0])})")
    sizes = torch.tensor([len(f["index"]) for f in group], dtype=torch.int64)
    batch: dict[str, Any] = {
        "grid_coord": cat("grid_coord", torch.int32),
        "feat": cat("feat", torch.float32),
        "offset": torch.cumsum(sizes, 0).to(device),
    }
    if "coord" in group[0]:
        batch["coord"] = cat("coord", torch.float32)
    if condition is not None:
        batch["condition"] = [condition] * len(group)
    return batch, cat("index", torch.int64)


def accumulate_views(
    model: Callable[[dict], Any],
    fragments: Iterable[Fragment],
    num_points: int,
    num_classes: int,
    *,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    condition: str | None = None,
    fragment_batch: int = 1,
) -> tuple[Tensor, int]:
    """Sum of per-fragment softmax probabilities per point: ((num_points, C) float32, fragments run).

    The caller puts the model in eval mode (precise_test does). `fragment_batch` > 1 runs several
    fragments as separate scenes of one batch (same result; faster on a GPU).
    """
    device = torch.device(device)
    buffer = torch.zeros(num_points, num_classes, dtype=torch.float32, device=device)
    it, count = iter(fragments), 0
    while group := list(itertools.islice(it, max(1, fragment_batch))):
        batch, index = _collate(group, device, condition)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_points):
            raise DataError(None, f"fragment index out of range [0, {num_points}): "
                                  f"[{int(index.min())}, {int(index.max())}]")
        with _autocast(device, amp_dtype):
            logits = _logits(model(batch))
        if logits.shape != (index.numel(), num_classes):
            raise ValueError(f"model gave logits {tuple(logits.shape)} for {index.numel()} voxels, {num_classes} classes")
        # float32 softmax: fp16/bf16 probabilities would lose the small votes the sum is meant to keep.
        buffer.index_add_(0, index, logits.float().softmax(-1))
        count += len(group)
    return buffer, count


def _cache_matches(cache: Path, num_views: int | None) -> bool:
    """A cached prediction exists and was made with `num_views` views (a missing record reads as None)."""
    if not cache.is_file():
        return False
    record = cache.with_suffix(".json")
    try:
        made_with = json.loads(record.read_text()).get("views") if record.is_file() else None
    except (ValueError, AttributeError):  # unreadable record: recompute
        return False
    return made_with == num_views


def _save_cache(cache: Path, pred: np.ndarray, num_views: int | None) -> None:
    record = cache.with_suffix(".json")
    record.unlink(missing_ok=True)  # first: a crash between the two writes leaves a miss, never a wrong hit
    atomic_write(cache, lambda tmp: np.save(tmp, pred))  # a crash never leaves a half-written cache to reuse
    atomic_write(record, lambda tmp: tmp.write_text(json.dumps({"views": num_views}) + "\n"))


def scene_probabilities(model, fragments: Iterator[Fragment], num_raw: int, name: str,
                        **kw) -> tuple[Tensor, np.ndarray | None, int, np.ndarray | None]:
    """Summed softmax of one scene's fragments: (probs (num_points, C), origin_inverse (num_raw,) or None,
    fragments run, origin_segment of the fragments or None). Raw point p's row is origin_inverse[p]."""
    first = next(fragments, None)
    if first is None:
        raise DataError(None, f"scene {name}: the test views yielded no fragment")
    inverse = first.get("origin_inverse")
    if inverse is not None:
        inverse = np.asarray(inverse, dtype=np.int64)
        if len(inverse) != num_raw:
            raise DataError(None, f"scene {name}: 'origin_inverse' has {len(inverse)} entries for {num_raw} points")
    if "num_points" in first:
        num_points = int(first["num_points"])
    else:
        num_points = int(inverse.max()) + 1 if inverse is not None and len(inverse) else num_raw
    probs, count = accumulate_views(model, itertools.chain([first], fragments), num_points, **kw)
    uncovered = torch.nonzero(probs.sum(1) == 0).squeeze(1)
    if uncovered.numel():
        raise DataError(None, f"scene {name}: {uncovered.numel()} of {num_points} points are in no fragment "
                              f"(first: {int(uncovered[0])}); the test views must cover every point")
    return probs, inverse, count, first.get("origin_segment")


def _predict_scene(model, fragments: Iterator[Fragment], num_raw: int, name: str,
                   **kw) -> tuple[np.ndarray, int, np.ndarray | None]:
    """(labels per raw point, fragments run, origin_segment of the fragments or None)."""
    probs, inverse, count, origin_segment = scene_probabilities(model, fragments, num_raw, name, **kw)
    pred = probs.argmax(1).cpu().numpy()
    return (pred[inverse] if inverse is not None else pred), count, origin_segment


@dataclass
class TestResult:
    metrics: SegMetrics | None  # None when no scene had labels
    scenes: list[dict[str, Any]] = field(default_factory=list)  # per scene: name, points, fragments, ...


def precise_test(
    model: Callable[[dict], Any],
    scenes: Iterable[Mapping[str, Any]],
    views: Callable[[Mapping[str, Any]], Iterable[Fragment]],
    num_classes: int,
    *,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    condition: str | None = None,
    class_names: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    reuse_cached: bool = True,
    num_views: int | None = None,
    fragment_batch: int = 1,
    label_key: str = "segment",
    on_scene: Callable[[str, np.ndarray], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TestResult:
    """Fragments x TTA views per scene -> summed softmax -> argmax per raw point; metrics over the split.

    `on_scene(name, pred)` receives each scene's per-raw-point labels (e.g. to write submission files).
    `num_views`: the number of TTA views `views` yields, recorded with the cache and checked on reuse.
    """
    cm = ConfusionMatrix(num_classes, class_names)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    kw = {"num_classes": num_classes, "device": device, "amp_dtype": amp_dtype, "condition": condition,
          "fragment_batch": fragment_batch}
    records: list[dict[str, Any]] = []
    labelled = False
    with _eval_mode(model):
        for i, scene in enumerate(scenes):
            name = str(scene["name"])
            num_raw = len(scene["coord"])
            target = np.asarray(scene[label_key]).copy() if label_key in scene else None  # before views touch it
            cache = out / f"{name}_pred.npy" if out is not None else None
            start, cached, count = time.perf_counter(), False, 0
            if reuse_cached and cache is not None and _cache_matches(cache, num_views):
                pred = np.load(cache).astype(np.int64)
                if pred.shape != (num_raw,):
                    raise DataError(cache, f"cached prediction has shape {pred.shape}, the scene {num_raw} points; "
                                           "delete it or pass reuse_cached=False")
                cached = True
            else:
                pred, count, origin_segment = _predict_scene(model, iter(views(scene)), num_raw, name, **kw)
                if target is None and origin_segment is not None:
                    target = np.asarray(origin_segment)
                if cache is not None:
                    _save_cache(cache, pred.astype(np.int16 if num_classes <= 32767 else np.int32), num_views)
            record: dict[str, Any] = {"name": name, "points": num_raw, "fragments": count, "cached": cached,
                                      "seconds": round(time.perf_counter() - start, 3)}
            if target is not None:
                if len(target) != num_raw:
                    raise DataError(None, f"scene {name}: {len(target)} labels for {num_raw} points")
                scene_cm = ConfusionMatrix(num_classes).update(pred, target)
                cm.merge(scene_cm)
                labelled = True
                scored = scene_cm.compute()
                record["allAcc"] = scored.allacc if scored.num_points else None
            records.append(record)
            if on_scene is not None:
                on_scene(name, pred)
            if log is not None:
                acc = f" allAcc {100 * record['allAcc']:.2f}" if record.get("allAcc") is not None else ""
                how = "cached" if cached else f"{count} fragments"
                log(f"[{i + 1}] {name}: {num_raw} points, {how}, {record['seconds']:.1f} s{acc}")
    return TestResult(cm.compute() if labelled else None, records)
