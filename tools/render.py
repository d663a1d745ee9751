"""Pictures of a scene and of results: PNGs (no display, GPU or OpenGL needed) and a self-contained HTML viewer.

    python tools/render.py data/scannet/val/scene0011_00 --pred outputs/run/test_val/scene0011_00_pred.npy \
        --metrics outputs/run/test_val/metrics.json --run outputs/run --out outputs/run/pictures
    python tools/render.py --metrics outputs/run/test_val/metrics.json --out pictures     # charts only

Writes to --out (and prints each path):
  <scene>_scene.png    ground truth | prediction | errors (wrong points red) | instances (+ the scan's colours),
                       top-down and oblique, with the class legend
  <scene>_viewer.html  3D viewer (orbit/zoom, a button per colouring, legend); opens from disk, no network
  iou.png, confusion.png   per-class IoU bars and the row-normalized confusion matrix (from --metrics)
  curves.png           training curves (from --run's metrics.jsonl)
--open3d also opens a native open3d window when open3d is installed and a display exists (never required).
Exit code 0 on success, 2 on unusable inputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import volt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.errors import DataError, MissingExtraError

if TYPE_CHECKING:
    import numpy as np

    from volt.data.scene import Scene


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", nargs="?", type=Path, help="processed scene folder (coord.npy, meta.json, ...)")
    ap.add_argument("--pred", type=Path, help="per-point predicted class indices (.npy, one per scene point)")
    ap.add_argument("--metrics", type=Path, help="an evaluation's metrics.json (IoU bars, confusion matrix)")
    ap.add_argument("--run", type=Path, help="a training run folder (training curves from metrics.jsonl)")
    ap.add_argument("--out", type=Path, default=Path("outputs/pictures"), help="output folder")
    ap.add_argument("--field", help="ground-truth field of the scene (default: the one matching --metrics' "
                                    "classes, else segment20 / segment)")
    ap.add_argument("--max-points", type=int, default=200_000, help="points kept in the HTML viewer")
    ap.add_argument("--open3d", action="store_true", help="also open an open3d window (needs open3d + display)")
    args = ap.parse_args(argv)
    if args.scene is None and args.metrics is None and args.run is None:
        ap.error("give a scene folder, --metrics and/or --run")

    from volt.viz.charts import load_metrics, training_curves
    from volt.viz.pictures import load_scene_layers, metric_charts, write_scene_pictures

    written: list[Path] = []
    scene = layers = None
    try:
        names = None
        if args.metrics is not None:
            data, _ = load_metrics(args.metrics)
            names = [str(c["name"]) for c in data["classes"]]
            written += metric_charts(data, args.out, title=f"per-class IoU: {args.metrics.parent.name}")
            if "confusion_matrix" not in data:
                print(f"note: {args.metrics} has no confusion matrix (older evaluation): no confusion.png")
        if args.scene is not None:
            # Read and coloured once: the pictures and the optional open3d window show the same layers.
            scene, layers, legends = load_scene_layers(args.scene, args.pred, class_names=names, field=args.field)
            written += write_scene_pictures(scene, layers, legends, args.out, max_points=args.max_points)
        if args.run is not None:
            written.append(training_curves(args.run, args.out / "curves.png"))
    except (DataError, MissingExtraError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if args.open3d and scene is not None:
        show_window(scene, layers)
    return 0


def show_window(scene: Scene, layers: dict[str, np.ndarray]) -> None:
    """The optional open3d window on the scene's layers; explains and returns when it cannot open."""
    from volt.viz.o3d import open3d_unavailable, show_open3d
    from volt.viz.pictures import LAYER_LABELS

    reason = open3d_unavailable()
    if reason:
        print(f"open3d window skipped: {reason}; open the HTML viewer instead")
        return
    show_open3d(scene["coord"], {LAYER_LABELS.get(k, k): v for k, v in layers.items()}, title=scene.name,
                normal=scene.arrays.get("normal"))


if __name__ == "__main__":
    sys.exit(main())
