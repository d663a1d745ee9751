"""Inference on users' own scans: a checkpoint + a point-cloud file -> per-point class labels and confidences.

`Predictor(checkpoint, device="auto", tta=False, ...)` rebuilds the model from the checkpoint's stored
config (EMA weights when present, no teacher) and its dataset's precise-test pipeline (spec §1.6-1.7).
`predict(path_or_scene)` reads any `volt.data.readers.read_cloud` format, checks that the file holds the
fields the model was trained on (`volt.inference.inputs`), runs every test-mode fragment of every selected
TTA view, sums the softmax per original point (`volt.engine.evaluate.scene_probabilities`, the precise
test's own code) and returns a `Prediction`:

  labels (N,) int64 argmax class, confidence (N,) float32 = that class's mean probability over the votes,
  probs (N, C) float32 mean probabilities (with keep_probs=True), class_names, coord (N, 3) of the input.

Instance checkpoints (`task: instance`) also give instance (N,) int64; their labels and confidences come
from the masks (`volt.inference.instances`, where -1 = no instance and no class).

Memory: each forward pass sees one fragment (every occupied voxel once), never all points at once. With
`max_points`, a larger cloud is first cut into xy tiles of at most that many points by median splits; each
tile is grown by `tile_overlap` metres of context and predicted alone, and the probabilities of points
covered by several tiles are summed, exactly like views. `save(prediction, out_dir)` writes the files
(`volt.inference.outputs`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volt.config import config_from_dict
from volt.data.readers import read_cloud
from volt.data.scene import Scene
from volt.engine.build import build_test_segmentor, dataset_class_names, pick_dataset, test_views_for
from volt.engine.checkpoint import load_checkpoint
from volt.engine.dist import pick_device
from volt.engine.evaluate import scene_probabilities
from volt.engine.trainer import resolve_amp
from volt.inference.inputs import check_channels, model_inputs


@dataclass
class Prediction:
    name: str
    coord: np.ndarray  # (N, 3) float32, the input points (in the reader's frame: see meta["coord_offset"])
    labels: np.ndarray  # (N,) int64 class index (-1: no class, instance checkpoints only)
    confidence: np.ndarray  # (N,) float32 mean softmax probability of the class (instance: the mask's score)
    class_names: list[str]
    probs: np.ndarray | None = None  # (N, C) float32 mean probabilities, when asked for
    instance: np.ndarray | None = None  # (N,) int64 instance id, -1 none (instance checkpoints)
    meta: dict[str, Any] = field(default_factory=dict)  # source, views, fragments, tiles, seconds, ...

    @property
    def num_points(self) -> int:
        return int(self.labels.shape[0])


def split_tiles(coord: np.ndarray, max_points: int, overlap: float) -> list[np.ndarray]:
    """Point ids of xy tiles: median splits along the longer side until each core has <= max_points points,
    then every core's xy box grown by `overlap` metres. Every point lies in at least one tile."""
    pending, cores = [np.arange(len(coord))], []
    while pending:
        ids = pending.pop()
        if len(ids) <= max_points:
            cores.append(ids)
            continue
        xy = coord[ids, :2]
        axis = int(np.argmax(xy.max(axis=0) - xy.min(axis=0)))
        order = np.argsort(xy[:, axis], kind="stable")
        half = len(ids) // 2
        pending += [ids[order[:half]], ids[order[half:]]]
    tiles = []
    for ids in cores:
        lo, hi = coord[ids, :2].min(axis=0) - overlap, coord[ids, :2].max(axis=0) + overlap
        tiles.append(np.flatnonzero(((coord[:, :2] >= lo) & (coord[:, :2] <= hi)).all(axis=1)))
    return tiles


class Predictor:
    """A checkpoint ready to label point clouds; see the module docstring.

    tta: False/0/1 = one untransformed view, True = all the pipeline's views (ScanNet 13, nuScenes 10),
    N = the untransformed view + the next N-1. dataset: which configured dataset head (condition name or
    index) for joint checkpoints. fragment_batch: fragments per forward pass. max_points / tile_overlap:
    tiling of large clouds. estimate_normals: PCA normals for clouds without them (announced).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        device: str = "auto",
        tta: int | bool = False,
        *,
        dataset: str | int = 0,
        fragment_batch: int = 1,
        max_points: int | None = None,
        tile_overlap: float = 2.0,
        amp: str = "auto",
        use_ema: bool = True,
        estimate_normals: bool = False,
        keep_probs: bool = False,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ):
        self.checkpoint = Path(checkpoint)
        self.log = log or (lambda line: print(line, file=sys.stderr))
        ckpt = load_checkpoint(self.checkpoint)
        cfg = config_from_dict(ckpt.get("config") or {}, self.checkpoint)
        self.task = cfg.task
        self.dataset = ds = pick_dataset(cfg.data.datasets, dataset, self.checkpoint)
        check_channels(ds.pipeline, cfg.model.in_channels, ds.feat_start, self.checkpoint)
        self.device = pick_device(device)
        self.amp_dtype = resolve_amp(amp, cfg, self.device)
        self.class_names = dataset_class_names(ds)
        if fragment_batch < 1 or (max_points is not None and max_points < 1):
            raise ValueError("fragment_batch and max_points must be >= 1")
        self.fragment_batch, self.max_points, self.tile_overlap = fragment_batch, max_points, tile_overlap
        self.estimate_normals, self.keep_probs, self.progress = estimate_normals, keep_probs, progress
        if self.task == "instance" and (tta is True or tta not in (0, 1) or max_points is not None):
            raise ValueError("instance checkpoints predict a whole scene from one view: no tta, no max_points")
        self.model, self.weights = build_test_segmentor(cfg, ckpt, self.device, use_ema, source=self.checkpoint)
        if self.task == "instance":
            from volt.data.pipelines_instance import scannet_instance_val

            self.pipeline = scannet_instance_val(ds.segment_field, ds.condition, ds.grid_size)
            self.num_views = 1
            return
        wanted = None if tta is True else max(1, int(tta))
        # the untransformed view comes first in every test pipeline: tta=N takes it and the next N-1
        self.views, self.num_views = test_views_for(ds, cfg.model, wanted)
        if wanted is not None and wanted > self.num_views:
            raise ValueError(f"tta={tta}: the {ds.pipeline} pipeline has {self.num_views} views")

    def predict(self, source: str | os.PathLike | Scene, *, name: str | None = None, las_labels: bool = False
                ) -> Prediction:
        """Labels and confidences for every point of a file, processed scene folder or Scene."""
        start = time.perf_counter()
        scene = source if isinstance(source, Scene) else read_cloud(source, name=name, las_labels=las_labels)
        where = None if isinstance(source, Scene) else os.fspath(source)
        inputs = model_inputs(scene, self.dataset.pipeline, where, estimate=self.estimate_normals, log=self.log)
        meta = {"source": where or scene.meta.get("source"), "checkpoint": str(self.checkpoint),
                "weights": self.weights, "condition": self.dataset.condition, "task": self.task,
                "views": self.num_views, "device": str(self.device)}
        if self.task == "instance":
            from volt.inference.instances import predict_scene, superpoints

            inputs["superpoint"] = superpoints(scene, where, inputs["normal"], self.log)
            with torch.no_grad():
                labels, confidence, instance, meta["masks"] = predict_scene(self.model, inputs, self.pipeline,
                                                                            self.amp_dtype)
            mean = None
        else:
            mean, meta["fragments"], meta["tiles"] = self._semantic(inputs, scene.num_points, scene.name)
            confidence, labels = (t.numpy() for t in mean.max(1))
            instance = None
        meta["seconds"] = round(time.perf_counter() - start, 3)
        if "coord_offset" in scene.meta:
            meta["coord_offset"] = scene.meta["coord_offset"]
        label_field = self.dataset.segment_field
        if label_field in scene and (labelled := scene[label_field] >= 0).any():  # labels in the file: how many agree
            agree = labels[labelled] == scene[label_field][labelled]
            meta["file_labels"] = {"field": label_field, "points": int(labelled.sum()), "accuracy": float(agree.mean())}
        return Prediction(scene.name, scene["coord"], labels.astype(np.int64), confidence.astype(np.float32),
                          list(self.class_names), probs=mean.numpy() if self.keep_probs and mean is not None else None,
                          instance=instance, meta=meta)

    def _semantic(self, inputs: dict[str, Any], n: int, name: str) -> tuple[torch.Tensor, int, int]:
        """(mean class probabilities (N, C) over all votes, fragments run, tiles) of one cloud."""
        tiles = ([np.arange(n)] if self.max_points is None or n <= self.max_points
                 else split_tiles(inputs["coord"], self.max_points, self.tile_overlap))
        single = len(tiles) == 1
        total = None if single else torch.zeros(n, self.dataset.num_classes, dtype=torch.float32)  # vote sums
        fragments = 0
        bar = self._bar(name, len(tiles))
        with torch.no_grad():
            for ids in tiles:
                part = inputs if single else {k: (v if k == "name" else v[ids]) for k, v in inputs.items()}
                frags = self._counted(self.views(part), bar)
                probs, inverse, count, _ = scene_probabilities(
                    self.model, frags, len(ids), name, num_classes=self.dataset.num_classes, device=self.device,
                    amp_dtype=self.amp_dtype, condition=self.dataset.condition, fragment_batch=self.fragment_batch)
                probs = (probs[torch.from_numpy(inverse).to(probs.device)] if inverse is not None else probs).cpu()
                fragments += count
                if single:
                    total = probs
                else:
                    total.index_add_(0, torch.from_numpy(ids), probs)
        bar.close()
        return total / total.sum(1, keepdim=True), fragments, len(tiles)  # each vote's softmax row sums to 1

    def _bar(self, name: str, tiles: int):
        from tqdm import tqdm

        return tqdm(total=tiles * self.num_views, desc=name, unit="view", disable=not self.progress,
                    leave=False, file=sys.stderr)

    @staticmethod
    def _counted(frags: Iterator[dict], bar) -> Iterator[dict]:
        """Pass fragments through, advancing the bar once per finished view."""
        current = None
        for frag in frags:
            if current is not None and frag["view"] != current:
                bar.update(1)
            current = frag["view"]
            yield frag
        bar.update(1)

    def save(self, prediction: Prediction, out_dir: str | os.PathLike, stem: str | None = None,
             formats: Sequence[str] = ("npy", "ply")) -> list[Path]:
        """Write `prediction` as `formats` (npy, txt, ply) plus a JSON summary; returns the paths written."""
        from volt.inference.outputs import save_prediction

        return save_prediction(prediction, out_dir, stem, formats, dataset=self.dataset.pipeline)
