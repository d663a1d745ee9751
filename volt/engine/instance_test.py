"""Instance-segmentation inference and evaluation at point level (VOLT_SPEC.md §2 "Inference", "Evaluation").

- `point_instances(preds, inverse, offset, npoint_thresh)`: an InstanceSegmentor's per-scene voxel masks
  (`predict`) -> masks over each scene's ORIGINAL points through the batch's `inverse`, dropping masks of
  <= npoint_thresh points (the reference's npoint_thr).
- `predict_instances(model, scene_dict, pipeline, amp_dtype=None) -> {"masks" (K, N) bool over the scene's
  original points, "classes" (K,) int64 semantic ids, "scores" (K,) float32}` (numpy) for one SceneDataset
  item; `pipeline` is the instance val chain (volt.data.pipelines_instance.scannet_instance_val). Label fields
  the scene lacks (a test split) are filled with -1.
- `instance_evaluator(cfg, names=None)`: the ScanNet instance evaluator (volt.engine.instance_eval) for the
  config's dataset: its class names, with void and `instance.stuff_classes` ignored.
- `evaluate_loader(model, loader, evaluator, ...)`: predictions of every validation batch scored by that
  evaluator -> its result dict.
- `run_instance_test(cfg, checkpoint, out_dir, split=None, device="auto", submission=False, use_ema=True,
  source=None)`: the whole test of a checkpoint (its path, or the dict already loaded from `source`) on a
  split -> dict with AP / AP50 / AP25 (NaN without ground truth), the evaluator's result, and the paths
  written: out_dir/metrics.json (atomically, NaN as null), and with `submission` the ScanNet benchmark files
  under out_dir/submit (volt.engine.instance_submission.write_instance_submission).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volt.data.dataset import SceneDataset
from volt.data.pipelines_instance import build_instance_loader, collate_instances, scannet_instance_val
from volt.engine.build import build_test_segmentor, dataset_class_names
from volt.engine.checkpoint import load_checkpoint
from volt.engine.dist import pick_device
from volt.engine.ema import unwrap
from volt.engine.instance_eval import InstanceEvaluator, format_ap_table
from volt.engine.instance_submission import write_instance_submission
from volt.engine.report import save_json
from volt.engine.submission import scannet_class_ids
from volt.engine.trainer import to_device


def point_instances(preds: Sequence[dict[str, torch.Tensor]], inverse: torch.Tensor, offset: torch.Tensor,
                    npoint_thresh: int) -> list[dict[str, np.ndarray]]:
    """Per scene: voxel masks -> original-point masks (see the module docstring). Scenes' points are the
    contiguous blocks of `inverse` whose rows fall in each scene's row range (collate's concatenation)."""
    out, starts = [], [0, *offset.tolist()[:-1]]
    for pred, start, end in zip(preds, starts, offset.tolist()):
        pts = torch.nonzero((inverse >= start) & (inverse < end)).flatten()
        masks = pred["masks"][:, inverse[pts] - start]  # (K, N_scene)
        keep = masks.sum(1) > npoint_thresh
        out.append({"masks": masks[keep].cpu().numpy(), "classes": pred["classes"][keep].cpu().numpy(),
                    "scores": pred["scores"][keep].float().cpu().numpy(), "points": pts.cpu().numpy()})
    return out


@torch.no_grad()
def predict_batch(model: nn.Module, batch: dict[str, Any], amp_dtype: torch.dtype | None = None
                  ) -> list[dict[str, np.ndarray]]:
    """Point-level instances of every scene of one collated validation batch (needs `inverse`)."""
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        preds = model.predict(batch, min_size=0)  # the size filter counts points, below
    return point_instances(preds, batch["inverse"], batch["offset"], model.npoint_thresh)


def fill_labels(scene: dict[str, Any], pipeline: Any) -> dict[str, Any]:
    """A copy of `scene` with -1 arrays for the label fields (segment*, instance) the chain's first step
    (SelectFields) reads but the scene lacks."""
    scene = dict(scene)
    n = len(scene["coord"])
    first = pipeline.transforms[0] if getattr(pipeline, "transforms", None) else None
    for f in getattr(first, "fields", ()):
        if f not in scene and (f.startswith("segment") or f == "instance"):
            scene[f] = np.full(n, -1, np.int32)
    return scene


def predict_instances(model: nn.Module, scene_dict: dict[str, Any], pipeline: Any,
                      amp_dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """Instances of one scene over its original points; see the module docstring."""
    model = unwrap(model)
    n = len(scene_dict["coord"])
    scene = fill_labels(scene_dict, pipeline)
    if "superpoint" not in scene:
        raise ValueError(f"scene {scene.get('name')!r} has no 'superpoint' field (volt.ops.superpoint makes one)")
    was_training = model.training
    model.eval()
    try:
        # a fresh generator per call: the voxel picks (and so the masks) do not depend on earlier calls
        pred = predict_batch(model, collate_instances([pipeline(scene, np.random.default_rng(0))]), amp_dtype)[0]
    finally:
        model.train(was_training)
    masks = np.zeros((len(pred["masks"]), n), bool)
    masks[:, pred["points"]] = pred["masks"]
    return {"masks": masks, "classes": pred["classes"].astype(np.int64), "scores": pred["scores"].astype(np.float32)}


def instance_evaluator(cfg: Any, names: Sequence[str] | None = None) -> InstanceEvaluator:
    """A fresh ScanNet instance evaluator for the config's dataset: its class names (`names`, else the processed
    data's meta.json, else the benchmark's table, else class_<i>) with void (-1) and `instance.stuff_classes`
    (no instances: wall, floor) ignored."""
    names = names or dataset_class_names(cfg.data.datasets[0])
    return InstanceEvaluator(names, ignore_classes=(-1, *cfg.instance.stuff_classes))


def evaluate_loader(model: nn.Module, loader: Iterable[dict[str, Any]], evaluator: InstanceEvaluator | None = None,
                    *, amp_dtype: torch.dtype | None = None, max_batches: int | None = None,
                    on_scene: Any = None) -> dict:
    """Score the model's point-level instances over a validation loader with `evaluator` (a fresh one, e.g.
    `instance_evaluator(cfg)`; default: ScanNet-20 names, wall and floor ignored); `on_scene(name, pred)` sees
    each scene."""
    model = unwrap(model)
    evaluator = evaluator if evaluator is not None else InstanceEvaluator()
    was_training = model.training
    model.eval()
    try:
        for batch in itertools.islice(loader, max_batches):
            for b, pred in enumerate(predict_batch(model, batch, amp_dtype)):
                pts = torch.from_numpy(pred["points"])
                name = batch["name"][b]
                evaluator.add(batch["origin_segment"][pts].numpy(), batch["origin_instance"][pts].numpy(),
                              pred["masks"], pred["classes"], pred["scores"], name=name)
                if on_scene is not None:
                    on_scene(name, pred)
    finally:
        model.train(was_training)
    return evaluator.compute()


def ap_summary(result: dict) -> dict[str, float]:
    """AP / AP50 / AP25 (fractions; NaN where undefined) of an evaluator result."""
    return {"AP": float(result["all_ap"]), "AP50": float(result["all_ap_50%"]), "AP25": float(result["all_ap_25%"])}


def run_instance_test(cfg: Any, checkpoint: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike, *,
                      split: str | None = None, device: str = "auto", submission: bool = False, use_ema: bool = True,
                      source: str | os.PathLike | None = None, log: Any = print) -> dict:
    """Test an instance checkpoint on a split (default the first dataset's val split); see the module docstring.
    `checkpoint` is a path, or a dict already loaded by `load_checkpoint` (then `source` is its path, named
    in messages and metrics.json)."""
    from volt.engine.instance_train import scene_fields  # instance_train imports this module

    if not isinstance(checkpoint, Mapping):
        checkpoint, source = load_checkpoint(checkpoint), checkpoint
    out_dir = Path(out_dir)
    ds = cfg.data.datasets[0]
    split = split or ds.val_split
    dev = pick_device(device)
    model, weights = build_test_segmentor(cfg, checkpoint, dev, use_ema, source=source)
    scenes = SceneDataset(ds.root, split, fields=scene_fields(ds, optional_labels=True, split=split))
    pipeline = scannet_instance_val(ds.segment_field, ds.condition, ds.grid_size)
    fill = _LabelFill(pipeline)
    loader = build_instance_loader(scenes, fill, batch_size=1, shuffle=False)
    ids = scannet_class_ids(ds.num_classes)
    writer = (lambda name, p: write_instance_submission(out_dir / "submit", name, p["masks"], p["classes"],
                                                        p["scores"], ids)) if submission else None
    log(f"instance test of {source} ({weights} weights) on {ds.condition} {split}: {len(scenes)} scenes, "
        f"device {dev}")
    result = evaluate_loader(model, loader, instance_evaluator(cfg), on_scene=writer)
    summary = ap_summary(result)
    path = save_json(out_dir / "metrics.json", None, **summary, checkpoint=None if source is None else str(source),
                     weights=weights, split=split, result=result)
    log(format_ap_table(result, title=f"{ds.condition} {split} instance segmentation"))
    return {**summary, "result": result, "metrics": str(path),
            "submission": str(out_dir / "submit") if submission else None}


class _LabelFill:
    """The val chain, with -1 labels for scenes that have none (a test split), so it runs unchanged."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    def __call__(self, scene: dict[str, Any]) -> dict[str, Any]:
        return self.pipeline(fill_labels(scene, self.pipeline))

    def reseed(self, seed: Any) -> None:
        self.pipeline.reseed(seed)
