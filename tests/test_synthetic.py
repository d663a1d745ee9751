"""The synthetic demo data: deterministic, valid in the real raw formats (checked with independent readers),
round-trips through the real preprocessors, and is not separable by a single trivial cue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plyfile
import pytest
from conftest import load_tool

from volt.data.synthetic import make_indoor_scannet, make_outdoor_nuscenes

# Facts from ScanNet's scannetv2-labels.combined.tsv: raw name -> (200-class `id`, nyu40id), for names the
# generator may use; and the ScanNet-20 nyu40 ids in training order.
REAL_IDS = {"wall": (1, 1), "floor": (3, 2), "chair": (2, 5), "table": (4, 7), "couch": (6, 6), "desk": (9, 14),
            "bed": (11, 4), "cabinet": (7, 3), "kitchen cabinet": (29, 3), "door": (5, 8), "window": (16, 9),
            "bookshelf": (18, 10), "picture": (15, 11), "curtain": (21, 16), "refrigerator": (27, 24),
            "toilet": (17, 33), "sink": (14, 34), "bathtub": (42, 36), "trash can": (56, 39), "lamp": (28, 35),
            "nightstand": (34, 32), "pillow": (13, 18), "office chair": (10, 5), "armchair": (23, 5),
            "coffee table": (24, 7), "end table": (44, 7), "kitchen counter": (159, 12)}
NYU20 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
# nuScenes fine id -> 16-class training id for the classes the generator draws (spec §3.2).
FINE_TO_16 = {0: -1, 2: 6, 9: 0, 12: 7, 17: 3, 23: 9, 24: 10, 26: 12, 27: 13, 28: 14, 30: 15}
MINI_TRAIN = {"scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100"}
MINI_VAL = {"scene-0103", "scene-0916"}


@pytest.fixture(scope="module")
def indoor(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "scannet"
    return root, make_indoor_scannet(root, num_scenes=5, seed=3)


@pytest.fixture(scope="module")
def outdoor(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "nuscenes"
    return root, make_outdoor_nuscenes(root, seed=3, num_scenes=3, samples_per_scene=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_tsv(path: Path) -> dict[str, dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:5] == ["id", "raw_category", "category", "count", "nyu40id"] and len(header) == 17
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert all(len(line.split("\t")) == 17 for line in lines[1:])
    return {r["raw_category"]: r for r in rows}


def _read_room(scene_dir: Path):
    """Independent reader: vertices, colours, faces, per-vertex segment ids and aggregation groups."""
    name = scene_dir.name
    ply = plyfile.PlyData.read(str(scene_dir / f"{name}_vh_clean_2.ply"))
    v = ply["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    faces = np.stack(ply["face"].data["vertex_indices"])
    segs = json.loads((scene_dir / f"{name}_vh_clean_2.0.010000.segs.json").read_text())
    agg = json.loads((scene_dir / f"{name}.aggregation.json").read_text())
    return ply, xyz, rgb, faces, np.asarray(segs["segIndices"]), segs, agg


@pytest.mark.parametrize("make, kwargs, data_files", [
    (make_indoor_scannet, {"num_scenes": 2}, 2),  # 2 meshes
    (make_outdoor_nuscenes, {"num_scenes": 2, "samples_per_scene": 1}, 4),  # 2 sweeps + 2 label files
])
def test_same_seed_same_bytes_different_seed_different_scenes(tmp_path, make, kwargs, data_files):
    first, again, other = (make(tmp_path / str(k), seed=s, **kwargs) for k, s in enumerate((7, 7, 8)))
    files = [_files(tmp_path / str(k)) for k in range(3)]
    assert files[0] == files[1] and first == again
    data = [{v for k, v in f.items() if k.endswith((".ply", ".bin"))} for f in (files[0], files[2])]
    assert len(data[0]) == len(data[1]) == data_files
    assert not data[0] & data[1]  # no mesh, sweep or label file is shared between the two seeds
    assert first != other


def test_scannet_files_are_valid(indoor):
    root, scenes = indoor
    tsv = _read_tsv(root / "scannetv2-labels.combined.tsv")
    for raw, row in tsv.items():
        assert raw in REAL_IDS and (int(row["id"]), int(row["nyu40id"])) == REAL_IDS[raw], raw
    train = (root / "scannetv2_train.txt").read_text().split()
    val = (root / "scannetv2_val.txt").read_text().split()
    assert sorted(train + val) == sorted(s.name for s in scenes) and len(val) == 1 and not set(train) & set(val)
    for scene in scenes:
        ply, xyz, rgb, faces, seg, segs, agg = _read_room(root / "scans" / scene.name)
        assert ply.byte_order == "<" and not ply.text
        assert [p.name for p in ply["vertex"].properties] == ["x", "y", "z", "red", "green", "blue", "alpha"]
        assert ply["vertex"].data["x"].dtype == np.float32 and ply["vertex"].data["red"].dtype == np.uint8
        assert len(xyz) == scene.num_vertices and 15_000 < len(xyz) < 90_000
        assert faces.shape == (scene.num_faces, 3) and faces.min() >= 0 and faces.max() < len(xyz)
        assert np.isin(np.arange(len(xyz)), faces).all()  # no stray vertices
        assert segs["sceneId"] == scene.name and len(seg) == len(xyz)
        assert not np.array_equal(np.unique(seg), np.arange(len(np.unique(seg))))  # ScanNet-like arbitrary ids
        assert agg["sceneId"] == f"scannet.{scene.name}" and agg["segmentsFile"].endswith(".segs.json")
        groups = agg["segGroups"]
        assert [g["id"] for g in groups] == list(range(len(groups))) == [g["objectId"] for g in groups]
        assert [g["label"] for g in groups] == scene.labels
        used = np.concatenate([g["segments"] for g in groups])
        assert np.isin(used, seg).all() and len(used) == len(set(used.tolist()))  # no segment in two objects
        assert {g["label"] for g in groups} <= set(tsv)
        assert {"wall", "floor", "door"} <= set(scene.labels) and scene.labels.count("wall") == 4
        assert xyz[:, 2].min() > -0.01 and rgb.std() > 10


def test_nuscenes_files_are_valid(outdoor):
    root, sweeps = outdoor
    tables = {p.stem: json.loads(p.read_text()) for p in (root / "v1.0-mini").glob("*.json")}
    assert [c["name"] for c in sorted(tables["category"], key=lambda c: c["index"])][17] == "vehicle.car"
    assert [c["index"] for c in tables["category"]] == list(range(32))
    assert {s["name"] for s in tables["scene"]} == {s.scene for s in sweeps} <= MINI_TRAIN | MINI_VAL
    tokens = {name: {r["token"] for r in rows} for name, rows in tables.items()}
    assert all(len(t) == 32 and int(t, 16) >= 0 for rows in tokens.values() for t in rows)
    (sensor,) = tables["sensor"]
    assert sensor["channel"] == "LIDAR_TOP" and sensor["modality"] == "lidar"
    assert all(c["sensor_token"] in tokens["sensor"] for c in tables["calibrated_sensor"])
    assert all(s["scene_token"] in tokens["scene"] for s in tables["sample"])
    for sd in tables["sample_data"]:
        assert sd["is_key_frame"] is True and sd["fileformat"] == "pcd" and (root / sd["filename"]).is_file()
        assert sd["sample_token"] in tokens["sample"] and sd["calibrated_sensor_token"] in tokens["calibrated_sensor"]
        assert sd["ego_pose_token"] in tokens["ego_pose"]
    assert {r["sample_data_token"] for r in tables["lidarseg"]} == tokens["sample_data"]
    for sweep in sweeps:
        (seg_rec,) = [r for r in tables["lidarseg"] if r["sample_data_token"] == sweep.token]
        raw = (root / sweep.filename).read_bytes()
        assert len(raw) % 20 == 0
        pts = np.frombuffer(raw, dtype="<f4").reshape(-1, 5)
        labels = np.fromfile(root / seg_rec["filename"], dtype=np.uint8)
        assert len(pts) == len(labels) == sweep.num_points and 20_000 <= len(pts) <= 35_000
        assert set(np.unique(labels).tolist()) <= set(FINE_TO_16) and (labels == 0).any()
        assert {24, 26, 28}.issubset(labels.tolist())
        assert pts[:, 3].min() >= 0 and pts[:, 3].max() <= 255 and np.array_equal(pts[:, 3], np.round(pts[:, 3]))
        assert set(np.unique(pts[:, 4]).tolist()) <= set(range(32)) and len(np.unique(pts[:, 4])) == 32
        ground = labels == 24
        assert abs(np.median(pts[ground, 2]) + 1.84) < 0.05  # road 1.84 m below the sensor
        assert np.linalg.norm(pts[:, :3], axis=1).max() < 80.5


def test_scannet_round_trip_through_prepare_scannet(indoor, tmp_path):
    from volt.data.scannet import prepare_scannet

    root, scenes = indoor
    splits = {s: root / f"scannetv2_{s}.txt" for s in ("train", "val")}
    summary = prepare_scannet(root / "scans", tmp_path, root / "scannetv2-labels.combined.tsv", splits=splits,
                              progress=False)
    assert summary.exit_code == 0 and len(summary.written) == len(scenes) and not summary.failed
    for split in ("train", "val"):
        expected = sorted(s.name for s in scenes if s.split == split)
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == expected
    for scene in scenes:
        out = tmp_path / scene.split / scene.name
        arrays = {k: np.load(out / f"{k}.npy") for k in
                  ("coord", "color", "normal", "segment20", "segment200", "instance", "superpoint")}
        _, xyz, rgb, _, _, _, _ = _read_room(root / "scans" / scene.name)
        assert len(arrays["coord"]) == scene.num_vertices and np.array_equal(arrays["coord"], xyz)
        assert np.array_equal(arrays["color"], rgb)
        assert np.allclose(np.linalg.norm(arrays["normal"], axis=1), 1.0, atol=1e-3)
        instances = np.unique(arrays["instance"])
        assert np.array_equal(instances[instances >= 0], np.arange(len(scene.labels)))
        want20 = {NYU20.index(REAL_IDS[n][1]) for n in scene.labels if REAL_IDS[n][1] in NYU20}
        assert set(np.unique(arrays["segment20"]).tolist()) - {-1} == want20
        for k, label in enumerate(scene.labels):  # every object carries its own class
            got = np.unique(arrays["segment20"][arrays["instance"] == k])
            nyu = REAL_IDS[label][1]
            assert got.tolist() == [NYU20.index(nyu) if nyu in NYU20 else -1], label
        assert (arrays["segment200"][arrays["instance"] >= 0] >= 0).all()  # every name used is a ScanNet200 class


def test_nuscenes_round_trip_through_prepare_nuscenes(outdoor, tmp_path):
    from volt.data.nuscenes import prepare_nuscenes

    root, sweeps = outdoor
    summary = prepare_nuscenes(root, tmp_path, "v1.0-mini", progress=False)
    assert summary.exit_code == 0 and len(summary.written) == len(sweeps)
    for split in ("train", "val"):
        expected = sorted(s.token for s in sweeps if s.split == split)
        assert expected and sorted(p.name for p in (tmp_path / split).iterdir()) == expected
    for sweep in sweeps:
        out = tmp_path / sweep.split / sweep.token
        coord, strength, segment = (np.load(out / f"{k}.npy") for k in ("coord", "strength", "segment"))
        assert len(coord) == len(strength) == len(segment) == sweep.num_points
        fine = np.fromfile(root / "lidarseg" / "v1.0-mini" / f"{sweep.token}_lidarseg.bin", dtype=np.uint8)
        assert np.array_equal(segment, np.vectorize(FINE_TO_16.get)(fine))
        assert {3, 10, 12, 14, 15} <= set(segment.tolist()) and -1 in segment
        assert 0 <= strength.min() and strength.max() <= 1


def _cue_accuracy(key: np.ndarray, label: np.ndarray) -> float:
    """Point accuracy of the best possible 'majority label per bin of one cue' classifier, fit on the data."""
    _, k = np.unique(key, return_inverse=True, axis=0)
    table = np.zeros((k.max() + 1, label.max() + 2), dtype=np.int64)
    np.add.at(table, (k.reshape(-1), label + 1), 1)
    return float(table.max(1).sum() / len(label))


def test_classes_are_not_separable_by_one_trivial_cue(indoor, outdoor):
    root, scenes = indoor
    tsv = _read_tsv(root / "scannetv2-labels.combined.tsv")
    z, rgb, y = [], [], []
    for scene in scenes:
        _, xyz, color, _, seg, _, agg = _read_room(root / "scans" / scene.name)
        label = np.full(len(xyz), -1)
        for g in agg["segGroups"]:
            nyu = int(tsv[g["label"]]["nyu40id"])
            label[np.isin(seg, g["segments"])] = NYU20.index(nyu) if nyu in NYU20 else -1
        z.append(xyz[:, 2]), rgb.append(color), y.append(label)
    z, rgb, y = np.concatenate(z), np.concatenate(rgb), np.concatenate(y)
    keep = y >= 0
    height = _cue_accuracy(np.floor(z[keep] / 0.1).astype(int), y[keep])
    color = _cue_accuracy(rgb[keep] // 32, y[keep])
    furniture = keep & (y > 1)
    height_f = _cue_accuracy(np.floor(z[furniture] / 0.1).astype(int), y[furniture])
    print(f"height-only {height:.3f}, colour-only {color:.3f}, height-only on furniture {height_f:.3f}")
    assert height < 0.75 and color < 0.75 and height_f < 0.6
    root, sweeps = outdoor
    fine = np.concatenate([np.fromfile(root / "lidarseg" / "v1.0-mini" / f"{s.token}_lidarseg.bin", np.uint8)
                           for s in sweeps])
    intensity = np.concatenate([np.fromfile(root / s.filename, "<f4").reshape(-1, 5)[:, 3] for s in sweeps])
    assert _cue_accuracy(intensity.astype(int) // 4, fine.astype(int)) < 0.75


def test_cli_writes_both_datasets(tmp_path, capsys):
    tool = load_tool("make_demo_data")
    args = ["--out", str(tmp_path), "--seed", "1", "--indoor-scenes", "2", "--outdoor-scenes", "2",
            "--samples-per-scene", "1"]
    assert tool.main(args) == 0
    assert len(list((tmp_path / "scannet" / "scans").iterdir())) == 2
    assert len(list((tmp_path / "nuscenes" / "samples" / "LIDAR_TOP").iterdir())) == 2
    assert "2 sweeps" in capsys.readouterr().out
