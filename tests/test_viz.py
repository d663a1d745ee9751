"""volt.viz and tools/render.py: palettes, the NumPy rasterizer (pixels differ exactly where predictions are
wrong), PNG panels and charts (confusion matrix consistent with the evaluation's counts), training curves
from a RunLog, the HTML viewer's embedded data, and the CLI. The browser check is tests/test_viewer_browser.py.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, load_tool

from volt.data.io import write_scene
from volt.data.scannet_classes import CLASS_NAMES_20
from volt.data.scene import Scene
from volt.engine.metrics import ConfusionMatrix
from volt.engine.report import read_confusion, save_json
from volt.engine.runlog import RunLog
from volt.errors import DataError
from volt.viz import color_labels, generic_palette, instance_colors, palette
from volt.viz.html import write_viewer
from volt.viz.o3d import open3d_unavailable
from volt.viz.render import CORRECT_COLOR, UNLABELLED_COLOR, WRONG_COLOR, error_colors, paint, project


def read_png(path: Path) -> np.ndarray:
    image = pytest.importorskip("matplotlib.image")
    return (image.imread(path)[..., :3] * 255).round().astype(np.int16)


def scene_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A floor (class 1) and a wall (class 0) with a box (class 3) on the floor; jittered grid points."""
    rng = np.random.default_rng(seed)
    g = np.linspace(0, 2, 50)
    a, b = (x.reshape(-1) for x in np.meshgrid(g, g))
    box = rng.uniform([0.8, 0.8, 0.0], [1.2, 1.2, 0.4], (1500, 3))
    coord = np.concatenate([np.stack([a, b, 0 * a], 1), np.stack([a, 2 + 0 * a, b], 1), box])
    coord += rng.normal(0, 0.002, coord.shape)
    gt = np.repeat([1, 0, 3], [len(a), len(a), len(box)]).astype(np.int32)
    gt[:40] = -1  # some unlabelled points
    return {"coord": coord.astype(np.float32), "color": rng.integers(0, 255, (len(coord), 3), dtype=np.uint8),
            "segment20": gt, "instance": np.repeat([0, 1, 2], [len(a), len(a), len(box)]).astype(np.int32)}


def wrong_prediction(gt: np.ndarray) -> np.ndarray:
    pred = np.where(gt < 0, 1, gt).astype(np.int64)
    pred[gt == 3] = 4  # the box predicted as the wrong class
    pred[::97] = 2  # and a scatter of wrong points elsewhere
    return pred


# --- palettes -----------------------------------------------------------------------------------------------
def test_palettes_customary_and_generic():
    scannet = palette(20, "scannet")
    assert scannet.dtype == np.uint8 and scannet.shape == (20, 3)
    assert tuple(scannet[0]) == (174, 199, 232) and tuple(scannet[19]) == (82, 84, 163)  # wall, otherfurniture
    assert np.array_equal(palette(CLASS_NAMES_20), scannet)  # recognised by the names alone
    assert tuple(palette(16, "nuscenes")[3]) == (255, 158, 0)  # car
    assert tuple(palette(16, "nuscenes")[10]) == (0, 207, 191)  # driveable_surface
    assert not np.array_equal(palette(21, "scannet")[:20], scannet)  # a count mismatch: generic colours
    generic = palette(40).astype(np.int64)
    assert np.array_equal(generic, generic_palette(40)) and len(np.unique(generic, axis=0)) == 40
    dist = np.sqrt(((generic[:, None] - generic[None]) ** 2).sum(-1))[~np.eye(40, dtype=bool)]
    assert dist.min() > 20
    neighbours = np.sqrt(((generic[1:] - generic[:-1]) ** 2).sum(-1))
    assert neighbours.min() > 80  # consecutive class indices are clearly different


def test_color_labels_and_instances():
    pal = palette(3)
    out = color_labels(np.array([0, 2, -1, 3, 7]), pal, ignore_color=(1, 2, 3))
    assert np.array_equal(out[:2], pal[[0, 2]]) and (out[2:] == (1, 2, 3)).all()
    ids = np.array([-1, 0, 5, 5, 12])
    c = instance_colors(ids)
    assert tuple(c[0]) == (128, 128, 128) and np.array_equal(c[2], c[3])
    assert np.array_equal(instance_colors(np.array([5]))[0], c[2])  # an id's colour ignores the other ids
    assert len(np.unique(instance_colors(np.arange(30)), axis=0)) == 30


# --- rasterizer ---------------------------------------------------------------------------------------------
def test_project_keeps_nearest_point():
    coord = np.array([[0, 0, 0.0], [0, 0, 1.0], [1, 1, 0.5], [-1, -1, 0.5]])
    r = project(coord, "top", (40, 40), point_px=1)
    drawn = set(np.unique(r.index)) - {-1}
    assert drawn == {1, 2, 3}  # point 0 lies under point 1, which is nearer to a viewer looking down
    assert r.coverage == pytest.approx(3 / 1600)
    r_side = project(coord, (0.0, 0.0), (40, 40), point_px=1)  # from -y: both stacked points are visible
    assert {0, 1} <= set(np.unique(r_side.index))


def test_point_spacing_and_auto_splats():
    from volt.viz.render import point_spacing

    g = np.linspace(0, 2, 51)  # spacing 0.04
    a, b = (x.reshape(-1) for x in np.meshgrid(g, g))
    plane = np.stack([a, b, 0 * a], 1)
    assert point_spacing(plane) == pytest.approx(0.04, rel=0.3)
    assert point_spacing(plane * 10) == pytest.approx(0.4, rel=0.3)
    # Auto-sized splats close the holes of the grid seen from above; 1-pixel splats do not.
    assert project(plane, "top", (300, 300)).coverage > 0.8 > project(plane, "top", (300, 300), point_px=1).coverage
    # A spacing computed once by the caller gives the same raster; a given spacing is what sizes the splats.
    auto = project(plane, "oblique", (300, 300))
    assert np.array_equal(project(plane, "oblique", (300, 300), spacing=point_spacing(plane)).index, auto.index)
    tiny = project(plane, "top", (300, 300), spacing=1e-9).index
    assert np.array_equal(tiny, project(plane, "top", (300, 300), point_px=1).index)


def test_render_pixels_differ_exactly_where_prediction_is_wrong():
    s = scene_arrays()
    gt, pred = s["segment20"], wrong_prediction(s["segment20"])
    pal = palette(20, "scannet")
    for view in ("top", "oblique"):
        raster = project(s["coord"], view, (200, 200))
        assert raster.coverage > 0.3
        img_gt, img_pred = paint(raster, color_labels(gt, pal)), paint(raster, color_labels(pred, pal))
        changed = (img_gt != img_pred).any(-1)
        shown = raster.index >= 0
        expected = np.zeros_like(changed)
        expected[shown] = pred[raster.index[shown]] != gt[raster.index[shown]]
        assert expected.sum() > 100 and not expected[shown].all()
        assert np.array_equal(changed, expected)
        err = paint(raster, error_colors(gt, pred), shade=0.0)
        scored_wrong = np.zeros_like(changed)
        scored_wrong[shown] = (pred != gt)[raster.index[shown]] & (gt >= 0)[raster.index[shown]]
        assert np.array_equal((err == WRONG_COLOR).all(-1), scored_wrong)


def test_error_colors():
    out = error_colors(np.array([0, 1, -1, 2]), np.array([0, 2, 1, 2]))
    assert [tuple(c) for c in out] == [CORRECT_COLOR, WRONG_COLOR, UNLABELLED_COLOR, CORRECT_COLOR]
    with pytest.raises(DataError):
        error_colors(np.zeros(3), np.zeros(4))


def test_render_panels_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from volt.viz import render
    from volt.viz.render import class_legend, render_panels

    calls = []  # the spacing is the same for every view: estimated once per figure
    monkeypatch.setattr(render, "point_spacing", lambda c, f=render.point_spacing: calls.append(1) or f(c))

    s = scene_arrays()
    gt, pred = s["segment20"], wrong_prediction(s["segment20"])
    pal = palette(20, "scannet")
    layers = {"ground truth": color_labels(gt, pal), "prediction": color_labels(pred, pal),
              "errors": error_colors(gt, pred)}
    legend = class_legend(CLASS_NAMES_20, pal, [gt, pred], errors=True)
    assert [name for name, _ in legend][:4] == ["wall", "floor", "cabinet", "bed"] and len(legend) == 5 + 3
    png = render_panels(s["coord"], layers, tmp_path / "scene.png", legend=legend, title="t", panel_px=200)
    img = read_png(png)
    assert img.shape[:2] == (400 + 40, 4 * 200)  # 2 views x (3 panels + legend), title strip
    red = (np.abs(img - np.array(WRONG_COLOR)).sum(-1) < 90)
    assert red.sum() > 200  # the errors panel shows the wrong points
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    assert len(calls) == 1


# --- metrics JSON, charts -----------------------------------------------------------------------------------
def evaluation(tmp_path: Path) -> Path:
    cm = ConfusionMatrix(20, CLASS_NAMES_20)
    for seed in (0, 1):  # two scenes accumulated, as an evaluation does
        gt = scene_arrays(seed)["segment20"]
        cm.update(wrong_prediction(gt), gt)
    return save_json(tmp_path / "metrics.json", cm.compute(), split="val")


def test_confusion_matrix_in_json_matches_counts(tmp_path):
    path = evaluation(tmp_path)
    data = json.loads(path.read_text())
    m = read_confusion(data, path)
    assert m.shape == (20, 20) and m.sum() == data["num_points"]
    rows = [line for line in path.read_text().splitlines() if line.startswith("    [")]
    assert len(rows) == 20  # one line per matrix row, not one per count
    assert [c["target"] for c in data["classes"]] == m.sum(1).tolist()
    assert [c["predicted"] for c in data["classes"]] == m.sum(0).tolist()
    assert [c["intersection"] for c in data["classes"]] == np.diag(m).tolist()
    assert m[3].sum() == 2 * 1500 and m[3, 4] > 0.95 * 3000  # the boxes of both scenes: predicted as class 4
    data["confusion_matrix"][0][1] += 1
    with pytest.raises(DataError, match="disagrees"):
        read_confusion(data, path)
    del data["confusion_matrix"]
    with pytest.raises(DataError, match="no 'confusion_matrix'"):
        read_confusion(data, path)


def test_charts(tmp_path):
    pytest.importorskip("matplotlib")
    from volt.viz.charts import confusion_heatmap, iou_bar_chart, normalized_confusion, training_curves

    path = evaluation(tmp_path)
    norm = normalized_confusion(read_confusion(json.loads(path.read_text())))
    present = np.array([c["present"] for c in json.loads(path.read_text())["classes"]])
    assert np.allclose(norm[present].sum(1), 1.0) and np.isnan(norm[~present]).all()
    log = RunLog(tmp_path / "run")
    for step in range(1, 6):
        log.metrics("train", {"epoch": 1, "step": step, "lr": 0.01 / step, "loss": 3.0 / step, "train_acc": 0.1 * step})
    log.metrics("val", {"epoch": 1, "step": 5, "metric": 0.3, "mIoU": 0.3, "allAcc": 0.6, "class_iou": [0.3]})
    log.close()
    for png in (iou_bar_chart(path, tmp_path / "iou.png"), confusion_heatmap(path, tmp_path / "conf.png"),
                training_curves(tmp_path / "run", tmp_path / "curves.png")):
        img = read_png(png)
        assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20, png
    with pytest.raises(DataError, match="no metrics.jsonl"):
        training_curves(tmp_path / "nowhere", tmp_path / "x.png")
    with pytest.raises(DataError, match="not a metrics JSON"):
        iou_bar_chart({"mIoU": 0.5}, tmp_path / "x.png")


# --- HTML viewer page ---------------------------------------------------------------------------------------
def page_data(path: Path) -> dict:
    text = path.read_text()
    payload = re.search(r'<script type="application/json" id="volt-data">(.*?)</script>', text, re.DOTALL).group(1)
    assert "http://" not in text and "https://" not in text  # nothing to fetch: opens offline
    return json.loads(payload)


def test_viewer_page_embeds_decimated_points(tmp_path):
    s = scene_arrays()
    n = len(s["coord"])
    gt = s["segment20"]
    layers = {"gt": color_labels(gt, palette(20, "scannet")), "instances": instance_colors(s["instance"])}
    page = write_viewer(tmp_path / "v.html", s["coord"], layers, legends={"gt": [("wall </script>", (1, 2, 3))]},
                        title="a <b>", max_points=1000)
    data = page_data(page)
    assert data["count"] == 1000 and data["total"] == n and data["defaultMode"] == "gt"
    pos = np.frombuffer(base64.b64decode(data["positions"]), "<f4").reshape(-1, 3)
    cols = {layer["key"]: np.frombuffer(base64.b64decode(layer["colors"]), np.uint8).reshape(-1, 3)
            for layer in data["layers"]}
    # Decimation keeps the same points for every colouring: match positions back to the scene.
    shift = np.array(data["center"])
    idx = [int(np.argmin(np.abs(s["coord"] - (p + shift)).sum(1))) for p in pos[:50]]
    assert np.allclose(s["coord"][idx], pos[:50] + shift, atol=1e-4)
    assert np.array_equal(cols["gt"][:50], layers["gt"][idx])
    assert np.array_equal(cols["instances"][:50], layers["instances"][idx])
    assert data["legends"]["gt"] == [["wall </script>", "#010203"]]
    assert "<title>a &lt;b&gt;</title>" in page.read_text()
    full = page_data(write_viewer(tmp_path / "all.html", s["coord"], layers, max_points=10**6))
    assert full["count"] == n
    with pytest.raises(DataError, match="expected"):
        write_viewer(tmp_path / "bad.html", s["coord"], {"gt": layers["gt"][:-1]})


# --- scene folders, demo pictures, CLI ----------------------------------------------------------------------
def write_test_scene(root: Path) -> tuple[Path, Path]:
    s = scene_arrays()
    scene_dir = write_scene(Scene("room0", s, {"dataset": "scannet", "classes": {"segment20": list(CLASS_NAMES_20)}}),
                            root / "room0")
    pred = root / "room0_pred.npy"
    np.save(pred, wrong_prediction(s["segment20"]).astype(np.int16))
    return scene_dir, pred


def test_demo_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    from volt.viz.pictures import demo_pictures

    scene_dir, pred = write_test_scene(tmp_path)
    run = tmp_path / "run"
    log = RunLog(run)
    log.metrics("train", {"epoch": 1, "step": 1, "lr": 0.1, "loss": 1.0, "train_acc": 0.5})
    log.close()
    paths = demo_pictures(run, scene_dir, pred, evaluation(tmp_path), tmp_path / "pics")
    assert [p.name for p in paths] == ["room0_scene.png", "room0_viewer.html", "iou.png", "confusion.png",
                                       "curves.png"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    data = page_data(paths[1])
    assert [layer["key"] for layer in data["layers"]] == ["color", "gt", "pred", "errors", "instances"]
    assert data["defaultMode"] == "pred"


@pytest.mark.parametrize("dataset", ["scannet", "nuscenes"])
def test_scene_pictures_on_demo_scenes(demo_processed, tmp_path, dataset):
    """The demo's preprocessed indoor room / LiDAR sweep: the right label field, colours and layers."""
    pytest.importorskip("matplotlib")
    from volt.data.io import read_scene
    from volt.viz.pictures import scene_pictures

    scene_dir = min(p for p in (demo_processed / dataset / "val").iterdir() if p.is_dir())
    scene = read_scene(scene_dir)
    field = "segment20" if dataset == "scannet" else "segment"
    gt = scene[field].astype(np.int64)
    pred = np.where(np.arange(len(gt)) % 5 == 0, (np.maximum(gt, 0) + 1) % 16, np.maximum(gt, 0))
    png, page = scene_pictures(scene_dir, tmp_path, pred, max_points=20_000)
    data = page_data(page)
    keys = [layer["key"] for layer in data["layers"]]
    assert keys[0] == ("color" if dataset == "scannet" else "intensity") and {"gt", "pred", "errors"} <= set(keys)
    assert data["count"] == min(20_000, len(gt)) and ("normals" in data) == (dataset == "scannet")
    names = scene.meta["classes"][field]
    assert [n for n, _ in data["legends"]["gt"]] == [names[c] for c in np.unique(np.concatenate([gt[gt >= 0], pred]))]
    expected_colors = palette(names, dataset)
    r, g, b = expected_colors[np.unique(gt[gt >= 0])[0]]
    assert data["legends"]["gt"][0][1] == f"#{r:02x}{g:02x}{b:02x}"
    img = read_png(png)
    assert (np.abs(img - np.array(WRONG_COLOR)).sum(-1) < 90).sum() > 100


def test_render_cli(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    scene_dir, pred = write_test_scene(tmp_path)
    metrics = evaluation(tmp_path)
    args = [str(scene_dir), "--pred", str(pred), "--metrics", str(metrics), "--out", str(tmp_path / "out"),
            "--max-points", "500", "--open3d"]
    # Once as a script (as users run it), the error cases in-process (no second interpreter start-up).
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "render.py"), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    printed = [Path(line) for line in done.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert sorted(p.name for p in printed) == ["confusion.png", "iou.png", "room0_scene.png", "room0_viewer.html"]
    assert all(p.is_file() for p in printed)
    assert "open3d window" in done.stdout
    tool = load_tool("render")
    assert tool.main([str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", np.zeros(10, np.int16))
    assert tool.main([str(scene_dir), "--pred", str(tmp_path / "short.npy"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "10 predictions" in err and "room0" in err
    assert tool.main([str(scene_dir), "--field", "segment200", "--out", str(tmp_path / "o3")]) == 2
    assert "no label field 'segment200'" in capsys.readouterr().err
    # --open3d shows the very layers the pictures were drawn from (the scene is read and coloured once).
    from volt.data import io
    from volt.viz import o3d, pictures

    shown, reads = {}, []
    monkeypatch.setattr(o3d, "open3d_unavailable", lambda: None)
    monkeypatch.setattr(o3d, "show_open3d", lambda coord, layers, title, normal: shown.update(layers=layers))
    for module in (pictures, io):  # the name the pictures use, and the one a second reader would import
        monkeypatch.setattr(module, "read_scene", lambda d, f=io.read_scene: reads.append(d) or f(d))
    assert tool.main([str(scene_dir), "--pred", str(pred), "--out", str(tmp_path / "o4"), "--open3d"]) == 0
    assert len(reads) == 1
    _, layers, _ = pictures.load_scene_layers(scene_dir, pred)
    assert list(shown["layers"]) == ["color", "ground truth", "prediction", "errors", "instances"]
    for got, want in zip(shown["layers"].values(), layers.values()):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(SystemExit):
        tool.main([])  # nothing to draw: a usage error


def test_open3d_is_optional(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    reason = open3d_unavailable()
    assert reason is not None and ("not installed" in reason or "no display" in reason)
