"""Writing a `Prediction` to disk in formats other tools read.

`save_prediction(prediction, out_dir, stem, formats, dataset)` writes, for `stem` (default: the scene name):

- npy: `{stem}_labels.npy` (N,) int32, `{stem}_confidence.npy` (N,) float32, and when present
  `{stem}_instance.npy` (N,) int32 and `{stem}_probs.npy` (N, C) float32;
- txt: `{stem}.txt`, comment lines (classes, coordinate offset) then a header `x y z label confidence
  [instance]` and one row per point, in the input's own coordinates (any far-coordinate shift undone) —
  `volt.data.readers.read_cloud` reads it back with the labels as `segment`;
- ply: `{stem}.ply`, binary, the points colored by class (`volt.viz.palette`, the dataset's customary
  colors when it has them) with `label` (and `instance`) properties; coordinates as the reader gave them
  (see `coord_offset` in the summary);
- always `{stem}.json`: the class table with point counts, and how the prediction was made (meta).
Every file is written to a temporary sibling and renamed (`volt.data.io.atomic_write`), so none is ever
half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from volt.data.io import atomic_write
from volt.data.ply_cloud import write_ply
from volt.viz.palette import color_labels, palette

if TYPE_CHECKING:
    from volt.inference.predictor import Prediction

FORMATS = ("npy", "txt", "ply")


def _write_txt(path: Path, p: Prediction) -> Path:
    offset = np.asarray(p.meta.get("coord_offset", (0.0, 0.0, 0.0)), dtype=np.float64)
    columns = [p.coord.astype(np.float64) + offset, p.labels[:, None], p.confidence[:, None]]
    names, fmt = ["x", "y", "z", "label", "confidence"], ["%.6f"] * 3 + ["%d", "%.5f"]
    if p.instance is not None:
        columns.append(p.instance[:, None])
        names.append("instance")
        fmt.append("%d")
    classes = ", ".join(f"{i} {n}" for i, n in enumerate(p.class_names))
    # The header is a plain (non-comment) line: read_cloud takes a first non-numeric line as column names.
    header = f"# classes: {classes}\n{' '.join(names)}"

    def write(tmp: Path) -> None:
        np.savetxt(tmp, np.hstack(columns), fmt=fmt, header=header, comments="")

    return atomic_write(path, write)


def _summary(p: Prediction) -> dict:
    labelled = p.labels >= 0  # -1: no class (instance task)
    k = len(p.class_names)
    counts = np.bincount(p.labels[labelled], minlength=k)
    # one pass over the points for every class's confidence sum (float64); a class without points gets None
    sums = np.bincount(p.labels[labelled], weights=p.confidence[labelled].astype(np.float64), minlength=k)
    classes = [{"id": i, "name": n, "points": int(counts[i]),
                "mean_confidence": float(sums[i] / counts[i]) if counts[i] else None}
               for i, n in enumerate(p.class_names)]
    out = {"name": p.name, "points": p.num_points, "unlabelled": int((p.labels < 0).sum()), "classes": classes,
           **p.meta}
    if p.instance is not None:
        out["instances"] = len(np.unique(p.instance[p.instance >= 0]))
    return out


def save_prediction(
    prediction: Prediction,
    out_dir: str | os.PathLike,
    stem: str | None = None,
    formats: Sequence[str] = ("npy", "ply"),
    dataset: str | None = None,
) -> list[Path]:
    """Write `prediction` under `out_dir` as the chosen formats + the JSON summary; returns the paths."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown output formats {unknown}; choose from {list(FORMATS)}")
    p, out = prediction, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or p.name
    written: list[Path] = []
    if "npy" in formats:
        arrays = {"labels": p.labels.astype(np.int32), "confidence": p.confidence.astype(np.float32)}
        if p.instance is not None:
            arrays["instance"] = p.instance.astype(np.int32)
        if p.probs is not None:
            arrays["probs"] = p.probs.astype(np.float32)
        for key, value in arrays.items():
            written.append(atomic_write(out / f"{stem}_{key}.npy", lambda tmp, v=value: np.save(tmp, v)))
    if "txt" in formats:
        written.append(_write_txt(out / f"{stem}.txt", p))
    if "ply" in formats:
        colors = color_labels(p.labels, palette(p.class_names, dataset))
        fields = {"coord": p.coord, "color": colors, "segment": p.labels}
        if p.instance is not None:
            fields["instance"] = p.instance
        written.append(write_ply(out / f"{stem}.ply", fields))  # write_ply is atomic itself
    text = json.dumps(_summary(p), indent=1)
    written.append(atomic_write(out / f"{stem}.json", lambda tmp: tmp.write_text(text)))
    return written
