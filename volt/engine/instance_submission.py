"""ScanNet benchmark submission files for 3D semantic instance prediction, and a reader to check them.

Layout (the benchmark's documented format): `<out_dir>/<scene>.txt` with one line per predicted instance,
`predicted_masks/<scene>_<kkk>.txt <label id> <confidence>`, and `<out_dir>/predicted_masks/<scene>_<kkk>.txt`
holding one integer per point of the scene in mesh-vertex order (1 = in the instance, 0 = not). Label ids
are raw benchmark ids (NYU40 for ScanNet-20): `class_to_nyu40[semantic id]`. Masks are written before the
scene's index file, so an index file always points at complete masks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.scannet_classes import VALID_CLASS_IDS_20
from volt.errors import DataError

MASK_DIR = "predicted_masks"


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    # "0\n"/"1\n" per point built as bytes in one go: a scene has ~10^5 points and ~10^2 instances.
    text = np.empty((len(mask), 2), dtype=np.uint8)
    text[:, 0] = ord("0") + mask
    text[:, 1] = ord("\n")
    path.write_bytes(text.tobytes())


def write_instance_submission(
    out_dir: str | os.PathLike, scene_name: str, pred_masks: Any, pred_classes: Any, pred_scores: Any,
    class_to_nyu40: Sequence[int] = VALID_CLASS_IDS_20,
) -> Path:
    """Write one scene's instances; returns the path of `<scene>.txt`. Classes are semantic ids."""
    out_dir = Path(out_dir)
    index = out_dir / f"{scene_name}.txt"
    if not scene_name or os.sep in scene_name or "/" in scene_name or " " in scene_name:
        raise DataError(index, f"scene name {scene_name!r} must be a plain file name without spaces")
    masks, classes = _array(pred_masks), _array(pred_classes)
    scores = _array(pred_scores).astype(np.float64)
    if masks.ndim != 2 or classes.shape != (len(masks),) or scores.shape != (len(masks),):
        raise DataError(index, f"expected pred_masks (P, N), pred_classes (P,), pred_scores (P,); got "
                               f"{masks.shape}, {classes.shape}, {scores.shape}")
    if not np.issubdtype(classes.dtype, np.integer):
        raise DataError(index, f"pred_classes must be integer semantic ids, got {classes.dtype}")
    if len(classes) and (classes.min() < 0 or classes.max() >= len(class_to_nyu40)):
        raise DataError(index, f"pred_classes must lie in [0, {len(class_to_nyu40) - 1}]")
    if not np.isfinite(scores).all():
        raise DataError(index, "pred_scores must be finite")
    labels = np.asarray(class_to_nyu40, dtype=np.int64)[classes]
    (out_dir / MASK_DIR).mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(len(masks)):
        rel = f"{MASK_DIR}/{scene_name}_{k:03d}.txt"
        _write_mask(out_dir / rel, (masks[k] != 0).astype(np.uint8))
        lines.append(f"{rel} {int(labels[k])} {float(scores[k])!r}\n")  # repr: scores round-trip exactly
    tmp = index.with_suffix(".txt.tmp")
    tmp.write_text("".join(lines))
    tmp.replace(index)
    return index


def read_instance_submission(
    out_dir: str | os.PathLike, scene_name: str, class_to_nyu40: Sequence[int] = VALID_CLASS_IDS_20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of write_instance_submission: masks bool (P, N), semantic classes int64 (P,), scores (P,)."""
    out_dir = Path(out_dir)
    index = out_dir / f"{scene_name}.txt"
    if not index.is_file():
        raise DataError(index, "submission index file not found")
    lookup = {int(raw): c for c, raw in enumerate(class_to_nyu40)}
    masks, classes, scores = [], [], []
    for ln, line in enumerate(index.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(index, f"line {ln}: expected '<mask path> <label id> <confidence>', got {line!r}")
        try:
            raw, score = int(parts[1]), float(parts[2])
        except ValueError as exc:
            raise DataError(index, f"line {ln}: bad label id or confidence ({exc})") from exc
        if raw not in lookup:
            raise DataError(index, f"line {ln}: label id {raw} is not one of the benchmark classes")
        mask_path = out_dir / parts[0]
        if not mask_path.is_file():
            raise DataError(mask_path, f"mask file named on line {ln} of {index.name} not found")
        try:
            mask = np.loadtxt(mask_path, dtype=np.int64, ndmin=1)
        except ValueError as exc:
            raise DataError(mask_path, f"not one integer per line ({exc})") from exc
        if masks and len(mask) != len(masks[0]):
            raise DataError(mask_path, f"{len(mask)} lines, but the scene's first mask has {len(masks[0])}")
        masks.append(mask != 0)
        classes.append(lookup[raw])
        scores.append(score)
    n = len(masks[0]) if masks else 0
    return (np.stack(masks) if masks else np.zeros((0, n), dtype=bool),
            np.asarray(classes, dtype=np.int64), np.asarray(scores, dtype=np.float64))
