"""Benchmark submission files from per-point training-index predictions, and readers for checking them.

ScanNet (VOLT_SPEC.md §1.6): `<scene>.txt`, one raw class id per line and per point (NYU40 ids for
ScanNet-20, the tsv ids for ScanNet200), i.e. `VALID_CLASS_IDS[pred]`; the table is chosen from the
class count (20 or 200) unless given.
nuScenes lidarseg (devkit results format): `<root>/lidarseg/<split>/<lidar token>_lidarseg.bin`, uint8
per point = training index + 1 (0 is "ignore" in the benchmark, so never written), and
`<root>/<split>/submission.json` with the five boolean `meta` flags.
Writers validate the predictions (integers in [0, K)) and raise DataError naming the file otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from volt.data.scannet_classes import VALID_CLASS_IDS_20, VALID_CLASS_IDS_200, id_lookup
from volt.errors import DataError

NUSCENES_NUM_CLASSES = 16
NUSCENES_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def _labels(pred: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.ndim != 1 or not np.issubdtype(pred.dtype, np.integer):
        raise DataError(path, f"predictions must be a 1-D integer array, got {pred.dtype} {pred.shape}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise DataError(path, f"predictions must lie in [0, {num_classes - 1}], got [{pred.min()}, {pred.max()}]")
    return pred.astype(np.int64)


def scannet_class_ids(num_classes: int) -> tuple[int, ...]:
    """Raw id table for a ScanNet label space: 20 -> NYU40 ids, 200 -> ScanNet200 ids."""
    tables = {len(VALID_CLASS_IDS_20): VALID_CLASS_IDS_20, len(VALID_CLASS_IDS_200): VALID_CLASS_IDS_200}
    if num_classes not in tables:
        raise ValueError(f"no ScanNet id table for {num_classes} classes (20 or 200)")
    return tables[num_classes]


def write_scannet_txt(
    path: str | os.PathLike, pred: np.ndarray, class_ids: Sequence[int] = VALID_CLASS_IDS_20
) -> Path:
    """One raw class id per line for each point of the scene (`class_ids[pred]`)."""
    path = Path(path)
    ids = np.asarray(class_ids, dtype=np.int64)[_labels(pred, len(class_ids), path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{i}\n" for i in ids.tolist()))
    return path


def read_scannet_txt(path: str | os.PathLike, class_ids: Sequence[int] = VALID_CLASS_IDS_20) -> np.ndarray:
    """Inverse of write_scannet_txt: training indices (N,) int64; unknown ids raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "submission file not found")
    try:
        ids = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise DataError(path, f"not one integer id per line ({exc})") from exc
    table = id_lookup(tuple(class_ids)).astype(np.int64)
    inside = (ids >= 0) & (ids < len(table))
    out = np.full(ids.shape, -1, dtype=np.int64)
    out[inside] = table[ids[inside]]
    if (out < 0).any():
        raise DataError(path, f"id {ids[out < 0][0]} is not one of the {len(class_ids)} benchmark classes")
    return out


def nuscenes_bin_path(root: str | os.PathLike, token: str, split: str = "test") -> Path:
    return Path(root) / "lidarseg" / split / f"{token}_lidarseg.bin"


def write_nuscenes_bin(
    root: str | os.PathLike, token: str, pred: np.ndarray, split: str = "test",
    num_classes: int = NUSCENES_NUM_CLASSES,
) -> Path:
    """`<root>/lidarseg/<split>/<token>_lidarseg.bin` holding uint8 (pred + 1) per point."""
    path = nuscenes_bin_path(root, token, split)
    labels = _labels(pred, num_classes, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (labels + 1).astype(np.uint8).tofile(path)
    return path


def read_nuscenes_bin(path: str | os.PathLike, num_classes: int = NUSCENES_NUM_CLASSES) -> np.ndarray:
    """Inverse of write_nuscenes_bin: training indices (N,) int64; 0 or > K in the file raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "lidarseg prediction file not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size and (raw.min() < 1 or raw.max() > num_classes):
        raise DataError(path, f"values must lie in [1, {num_classes}], got [{raw.min()}, {raw.max()}]")
    return raw.astype(np.int64) - 1


def write_nuscenes_meta(root: str | os.PathLike, split: str = "test", **flags: bool) -> Path:
    """`<root>/<split>/submission.json`; `flags` override the lidar-only defaults (use_lidar=True)."""
    unknown = sorted(set(flags) - set(NUSCENES_META))
    if unknown:
        raise ValueError(f"unknown submission flags {unknown}; known: {sorted(NUSCENES_META)}")
    meta = {k: bool(flags.get(k, v)) for k, v in NUSCENES_META.items()}
    path = Path(root) / split / "submission.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta}, indent=2) + "\n")
    return path
