"""Instance checkpoints (config `task: instance`, VOLT_SPEC.md §2) in the predictor: model, superpoints, per-point ids.

An instance model (`volt.engine.instance_train.build_instance_segmentor`) has no per-point semantic head: it
predicts K masks over the points, each with a semantic class and a score
(`volt.engine.instance_test.predict_instances`: one forward pass on one point per voxel, every point mapped
back through its voxel; no fragments and no TTA). `per_point_instances(masks, classes, scores)` turns them
into per-point results: instance = rank (by score, 0 = best) of the highest-scoring mask covering the point,
label = that mask's class, confidence = its score; points under no mask (stuff classes such as wall and
floor, or nothing found) get instance -1, label -1 and confidence 0.

Superpoints, which the model pools over: a stored `superpoint` field (processed ScanNet scenes) is used; a PLY
mesh gets ScanNet's own mesh segmentation (`volt.ops.superpoint.mesh_superpoints`); any other cloud gets
`cloud_superpoints` over its k-nearest-neighbour graph, which is announced since it is not what the model
was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volt.data.scene import Scene
from volt.inference.inputs import has_faces


def superpoints(scene: Scene, source: str | os.PathLike | None, normal: np.ndarray,
                log: Callable[[str], None]) -> np.ndarray:
    """(N,) int64 superpoint ids for the scene; see the module docstring for where they come from."""
    from volt.ops.superpoint import cloud_superpoints, mesh_superpoints

    if "superpoint" in scene:
        return scene["superpoint"].astype(np.int64)
    path = Path(source) if source is not None else None
    if path is not None and path.suffix.lower() == ".ply" and path.is_file() and has_faces(path):
        from volt.data.ply_mesh import read_ply_mesh

        mesh = read_ply_mesh(path)
        log(f"notice: {path.name}: superpoints from its mesh faces (ScanNet's segmentator)")
        return np.asarray(mesh_superpoints(mesh.coord, mesh.faces), dtype=np.int64)
    log(f"notice: {path.name if path else scene.name}: no mesh, so superpoints come from a k-nearest-neighbour "
        "graph of the points (the model was trained on mesh superpoints)")
    return np.asarray(cloud_superpoints(scene["coord"], normal), dtype=np.int64)


def per_point_instances(masks: np.ndarray, classes: np.ndarray, scores: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, N) masks -> per point (labels (N,) int64, confidence (N,) float32, instance (N,) int64)."""
    n = masks.shape[1]
    if len(masks) == 0:
        return np.full(n, -1, np.int64), np.zeros(n, np.float32), np.full(n, -1, np.int64)
    order = np.argsort(-scores, kind="stable")  # rank 0 = best mask
    ranked = masks[order]  # (K, N)
    covered = ranked.any(axis=0)
    first = ranked.argmax(axis=0)  # the best-ranked mask covering each point (0 where none: masked below)
    instance = np.where(covered, first, -1).astype(np.int64)
    labels = np.where(covered, classes[order][first], -1).astype(np.int64)
    confidence = np.where(covered, scores[order][first], 0).astype(np.float32)
    return labels, confidence, instance


def predict_scene(model: nn.Module, inputs: dict[str, Any], pipeline: Any,
                  amp_dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(labels, confidence, instance, number of masks) for one scene's model inputs (with `superpoint`)."""
    from volt.engine.instance_test import predict_instances

    out = predict_instances(model, inputs, pipeline, amp_dtype)
    return (*per_point_instances(out["masks"], out["classes"], out["scores"]), len(out["masks"]))
