"""Human- and machine-readable reports of segmentation metrics: a per-class text table and a JSON file.

`format_table(metrics, title)` -> str: one row per class (IoU, accuracy, GT and predicted point counts),
classes absent from the ground truth marked, then the summary lines (mIoU by the reference definition
over all K classes, mIoU over classes present in GT, mAcc, allAcc). `metrics_dict(metrics)` -> plain
dict; `save_json(path, metrics, **extra)` writes it (plus `extra`, e.g. per-scene records, settings)
atomically. NaN anywhere in it (no class present, no ground truth) is written as JSON null. When the
metrics carry their confusion matrix it is saved too, as "confusion_matrix": K lists of K counts (rows =
ground truth, columns = prediction);
`read_confusion(data, source)` reads it back and checks it against the per-class counts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.io import atomic_write
from volt.engine.metrics import SegMetrics
from volt.errors import DataError

ABSENT = "absent from GT"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _pct(x: float) -> str:
    return "   n/a" if math.isnan(x) else f"{100.0 * x:6.2f}"


def format_table(metrics: SegMetrics, title: str | None = None) -> str:
    """Per-class table (percentages) followed by the summary; classes absent from GT are marked."""
    width = max([len("class")] + [len(n) for n in metrics.class_names])
    header = f"{'#':>3}  {'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'GT pts':>12}  {'pred pts':>12}  note"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    iou, acc, present = metrics.iou, metrics.acc, metrics.present
    for c, name in enumerate(metrics.class_names):
        note = "" if present[c] else ABSENT + (" (IoU counts 0)" if metrics.predicted[c] == 0 else "")
        lines.append(
            f"{c:>3}  {name:<{width}}  {_pct(iou[c])}  {_pct(acc[c])}  "
            f"{int(metrics.target[c]):>12}  {int(metrics.predicted[c]):>12}  {note}".rstrip()
        )
    k, k_present = metrics.num_classes, int(present.sum())
    lines += [
        "-" * len(header),
        f"{'mIoU':<12} {_pct(metrics.miou)}  mean over all {k} classes (reference definition)",
        f"{'mIoU present':<12} {_pct(metrics.miou_present)}  mean over the {k_present} classes present in GT",
        f"{'mAcc':<12} {_pct(metrics.macc)}  all {k} classes (present only: {_pct(metrics.macc_present).strip()})",
        f"{'allAcc':<12} {_pct(metrics.allacc)}  over {metrics.num_points} labelled points",
    ]
    return "\n".join(lines)


def metrics_dict(metrics: SegMetrics) -> dict[str, Any]:
    """Plain-data form: summary scores (fractions in [0, 1]) and one record per class."""
    out: dict[str, Any] = {k: _num(v) for k, v in metrics.summary().items()}
    out["num_classes"] = metrics.num_classes
    out["num_classes_present"] = int(metrics.present.sum())
    out["num_points"] = metrics.num_points
    iou, acc = metrics.iou, metrics.acc
    out["classes"] = [
        {
            "index": c,
            "name": name,
            "iou": float(iou[c]),
            "acc": float(acc[c]),
            "present": bool(metrics.present[c]),
            "intersection": int(metrics.intersection[c]),
            "union": int(metrics.union[c]),
            "target": int(metrics.target[c]),
            "predicted": int(metrics.predicted[c]),
        }
        for c, name in enumerate(metrics.class_names)
    ]
    if metrics.confusion is not None:
        out["confusion_matrix"] = np.asarray(metrics.confusion, dtype=np.int64).tolist()
    return out


def read_confusion(data: dict[str, Any], source: str | os.PathLike | None = None) -> np.ndarray:
    """(K, K) int64 confusion counts from a saved metrics dict, checked against its per-class records:
    row sums = "target", column sums = "predicted", diagonal = "intersection". DataError (naming `source`)
    when the matrix is missing or disagrees."""
    if "confusion_matrix" not in data:
        raise DataError(source, "no 'confusion_matrix' in the metrics (written by volt.engine.report.save_json "
                                "since the confusion matrix was added; re-run the evaluation)")
    m = np.asarray(data["confusion_matrix"], dtype=np.int64)
    classes = data.get("classes", [])
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classes):
        raise DataError(source, f"confusion_matrix has shape {m.shape} for {len(classes)} classes")
    for name, got in (("target", m.sum(1)), ("predicted", m.sum(0)), ("intersection", np.diag(m))):
        want = np.asarray([int(c[name]) for c in classes])
        if not np.array_equal(got, want):
            c = int(np.flatnonzero(got != want)[0])
            raise DataError(source, f"confusion_matrix disagrees with class {c}'s '{name}' count "
                                    f"({int(got[c])} vs {int(want[c])})")
    return m


def _plain(obj: Any) -> Any:
    """`obj` with NaN -> None at any depth, NumPy scalars -> Python numbers, tuples -> lists, keys -> str."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return _num(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def save_json(path: str | os.PathLike, metrics: SegMetrics | None, **extra: Any) -> Path:
    """Write {metrics_dict..., **extra} as JSON (temporary file + rename, so readers never see half); NaN
    anywhere in it (e.g. an AP without ground truth in `extra`) becomes null."""
    payload: dict[str, Any] = metrics_dict(metrics) if metrics is not None else {}
    payload.update(extra)
    matrix = payload.pop("confusion_matrix", None)
    text = json.dumps(_plain(payload), indent=2, allow_nan=False)
    if matrix is not None:  # one line per row, not one per count (K*K lines)
        rows = ",\n".join("    " + json.dumps(row, separators=(",", ":")) for row in matrix)
        head = text[:-1].rstrip()  # everything before the closing brace
        text = f'{head}{"," if payload else ""}\n  "confusion_matrix": [\n{rows}\n  ]\n}}'
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
