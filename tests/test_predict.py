"""Predictor and tools/predict.py: one label per input point on real scans, readable outputs, clear input errors,
fragments/tiles/TTA bookkeeping checked against a direct forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
from conftest import NUSCENES_SWEEP, SCANNET_PLY, load_tool

from volt.config import config_from_dict, to_dict
from volt.data.io import write_scene
from volt.data.ply_cloud import write_ply
from volt.data.readers import read_cloud
from volt.data.scene import Scene
from volt.engine.build import build_segmentor
from volt.engine.checkpoint import save_checkpoint
from volt.engine.instance_train import build_instance_segmentor
from volt.errors import DataError
from volt.inference import Predictor
from volt.inference.instances import per_point_instances
from volt.viz.palette import color_labels, palette


def _checkpoint(path: Path, pipeline: str, in_channels: int, num_classes: int, grid: float, **extra) -> Path:
    """Initial weights of a volt-tiny segmentor with the config a training run would store."""
    cfg = config_from_dict({"model": {"in_channels": in_channels, "volt": {"preset": "volt-tiny"}},
                            "data": {"datasets": [{"condition": "Mine", "pipeline": pipeline,
                                                   "num_classes": num_classes, "grid_size": grid}]},
                            "train": {"amp": False}})
    torch.manual_seed(0)
    raw = {**to_dict(cfg), **extra}
    return save_checkpoint(path, build_segmentor(cfg), config=raw)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {"indoor": _checkpoint(d / "indoor.pt", "scannet", 6, 20, 0.02),
            "lidar": _checkpoint(d / "lidar.pt", "nuscenes", 4, 16, 0.05)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # shared machine; results do not depend on it


def _lattice(n_side: int = 24, seed: int = 0, color: bool = True) -> Scene:
    """A room-sized patch with exactly one point per 2 cm voxel (so the test mode makes one fragment)."""
    rng = np.random.default_rng(seed)
    cells = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side), np.arange(5), indexing="ij"), -1).reshape(-1, 3)
    cells = cells[rng.random(len(cells)) < 0.5]
    coord = (cells + 0.5 + rng.uniform(-0.3, 0.3, cells.shape)) * 0.02
    normal = rng.normal(size=coord.shape)
    arrays = {"coord": coord, "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True)}
    if color:
        arrays["color"] = rng.integers(0, 256, coord.shape)
    return Scene("lattice", arrays).validate()


@pytest.fixture(scope="module")
def scannet_prediction(shared_data, ckpts):
    notes: list[str] = []
    predictor = Predictor(ckpts["indoor"], device="cpu", progress=False, log=notes.append)
    return predictor, predictor.predict(shared_data / SCANNET_PLY), notes


def test_real_scannet_scene_one_label_per_point(shared_data, scannet_prediction, tmp_path):
    predictor, pred, notes = scannet_prediction
    n = read_cloud(shared_data / SCANNET_PLY).num_points
    assert pred.labels.shape == (n,) and pred.labels.dtype == np.int64
    assert pred.confidence.shape == (n,) and pred.confidence.dtype == np.float32
    assert pred.labels.min() >= 0 and pred.labels.max() < 20 and len(pred.class_names) == 20
    assert np.all((pred.confidence > 0) & (pred.confidence <= 1 + 1e-6))
    assert pred.meta["views"] == 1 and pred.meta["fragments"] >= 1 and pred.meta["tiles"] == 1
    assert any("normals from its mesh faces" in line for line in notes)  # announced, never silent

    written = predictor.save(pred, tmp_path, "room", ("npy", "txt", "ply"))
    assert {p.name for p in written} == {"room_labels.npy", "room_confidence.npy", "room.txt", "room.ply", "room.json"}
    np.testing.assert_array_equal(np.load(tmp_path / "room_labels.npy"), pred.labels)
    np.testing.assert_array_equal(np.load(tmp_path / "room_confidence.npy"), pred.confidence)
    ply = read_cloud(tmp_path / "room.ply")
    np.testing.assert_array_equal(ply["segment"], pred.labels)
    np.testing.assert_array_equal(ply["color"], color_labels(pred.labels, palette(pred.class_names, "scannet")))
    np.testing.assert_array_equal(ply["coord"], pred.coord)
    txt = read_cloud(tmp_path / "room.txt")
    np.testing.assert_array_equal(txt["segment"], pred.labels)
    np.testing.assert_allclose(txt["coord"], pred.coord, atol=2e-6)
    summary = json.loads((tmp_path / "room.json").read_text())
    assert summary["points"] == n and sum(c["points"] for c in summary["classes"]) == n


def _run_cli(argv: list[str]) -> int:
    return load_tool("predict").main(argv)


def test_cli_real_nuscenes_sweep_and_per_file_errors(shared_data, ckpts, tmp_path, capsys):
    sweep = shared_data / NUSCENES_SWEEP
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply file\n")
    out = tmp_path / "out"
    code = _run_cli(["--ckpt", str(ckpts["lidar"]), str(sweep), str(bad), str(tmp_path / "missing.las"),
                     "--out", str(out), "--format", "npy,txt", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1  # some inputs failed, the sweep was still labelled
    assert "bad.ply" in err and "missing.las" in err and "2 input(s) failed" in err
    stem = sweep.name.removesuffix(".pcd.bin")
    labels = np.load(out / f"{stem}_labels.npy")
    n = read_cloud(sweep).num_points
    assert labels.shape == (n,) and labels.min() >= 0 and labels.max() < 16
    np.testing.assert_array_equal(read_cloud(out / f"{stem}.txt")["segment"], labels)
    assert not (out / f"{stem}.ply").exists()  # only the formats asked for
    assert json.loads((out / f"{stem}.json").read_text())["points"] == n


def test_cli_folders_globs_and_option_errors(ckpts, tmp_path, capsys):
    scans = tmp_path / "scans"
    for sub in ("a", "b"):  # the same file name twice: outputs must not overwrite each other
        write_ply(scans / sub / "cloud.ply", _lattice(8, seed=len(sub)))
    write_scene(_lattice(8, seed=3), scans / "a" / "scene_dir")
    out = tmp_path / "out"
    code = _run_cli(["--ckpt", str(ckpts["indoor"]), str(scans / "a"), str(scans / "*" / "cloud.ply"),
                     "--out", str(out), "--format", "ply", "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.ply")) == ["cloud.ply", "cloud_2.ply", "scene_dir.ply"]
    assert _run_cli(["--ckpt", str(ckpts["indoor"]), "x.ply", "--format", "png"]) == 2
    assert _run_cli(["--ckpt", str(ckpts["indoor"]), "x.ply", "--tta", "many"]) == 2
    assert _run_cli(["--ckpt", str(tmp_path / "nope.pt"), "x.ply"]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_channel_mismatch_names_file_field_and_expectation(ckpts, tmp_path):
    xyz = tmp_path / "xyz_only.npy"
    np.save(xyz, np.random.default_rng(0).uniform(0, 2, (50, 3)).astype(np.float32))
    with pytest.raises(DataError) as err:
        Predictor(ckpts["indoor"], device="cpu", progress=False).predict(xyz)
    text = str(err.value)
    assert "xyz_only.npy" in text and "no color and no normal" in text and "color + normal (6 channels)" in text
    with pytest.raises(DataError, match=r"xyz_only.npy.*coord \+ strength \(4 channels\).*no strength"):
        Predictor(ckpts["lidar"], device="cpu", progress=False).predict(xyz)

    # Color but no normals and no mesh faces: an error unless estimation is asked for (and then announced).
    scene = _lattice(8)
    del scene.arrays["normal"]
    cloud = write_ply(tmp_path / "colored.ply", scene)
    with pytest.raises(DataError, match=r"colored.ply.*no normal.*--estimate-normals"):
        Predictor(ckpts["indoor"], device="cpu", progress=False).predict(cloud)
    notes: list[str] = []
    pred = Predictor(ckpts["indoor"], device="cpu", progress=False, estimate_normals=True,
                     log=notes.append).predict(cloud)
    assert pred.labels.shape == (scene.num_points,) and any("estimating them by PCA" in n for n in notes)


def test_one_fragment_equals_direct_forward(ckpts):
    scene = _lattice()
    predictor = Predictor(ckpts["indoor"], device="cpu", progress=False, keep_probs=True)
    pred = predictor.predict(scene)
    assert pred.meta["fragments"] == 1  # one point per voxel
    # The same model on the same voxels, built by hand: CenterShift(z), 2 cm grid, color / 255 + normal.
    c = scene["coord"].astype(np.float64)
    c[:, :2] -= (c[:, :2].min(0) + c[:, :2].max(0)) / 2
    c[:, 2] -= c[:, 2].min()
    grid = np.floor(c / 0.02).astype(np.int64)
    feat = np.concatenate([scene["color"] / 255.0, scene["normal"]], axis=1)
    batch = {"grid_coord": torch.from_numpy(grid - grid.min(0)).int(), "feat": torch.from_numpy(feat).float(),
             "coord": torch.from_numpy(c).float(), "offset": torch.tensor([len(c)]), "condition": ["Mine"]}
    with torch.no_grad():
        probs = predictor.model(batch).logits.softmax(-1).numpy()
    np.testing.assert_allclose(pred.probs, probs, atol=1e-5)
    np.testing.assert_allclose(pred.confidence, probs.max(1), atol=1e-5)


def test_tiles_cover_every_point_and_sum_like_views(ckpts):
    scene = _lattice()
    full = Predictor(ckpts["indoor"], device="cpu", progress=False, keep_probs=True).predict(scene)
    # Overlap larger than the scene: every tile is the whole cloud, so the mean over tiles is the full result.
    quarter = -(-scene.num_points // 4)
    tiled = Predictor(ckpts["indoor"], device="cpu", progress=False, keep_probs=True, max_points=quarter,
                      tile_overlap=100.0).predict(scene)
    assert tiled.meta["tiles"] == 4
    np.testing.assert_allclose(tiled.probs, full.probs, atol=1e-5)
    small = Predictor(ckpts["indoor"], device="cpu", progress=False, max_points=quarter,
                      tile_overlap=0.05).predict(scene)
    assert small.meta["tiles"] >= 4 and small.labels.shape == (scene.num_points,)
    assert np.all(small.confidence > 0)  # every point got votes


def test_labels_in_the_file_are_compared(ckpts):
    scene = _lattice(8)
    predictor = Predictor(ckpts["indoor"], device="cpu", progress=False)
    first = predictor.predict(scene)
    assert "file_labels" not in first.meta
    half = np.arange(scene.num_points) % 2 == 0
    scene.arrays["segment20"] = np.where(half, first.labels, -1).astype(np.int32)  # the checkpoint's label field
    again = predictor.predict(scene)
    assert again.meta["file_labels"] == {"field": "segment20", "points": int(half.sum()), "accuracy": 1.0}


def test_tta_view_selection(ckpts):
    assert Predictor(ckpts["indoor"], device="cpu", tta=True).num_views == 13
    assert Predictor(ckpts["lidar"], device="cpu", tta=True).num_views == 10
    lidar = Predictor(ckpts["lidar"], device="cpu", tta=3)
    rng = np.random.default_rng(0)
    coord = np.concatenate([rng.uniform(-20, 20, (300, 2)), rng.uniform(-2, 1, (300, 1))], 1).astype(np.float32)
    frags = list(lidar.views({"name": "probe", "coord": coord, "strength": rng.random((300, 1), np.float32)}))
    assert {f["view"] for f in frags} == {0, 1, 2}
    rows = np.zeros((frags[0]["num_points"], 3), np.float32)  # view 0's coordinates of the pre-sampled points
    for f in frags:
        if f["view"] == 0:
            rows[f["index"]] = f["coord"]
    # the untransformed view comes first (not scale 0.9): each point lies within its 2.5 cm pre-sampling voxel
    assert np.abs(rows[frags[0]["origin_inverse"]] - coord).max() < 0.03
    assert lidar.num_views == 3
    with pytest.raises(ValueError, match="13 views"):
        Predictor(ckpts["indoor"], device="cpu", tta=14)
    pred = Predictor(ckpts["indoor"], device="cpu", tta=2, progress=False).predict(_lattice(8))
    assert pred.meta["views"] == 2 and pred.meta["fragments"] >= 2  # a rotated view may split voxels differently


def test_inconsistent_checkpoints(tmp_path):
    bad_channels = _checkpoint(tmp_path / "c3.pt", "scannet", 3, 20, 0.02)
    with pytest.raises(DataError, match=r"c3.pt.*3 input channels.*color \+ normal \(6 channels\)"):
        Predictor(bad_channels, device="cpu")
    # Semantic weights under an instance config: refused by the strict load, naming the file.
    mixed = _checkpoint(tmp_path / "mixed.pt", "scannet", 6, 20, 0.02, task="instance")
    with pytest.raises(DataError, match=r"mixed.pt: state does not match InstanceSegmentor"):
        Predictor(mixed, device="cpu")


def test_point_instances_take_the_best_covering_mask():
    masks = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=bool)
    labels, confidence, instance = per_point_instances(masks, np.array([3, 5, 7]),
                                                       np.array([0.2, 0.9, 0.5], np.float32))
    np.testing.assert_array_equal(instance, [1, 0, 0, 1, -1])  # ranks by score: mask 1, mask 2, mask 0
    np.testing.assert_array_equal(labels, [7, 5, 5, 7, -1])
    np.testing.assert_allclose(confidence, [0.5, 0.9, 0.9, 0.5, 0.0])
    empty = per_point_instances(np.zeros((0, 4), bool), np.zeros(0, np.int64), np.zeros(0, np.float32))
    np.testing.assert_array_equal(empty[2], [-1, -1, -1, -1])


def _mesh_ply(path: Path, side: int = 30) -> Path:
    """A colored height-field mesh (two triangles per 2 cm cell): a PLY with faces and no normals."""
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    vertex = np.empty(side * side, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"] = i.ravel() * 0.02, j.ravel() * 0.02
    vertex["z"] = np.where(i.ravel() > side // 2, 0.3, 0.0)  # a step: two surfaces, so two superpoint areas
    for c in ("red", "green", "blue"):
        vertex[c] = rng.integers(0, 256, side * side)
    a = (i[:-1, :-1] * side + j[:-1, :-1]).ravel()
    tris = np.concatenate([np.stack([a, a + side, a + 1], 1), np.stack([a + 1, a + side, a + side + 1], 1)])
    face = np.empty(len(tris), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = tris
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"), plyfile.PlyElement.describe(face, "face")]
                    ).write(str(path))
    return path


def test_instance_checkpoint_gives_instance_ids(tmp_path):
    cfg = config_from_dict({"task": "instance", "model": {"in_channels": 6, "volt": {"preset": "volt-tiny"}},
                            "instance": {"num_queries": 8, "d_model": 32, "num_heads": 2, "ffn_dim": 64,
                                         "num_layers": 1, "npoint_thresh": 5},
                            "data": {"datasets": [{"condition": "Mine", "pipeline": "scannet", "num_classes": 20}]},
                            "train": {"amp": False}})
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "inst.pt", build_instance_segmentor(cfg, load_init=False), config=to_dict(cfg))
    notes: list[str] = []
    predictor = Predictor(ckpt, device="cpu", progress=False, log=notes.append)
    mesh = _mesh_ply(tmp_path / "room.ply")
    pred = predictor.predict(mesh)
    n = read_cloud(mesh).num_points
    assert pred.instance is not None and pred.instance.shape == pred.labels.shape == (n,)
    assert pred.instance.min() >= -1 and pred.instance.max() < pred.meta["masks"]
    np.testing.assert_array_equal(pred.labels < 0, pred.instance < 0)  # a class exactly where a mask is
    assert set(np.unique(pred.labels[pred.labels >= 0])) <= set(range(2, 20))  # never a stuff class
    assert any("superpoints from its mesh faces" in line for line in notes)
    predictor.save(pred, tmp_path / "out", "room", ("npy", "ply"))
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "room_instance.npy"), pred.instance)
    np.testing.assert_array_equal(read_cloud(tmp_path / "out" / "room.ply")["instance"], pred.instance)
    with pytest.raises(ValueError, match="no tta"):
        Predictor(ckpt, device="cpu", tta=2)


def test_in_memory_scene_named_like_a_mesh_file_is_not_read_from_disk(ckpts, tmp_path, monkeypatch):
    """A Scene given in memory has no source file: a mesh in the working directory that carries the scene's
    name must not supply its normals (the name labels messages only)."""
    from volt.inference.inputs import estimate_normals, model_inputs

    monkeypatch.chdir(tmp_path)
    mesh = _mesh_ply(tmp_path / "room.ply")
    scene = Scene("room.ply", dict(read_cloud(mesh).arrays))  # the mesh's own vertices, no normals
    assert "normal" not in scene
    notes: list[str] = []
    with pytest.raises(DataError, match=r"room.ply.*no normal.*--estimate-normals"):
        Predictor(ckpts["indoor"], device="cpu", progress=False, log=notes.append).predict(scene)
    assert not any("mesh faces" in n for n in notes)
    inputs = model_inputs(scene, "scannet", None, estimate=True, log=notes.append)
    assert any(n.startswith("notice: room.ply has no normals; estimating them by PCA") for n in notes)
    np.testing.assert_array_equal(inputs["normal"], estimate_normals(scene["coord"]))
    # The same points read from that file: its faces give the normals.
    assert "normal" in model_inputs(scene, "scannet", "room.ply", log=notes.append)
    assert any("from its mesh faces" in n for n in notes)


def test_summary_counts_and_mean_confidence_per_class(tmp_path):
    from volt.inference.outputs import save_prediction
    from volt.inference.predictor import Prediction

    labels = np.array([2, 0, 2, -1, 2, 0])  # -1: no class (instance checkpoints), counted apart
    confidence = np.array([0.5, 0.25, 0.75, 0.9, 1.0, 0.75], dtype=np.float32)
    pred = Prediction("s", np.zeros((6, 3), np.float32), labels, confidence, ["a", "b", "c"])
    save_prediction(pred, tmp_path, formats=())
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["points"] == 6 and summary["unlabelled"] == 1
    assert [c["points"] for c in summary["classes"]] == [2, 0, 3]
    mean = [c["mean_confidence"] for c in summary["classes"]]
    assert mean[1] is None  # a class without points has no mean
    assert mean[0] == pytest.approx(0.5) and mean[2] == pytest.approx(0.75)
