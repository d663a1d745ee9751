"""From files on disk to pictures: a processed scene folder (+ per-point predictions) -> a panel PNG and an
HTML viewer page (`scene_pictures`; or `load_scene_layers` then `write_scene_pictures`, for callers that reuse
the layers); an evaluation's metrics.json -> IoU bars and confusion heat map; a run folder -> training
curves. `demo_pictures` does all of it for one scene of a finished run (what tools/demo.py shows).

Colourings ("layers"), by URL key: color (the scan's RGB), intensity (LiDAR strength), gt, pred, errors
(wrong points red), instances; height when a scene has nothing else. Ground truth is read from the scene's
`segment*` field whose class names match the evaluation (or the `field` given).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.io import read_scene
from volt.data.scene import Scene
from volt.errors import DataError
from volt.viz.charts import confusion_heatmap, iou_bar_chart, load_metrics, training_curves
from volt.viz.html import write_viewer
from volt.viz.palette import color_labels, instance_colors, palette
from volt.viz.render import ERROR_LEGEND, class_legend, error_colors, render_panels

LAYER_LABELS = {"color": "color", "intensity": "intensity", "height": "height", "gt": "ground truth",
                "pred": "prediction", "errors": "errors", "instances": "instances"}


def ramp(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (N, 3) uint8 on a dark-blue, teal, yellow ramp (readable on white and dark)."""
    anchors = np.array([[50, 40, 130], [30, 160, 150], [250, 225, 60]], dtype=np.float64)
    x = np.clip(np.asarray(t, dtype=np.float64).reshape(-1), 0, 1) * 2
    i = np.minimum(x.astype(np.int64), 1)
    f = (x - i)[:, None]
    return np.round(anchors[i] * (1 - f) + anchors[i + 1] * f).astype(np.uint8)


def label_field(scene: Scene, class_names: list[str] | None = None) -> str | None:
    """The scene's class-label field: the one whose class names (meta.json) equal `class_names`, else
    segment20, segment, or the first segment* field; None when the scene has no labels."""
    fields = sorted(k for k in scene.arrays if k.startswith("segment"))
    named = scene.meta.get("classes", {})
    if class_names is not None:
        for f in fields:
            if list(named.get(f, [])) == list(class_names):
                return f
    for f in ("segment20", "segment"):
        if f in fields:
            return f
    return fields[0] if fields else None


def scene_layers(
    scene: Scene, pred: np.ndarray | None = None, class_names: list[str] | None = None, field: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, list], list[str]]:
    """(layers key -> (N, 3) uint8, legends key -> entries, class names) for a scene and its predictions."""
    n = scene.num_points
    if field is not None and field not in scene:
        labelled = sorted(k for k in scene.arrays if k.startswith("segment"))
        raise DataError(None, f"no label field '{field}' in scene {scene.name} (it has {labelled})")
    field = field or label_field(scene, class_names)
    gt = np.asarray(scene[field]).astype(np.int64) if field else None
    if class_names is None:
        class_names = list(scene.meta.get("classes", {}).get(field, []))
    if not class_names:
        top = max(int(gt.max()) if gt is not None and len(gt) else -1, int(pred.max()) if pred is not None else -1)
        class_names = [f"class {i}" for i in range(top + 1)]
    colors = palette(class_names, scene.meta.get("dataset"))
    layers: dict[str, np.ndarray] = {}
    if "color" in scene:
        layers["color"] = np.asarray(scene["color"], dtype=np.uint8)
    elif "strength" in scene:
        s = np.asarray(scene["strength"], dtype=np.float64).reshape(-1)
        hi = float(np.percentile(s, 99)) or 1.0  # a few bright returns would otherwise darken everything
        layers["intensity"] = ramp(np.sqrt(np.clip(s / hi, 0, 1)))  # sqrt: most returns are weak
    if pred is not None:
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        if len(pred) != n:
            raise DataError(None, f"{len(pred)} predictions for the scene's {n} points")
    used = [a for a in (gt, pred) if a is not None]
    legend = class_legend(class_names, colors, used)
    legends: dict[str, list] = {}
    if gt is not None:
        layers["gt"], legends["gt"] = color_labels(gt, colors), legend
    if pred is not None:
        layers["pred"], legends["pred"] = color_labels(pred, colors), legend
    if gt is not None and pred is not None:
        layers["errors"] = error_colors(gt, pred)
        legends["errors"] = list(ERROR_LEGEND)
    if "instance" in scene:
        layers["instances"] = instance_colors(scene["instance"])
    if not layers:  # bare coordinates: colour by height
        z = np.asarray(scene["coord"], dtype=np.float64)[:, 2]
        layers["height"] = ramp((z - z.min()) / max(float(np.ptp(z)), 1e-9))
    return layers, legends, class_names


def load_scene_layers(
    scene_dir: str | os.PathLike,
    pred: np.ndarray | str | os.PathLike | None = None,
    class_names: list[str] | None = None,
    field: str | None = None,
) -> tuple[Scene, dict[str, np.ndarray], dict[str, list]]:
    """(scene, layers, legends) of a processed scene folder and its predictions (an array or a .npy file), as
    `scene_layers` makes them; unusable inputs raise DataError naming the folder or the file."""
    scene = read_scene(scene_dir)
    if pred is not None and not isinstance(pred, np.ndarray):
        try:
            pred = np.load(pred, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(pred, f"cannot read predictions ({exc})") from exc
    try:
        layers, legends, _ = scene_layers(scene, pred, class_names, field)
    except DataError as exc:
        raise DataError(scene_dir, exc.problem) from exc
    return scene, layers, legends


def write_scene_pictures(
    scene: Scene,
    layers: dict[str, np.ndarray],
    legends: dict[str, list],
    out_dir: str | os.PathLike,
    max_points: int = 200_000,
    panel_px: int = 360,
) -> list[Path]:
    """<out_dir>/<scene>_scene.png (panels x top-down/oblique views + legend) and <scene>_viewer.html from
    `load_scene_layers`' results."""
    normal = scene.arrays.get("normal")
    out = Path(out_dir)
    legend = list(legends.get("gt", legends.get("pred", []))) + list(legends.get("errors", []))
    png = render_panels(scene["coord"], {LAYER_LABELS.get(k, k): v for k, v in layers.items()},
                        out / f"{scene.name}_scene.png", legend=legend, title=scene.name, panel_px=panel_px,
                        normal=normal)
    default = "pred" if "pred" in layers else None  # the first thing to see; errors is one click away
    page = write_viewer(out / f"{scene.name}_viewer.html", scene["coord"], layers,
                        labels={k: LAYER_LABELS.get(k, k) for k in layers}, legends=legends, title=scene.name,
                        default=default, normal=normal, max_points=max_points)
    return [png, page]


def scene_pictures(
    scene_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    pred: np.ndarray | str | os.PathLike | None = None,
    class_names: list[str] | None = None,
    field: str | None = None,
    max_points: int = 200_000,
    panel_px: int = 360,
) -> list[Path]:
    """<out_dir>/<scene>_scene.png (panels x top-down/oblique views + legend) and <scene>_viewer.html."""
    scene, layers, legends = load_scene_layers(scene_dir, pred, class_names, field)
    return write_scene_pictures(scene, layers, legends, out_dir, max_points, panel_px)


def metric_charts(metrics_json: str | os.PathLike | dict[str, Any], out_dir: str | os.PathLike,
                  title: str | None = None) -> list[Path]:
    """<out_dir>/iou.png and, when the JSON holds the confusion matrix, <out_dir>/confusion.png."""
    data, _ = load_metrics(metrics_json)
    out = Path(out_dir)
    written = [iou_bar_chart(data, out / "iou.png", title=title)]
    if "confusion_matrix" in data:
        written.append(confusion_heatmap(data, out / "confusion.png"))
    return written


def demo_pictures(
    run_dir: str | os.PathLike,
    scene_dir: str | os.PathLike,
    pred_npy: str | os.PathLike,
    metrics_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_points: int = 200_000,
) -> list[Path]:
    """Everything for one tested scene of a finished run: scene PNG + viewer page, IoU bars, confusion heat
    map (the metrics must hold the confusion matrix) and training curves. Returns the written paths."""
    data, path = load_metrics(metrics_json)
    if "confusion_matrix" not in data:
        raise DataError(path, "no confusion matrix: the metrics were written before volt.engine.report saved it")
    names = [str(c["name"]) for c in data["classes"]]
    out = Path(out_dir)
    written = scene_pictures(scene_dir, out, pred_npy, class_names=names, max_points=max_points)
    written += metric_charts(data, out, title=f"per-class IoU: {Path(metrics_json).parent.name}")
    written.append(training_curves(run_dir, out / "curves.png"))
    return written
