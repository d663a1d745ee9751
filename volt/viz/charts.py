"""Charts of results: per-class IoU bars and a normalized confusion-matrix heat map from an evaluation's
metrics JSON (`volt.engine.report.save_json`), and training curves from a run's `metrics.jsonl`
(`volt.engine.runlog.RunLog`). Each function writes one PNG and returns its path; matplotlib (the `viz`
extra) is imported lazily and drawn on an Agg canvas, so no display is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from volt.engine.report import read_confusion
from volt.errors import DataError
from volt.viz.figure import agg_figure, save_figure
from volt.viz.palette import palette


def load_metrics(source: str | os.PathLike | dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(metrics dict, its path or None) from a metrics.json path or an already loaded dict."""
    if isinstance(source, dict):
        data, path = source, None
    else:
        path = os.fspath(source)
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(path, f"cannot read metrics JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise DataError(path, "not a metrics JSON: no per-class records under 'classes'")
    return data, path


def iou_bar_chart(
    metrics: str | os.PathLike | dict[str, Any], out_path: str | os.PathLike, title: str | None = None,
    dataset: str | None = None,
) -> Path:
    """Horizontal bars of IoU per class (in class colours), the mIoU as a dashed line; classes absent from
    the ground truth are hatched and labelled so."""
    data, _ = load_metrics(metrics)
    classes = data["classes"]
    names = [str(c["name"]) for c in classes]
    iou = np.array([float(c["iou"]) for c in classes]) * 100
    present = np.array([bool(c.get("present", True)) for c in classes])
    colors = palette(names, dataset) / 255.0
    fig = agg_figure(7.0, 0.8 + 0.28 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    bars = ax.barh(y, iou, color=colors, edgecolor="#333333", linewidth=0.5)
    for bar, ok in zip(bars, present):
        if not ok:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    for yi, v, ok in zip(y, iou, present):
        ax.text(min(v + 1, 101), yi, f"{v:.1f}" + ("" if ok else "  (absent from GT)"), va="center", fontsize=8)
    miou = data.get("mIoU")
    if miou is not None:
        ax.axvline(100 * miou, color="#222222", linestyle="--", linewidth=1, label=f"mIoU {100 * miou:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 125)
    ax.set_xticks(np.arange(0, 101, 20))
    ax.set_xlabel("IoU (%)")
    ax.set_title(title or "per-class IoU", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_path)


def normalized_confusion(matrix: np.ndarray) -> np.ndarray:
    """Rows (ground truth) divided by their sums: entry (i, j) = share of class i's points predicted j.
    Rows of classes absent from the ground truth are NaN."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, m / rows, np.nan)


def confusion_heatmap(
    metrics: str | os.PathLike | dict[str, Any], out_path: str | os.PathLike, title: str | None = None,
) -> Path:
    """Heat map of the row-normalized confusion matrix (rows = ground truth, columns = prediction), with the
    percentages written in the cells for up to 25 classes; absent classes' rows are grey."""
    data, path = load_metrics(metrics)
    counts = read_confusion(data, path)
    names = [str(c["name"]) for c in data["classes"]]
    norm = normalized_confusion(counts)
    k = len(names)
    side = min(2.5 + 0.42 * k, 22.0)  # ScanNet200: 200 rows still fit one readable picture
    font = max(3.0, min(7.0, 280.0 / k))
    fig = agg_figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    cmap = colormaps["Blues"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="share of the class's points")
    if k <= 25:
        for i, j in zip(*np.nonzero(counts)):
            v = norm[i, j]
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if v > 0.55 else "#222222")
    ax.set_xticks(np.arange(k), names, rotation=90, fontsize=font)
    ax.set_yticks(np.arange(k), names, fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title or f"confusion matrix (rows normalized; {int(counts.sum())} points)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path)


def read_run_log(run: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Records of a run's metrics.jsonl (the run folder or the file itself) grouped by "kind"."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(path, "no metrics.jsonl (written by a training run)")
    kinds: dict[str, list[dict[str, Any]]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(path, f"line {n} is not JSON ({exc})") from exc
        kinds.setdefault(str(record.get("kind", "train")), []).append(record)
    return kinds


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "step" in r]
    return (np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)) if pts else (np.zeros(0),) * 2


def _last_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_step = {r.get("step", 0): r for r in records}  # a later record of the same step replaces the earlier
    return [by_step[k] for k in sorted(by_step)]


def training_curves(run: str | os.PathLike, out_path: str | os.PathLike, title: str | None = None) -> Path:
    """Three panels against the optimizer step: loss (train, and validation when logged), accuracy/mIoU
    (train accuracy, validation mIoU and allAcc), and the learning rate. Restarted runs (resumed from a
    checkpoint) may log a step twice; the later record wins."""
    kinds = read_run_log(run)
    train, val = kinds.get("train", []), kinds.get("val", [])
    if not train and not val:
        raise DataError(run, "metrics.jsonl holds no train or val records")
    train, val = _last_per_step(train), _last_per_step(val)
    fig = agg_figure(13.0, 3.6)
    # One dataset logs "mIoU"; joint training logs "<condition>/mIoU" per dataset.
    miou_keys = sorted({k for r in val for k in r if k == "mIoU" or k.endswith("/mIoU")})
    panels = [
        ("loss", [(train, "loss", "train loss"), (val, "loss", "val loss")]),
        ("score", [(train, "train_acc", "train accuracy"), (val, "allAcc", "val allAcc")]
         + [(val, k, f"val {k}") for k in miou_keys]),
        ("learning rate", [(train, "lr", "lr")]),
    ]
    for i, (ylabel, lines) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        drawn = 0
        for records, key, label in lines:
            x, y = _series(records, key)
            if len(x):
                ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, linewidth=1.2, label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#888888")
        elif ylabel != "learning rate":
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    key = "metric" if any("metric" in r for r in val) else "mIoU"
    best = max((r[key] for r in val if isinstance(r.get(key), (int, float))), default=None)
    head = title or f"training curves: {Path(run)}"
    fig.suptitle(head + (f"  (best val mIoU {100 * best:.1f})" if best is not None else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path)
