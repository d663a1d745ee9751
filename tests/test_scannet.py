"""ScanNet v2 reader and preprocessor: class tables, label map, mesh normals, real scenes, parity, the tool.

Real-data tests use ../shared/data/scannet (scene0000_00 annotated, scene0470_00 mesh-only) and the
reference fixture scannet_preprocess_scene0000_00.pt; they skip with a reason when those are absent.
The 81k-vertex scene is parsed once per module.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
from conftest import fixture_file, load_tool

from volt.data.io import read_scene
from volt.data.ply_mesh import read_ply_mesh, vertex_normals
from volt.data.scannet import (
    UnmappedLabelWarning,
    load_label_map,
    prepare_scannet,
    read_scannet_scene,
    read_split_file,
)
from volt.data.scannet_classes import (
    CLASS_NAMES_20,
    CLASS_NAMES_200,
    VALID_CLASS_IDS_20,
    VALID_CLASS_IDS_200,
    nyu40_to_segment20,
)
from volt.errors import DataError

TSV = "scannetv2-labels.combined.tsv"


def _write_mesh(path: Path, xyz, faces, rgb=None, text: bool = False) -> Path:
    xyz = np.asarray(xyz, dtype=np.float32)
    rgb = np.full((len(xyz), 3), 200, np.uint8) if rgb is None else np.asarray(rgb, np.uint8)
    vert = np.empty(len(xyz), dtype=[(k, "f4") for k in "xyz"] + [(k, "u1") for k in ("red", "green", "blue", "alpha")])
    for i, k in enumerate("xyz"):
        vert[k] = xyz[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vert[k] = rgb[:, i]
    vert["alpha"] = 255
    face = np.empty(len(faces), dtype=[("vertex_indices", object)])
    face["vertex_indices"] = [np.asarray(f, dtype=np.int32) for f in faces]
    elements = [plyfile.PlyElement.describe(vert, "vertex"),
                plyfile.PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"},
                                            val_types={"vertex_indices": "i4"})]
    path.parent.mkdir(parents=True, exist_ok=True)
    plyfile.PlyData(elements, text=text).write(str(path))
    return path


# A tetrahedron: 4 vertices, 4 faces; the synthetic scenes below annotate it.
TET_XYZ = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
TET_FACES = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]


def _synthetic_scene(root: Path, name: str, seg_indices, groups) -> Path:
    folder = root / name
    _write_mesh(folder / f"{name}_vh_clean_2.ply", TET_XYZ, TET_FACES)
    (folder / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": seg_indices}))
    (folder / f"{name}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
    return folder


@pytest.fixture(scope="module")
def scannet_dir(shared_data) -> Path:
    path = shared_data / "scannet"
    if not (path / TSV).is_file():
        pytest.skip(f"ScanNet sample data not found in {path}")
    return path


@pytest.fixture(scope="module")
def label_map(scannet_dir):
    return load_label_map(scannet_dir / TSV)


@pytest.fixture(scope="module")
def scene0000(scannet_dir, label_map):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = read_scannet_scene(scannet_dir / "scene0000_00", label_map)
    return scene, [w for w in caught if issubclass(w.category, UnmappedLabelWarning)]


@pytest.fixture
def tiny_tsv(tmp_path) -> Path:
    rows = ["id\traw_category\tcategory\tnyu40id", "1\twall\twall\t1", "2\tchair\tchair\t5", "22\tbooks\tbook\t23"]
    path = tmp_path / "labels.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


# --- class tables -------------------------------------------------------------------------------------
def test_class_tables_shape():
    assert len(VALID_CLASS_IDS_20) == len(set(VALID_CLASS_IDS_20)) == len(CLASS_NAMES_20) == 20
    assert len(VALID_CLASS_IDS_200) == len(set(VALID_CLASS_IDS_200)) == len(CLASS_NAMES_200) == 200
    assert len(set(CLASS_NAMES_200)) == 200
    assert CLASS_NAMES_200[:5] == ("wall", "chair", "floor", "table", "door")
    assert CLASS_NAMES_200[-3:] == ("potted plant", "luggage", "mattress")


@pytest.mark.parametrize("nyu, expected", [(1, 0), (2, 1), (12, 11), (24, 14), (39, 19), (0, -1), (13, -1),
                                           (40, -1), (-1, -1), (1000, -1)])
def test_nyu40_to_segment20(nyu, expected):
    assert nyu40_to_segment20(np.array([nyu])).tolist() == [expected]


def test_class_names_200_match_tsv(scannet_dir):
    # The name of each ScanNet200 id is the tsv's `category` on the first row with that id.
    first = {}
    for line in (scannet_dir / TSV).read_text().splitlines()[1:]:
        cols = line.split("\t")
        first.setdefault(int(cols[0]), cols[2])
    assert [first[i] for i in VALID_CLASS_IDS_200] == list(CLASS_NAMES_200)


# --- label map ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("wall", (0, 0)), ("chair", (4, 1)), ("floor", (1, 2)), ("stack of chairs", (4, 1)),
    ("books", (-1, VALID_CLASS_IDS_200.index(22))), ("kitchen cabinets", (2, VALID_CLASS_IDS_200.index(29))),
    ("shower curtain", (15, VALID_CLASS_IDS_200.index(55))), ("object", (-1, VALID_CLASS_IDS_200.index(1163))),
])
def test_label_map_real(label_map, raw, expected):
    assert label_map[raw] == expected


@pytest.mark.parametrize("content, problem", [
    (None, "not found"),
    ("id\traw_category\tcategory\n1\twall\twall\n", "missing column"),
    ("id\traw_category\tnyu40id\nx\twall\t1\n", "line 2"),
    ("id\traw_category\tnyu40id\n", "no rows"),
])
def test_label_map_bad(tmp_path, content, problem):
    path = tmp_path / "bad_labels.tsv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        load_label_map(path)
    assert "bad_labels.tsv" in str(err.value)


# --- mesh reading and normals -------------------------------------------------------------------------
def test_vertex_normals_area_weighted():
    # Vertex 0 touches a z-facing face of area 2 and a y-facing face of area 0.5: normal ∝ (0, 0.5, 2).
    xyz = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    normal = vertex_normals(xyz, np.array([[0, 1, 2], [0, 3, 4]]))
    np.testing.assert_allclose(normal[0], np.array([0, 1, 4]) / np.sqrt(17), atol=1e-6)
    np.testing.assert_allclose(normal[1], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(normal[3], [0, 1, 0], atol=1e-6)


def test_ascii_polygon_mesh_is_fan_triangulated(tmp_path):
    quad = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    mesh = read_ply_mesh(_write_mesh(tmp_path / "quad.ply", quad, [[0, 1, 2, 3]], text=True))
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    np.testing.assert_allclose(vertex_normals(mesh.coord, mesh.faces), np.tile([0, 0, 1], (4, 1)), atol=1e-6)


def _truncated(tmp_path):
    path = _write_mesh(tmp_path / "s" / "s_vh_clean_2.ply", TET_XYZ, TET_FACES)
    path.write_bytes(path.read_bytes()[:-10])
    return tmp_path / "s", "s_vh_clean_2.ply"


def _nan_vertex(tmp_path):
    _write_mesh(tmp_path / "s" / "s_vh_clean_2.ply", [[0, 0, 0], [1, np.nan, 0], [0, 1, 0], [0, 0, 1]], TET_FACES)
    return tmp_path / "s", "s_vh_clean_2.ply"


def _empty_mesh(tmp_path):
    _write_mesh(tmp_path / "s" / "s_vh_clean_2.ply", np.zeros((0, 3)), [])
    return tmp_path / "s", "s_vh_clean_2.ply"


def _face_out_of_range(tmp_path):
    _write_mesh(tmp_path / "s" / "s_vh_clean_2.ply", TET_XYZ, TET_FACES + [[1, 2, 7]])
    return tmp_path / "s", "s_vh_clean_2.ply"


def _not_a_ply(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "s_vh_clean_2.ply").write_text("hello\n")
    return tmp_path / "s", "s_vh_clean_2.ply"


def _segs_length_mismatch(tmp_path):
    return _synthetic_scene(tmp_path, "s", [0, 0, 1], [{"id": 0, "segments": [0], "label": "wall"}]), \
        "s_vh_clean_2.0.010000.segs.json"


def _aggregation_missing(tmp_path):
    folder = _synthetic_scene(tmp_path, "s", [0, 0, 1, 1], [])
    (folder / "s.aggregation.json").unlink()
    return folder, "s.aggregation.json"


def _aggregation_malformed(tmp_path):
    return _synthetic_scene(tmp_path, "s", [0, 0, 1, 1], [{"id": 0, "label": "wall"}]), "s.aggregation.json"


@pytest.mark.parametrize("make, problem", [
    (_truncated, "early end-of-file"), (_nan_vertex, "NaN"), (_empty_mesh, "empty"),
    (_face_out_of_range, "only 4 vertices"), (_not_a_ply, "not a readable PLY"),
    (_segs_length_mismatch, "3 entries but the mesh has 4"), (_aggregation_missing, "not found"),
    (_aggregation_malformed, "segGroups"),
])
def test_bad_scene_raises_naming_the_file(tmp_path, tiny_tsv, make, problem):
    folder, bad_file = make(tmp_path)
    with pytest.raises(DataError, match=problem) as err:
        read_scannet_scene(folder, load_label_map(tiny_tsv))
    assert bad_file in str(err.value)


def test_synthetic_annotation_rules(tmp_path, tiny_tsv):
    # Non-contiguous segment ids; groups 0 and 1 share segment 30 (later wins); an unknown label; wall kept.
    groups = [{"id": 0, "segments": [10, 30], "label": "wall"}, {"id": 1, "segments": [30], "label": "chair"},
              {"id": 7, "segments": [20], "label": "no such thing"}, {"id": 8, "segments": [99], "label": "books"}]
    folder = _synthetic_scene(tmp_path, "scene9000_00", [10, 10, 30, 20], groups)
    with pytest.warns(UnmappedLabelWarning, match=r"scene9000_00.*no such thing") as caught:
        scene = read_scannet_scene(folder, load_label_map(tiny_tsv))
    assert len(caught) == 1
    assert scene["superpoint"].tolist() == [0, 0, 2, 1]
    assert scene["instance"].tolist() == [0, 0, 1, 7]
    assert scene["segment20"].tolist() == [0, 0, 4, -1]
    assert scene["segment200"].tolist() == [0, 0, 1, -1]
    assert scene.meta["unmapped_labels"] == ["no such thing"]
    assert "superpoint_source" not in scene.meta  # shipped in segs.json
    assert scene.meta["source"] == ["scene9000_00_vh_clean_2.ply", "scene9000_00_vh_clean_2.0.010000.segs.json",
                                    "scene9000_00.aggregation.json"]


def test_fully_mapped_scene_has_no_unmapped_report(tmp_path, tiny_tsv, recwarn):
    groups = [{"id": 0, "segments": [10], "label": "wall"}, {"id": 1, "segments": [30], "label": "chair"}]
    scene = read_scannet_scene(_synthetic_scene(tmp_path, "scene9001_00", [10, 30, 30, 10], groups),
                               load_label_map(tiny_tsv))
    assert not [w for w in recwarn if issubclass(w.category, UnmappedLabelWarning)]
    assert "unmapped_labels" not in scene.meta and scene["segment20"].tolist() == [0, 4, 4, 0]


def test_split_file(tmp_path):
    path = tmp_path / "scannetv2_val.txt"
    path.write_text("scene0000_00\n\n# comment\nscene0011_01\n")
    assert read_split_file(path) == ["scene0000_00", "scene0011_01"]
    path.write_text("../escape\n")
    with pytest.raises(DataError, match="scannetv2_val.txt"):
        read_split_file(path)
    with pytest.raises(DataError, match="missing.txt"):
        read_split_file(tmp_path / "missing.txt")


# --- real data ----------------------------------------------------------------------------------------
def test_scene0000_real(scene0000):
    scene, _ = scene0000
    assert scene.num_points == 81369
    assert sorted(scene.arrays) == ["color", "coord", "instance", "normal", "segment20", "segment200", "superpoint"]
    length = np.linalg.norm(scene["normal"], axis=1)
    assert np.abs(length - 1).max() < 1e-3  # 1e-8 in the normalization shortens normals of tiny faces a bit
    assert np.array_equal(np.unique(scene["superpoint"]), np.arange(668))
    assert len(np.unique(scene["instance"][scene["instance"] >= 0])) == 55
    assert scene.meta["source"] == ["scene0000_00_vh_clean_2.ply", "scene0000_00_vh_clean_2.0.010000.segs.json",
                                    "scene0000_00.aggregation.json"]
    assert scene.meta["classes"]["segment20"] == list(CLASS_NAMES_20)


def test_scene0000_unmapped_names_reported_once(scene0000, scannet_dir):
    scene, caught = scene0000
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "scene0000_00" in message and "dishrack" in message and "trashcan" in message
    groups = json.loads((scannet_dir / "scene0000_00" / "scene0000_00.aggregation.json").read_text())["segGroups"]
    for g in groups:
        if g["label"] in ("dishrack", "trashcan"):
            here = scene["instance"] == g["id"]
            assert here.any()
            assert (scene["segment20"][here] == -1).all() and (scene["segment200"][here] == -1).all()


def test_scene0470_test_style(scannet_dir, label_map):
    folder = scannet_dir / "scene0470_00"
    scene = read_scannet_scene(folder, label_map)
    assert scene.num_points == 67465
    assert sorted(scene.arrays) == ["color", "coord", "normal", "superpoint"]  # no segs.json: from the mesh
    assert scene.meta["superpoint_source"] == "mesh"
    sp = scene["superpoint"]
    counts = np.bincount(sp)
    assert counts.min() >= 20 and 100 < len(counts) < 2000  # ScanNet's min size; a room's usual segment count
    labels = np.asarray(plyfile.PlyData.read(str(folder / "scene0470_00_vh_clean_2.labels.ply"))["vertex"]["label"])
    assert len(labels) == 67465
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 5, 7, 8, 9, 30, 37, 39]
    seg20 = nyu40_to_segment20(labels)
    assert seg20.min() >= -1 and seg20.max() <= 19
    assert sorted(np.unique(seg20).tolist()) == [-1, 0, 1, 4, 6, 7, 8, 19]  # 0, 30, 37 are not ScanNet-20


def test_parity_with_reference(scene0000, scannet_dir):
    ref = torch.load(fixture_file("scannet_preprocess_scene0000_00.pt"), weights_only=True)
    scene, _ = scene0000
    assert scene.name == ref["scene"]
    for key, value in ref["arrays"].items():
        value = value.numpy()
        assert scene[key].shape == value.shape, key
        if key in ("coord", "normal"):
            np.testing.assert_allclose(scene[key], value, rtol=0, atol=1e-6, err_msg=key)
        else:
            assert np.array_equal(scene[key].astype(np.int64), value.astype(np.int64)), key


# --- preprocessing ------------------------------------------------------------------------------------
quiet_unmapped = pytest.mark.filterwarnings("ignore::volt.data.scannet.UnmappedLabelWarning")


@quiet_unmapped
def test_prepare_end_to_end(tmp_path, scannet_dir, scene0000, capsys):
    out = tmp_path / "out"
    splits = {"train": ["scene0000_00"], "test": ["scene0470_00"]}
    summary = prepare_scannet(scannet_dir, out, scannet_dir / TSV, splits=splits, progress=False)
    assert sorted(summary.written) == ["test/scene0470_00", "train/scene0000_00"] and summary.exit_code == 0
    written = read_scene(out / "train" / "scene0000_00")
    for key, value in scene0000[0].arrays.items():
        assert np.array_equal(written[key], value), key
    assert sorted(read_scene(out / "test" / "scene0470_00").arrays) == ["color", "coord", "normal", "superpoint"]

    again = prepare_scannet(scannet_dir, out, scannet_dir / TSV, splits=splits, progress=False)
    assert sorted(again.skipped) == ["test/scene0470_00", "train/scene0000_00"] and not again.written

    (out / "train" / "scene0000_00" / "stale.txt").write_text("a file the rewrite must drop")
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    (split_dir / "scannetv2_train.txt").write_text("scene0000_00\n")
    tool = load_tool("prepare_scannet")
    args = ["--raw", str(scannet_dir), "--labels", str(scannet_dir / TSV), "--out", str(out),
            "--split-dir", str(split_dir), "--no-progress"]
    assert tool.main(args + ["--overwrite"]) == 0
    assert "written 1" in capsys.readouterr().out
    assert not (out / "train" / "scene0000_00" / "stale.txt").exists()

    (split_dir / "scannetv2_val.txt").write_text("scene0000_00\nscene9999_99\n")
    assert tool.main(args) == 1
    report = capsys.readouterr().out
    assert "FAILED val/scene9999_99" in report and "scene folder not found" in report
    assert (out / "val" / "scene0000_00" / "coord.npy").is_file()


@quiet_unmapped
def test_prepare_test_root_and_corrupt_scene(tmp_path, scannet_dir):
    raw = tmp_path / "scans"
    bad = raw / "scene0000_00" / "scene0000_00_vh_clean_2.ply"
    bad.parent.mkdir(parents=True)
    bad.write_bytes((scannet_dir / "scene0000_00" / bad.name).read_bytes()[:1_000_000])
    splits = {"train": ["scene0000_00"], "test": ["scene0470_00"]}
    summary = prepare_scannet(raw, tmp_path / "out", scannet_dir / TSV, splits=splits, test_root=scannet_dir,
                              progress=False)
    assert summary.written == ["test/scene0470_00"]
    assert list(summary.failed) == ["train/scene0000_00"]
    assert "scene0000_00_vh_clean_2.ply" in summary.failed["train/scene0000_00"]
    assert summary.exit_code == 1
    assert not (tmp_path / "out" / "train" / "scene0000_00").exists()


def test_prepare_default_split_and_bad_tsv(tmp_path, tiny_tsv):
    raw = tmp_path / "scans"
    _synthetic_scene(raw, "scene0001_00", [0, 0, 1, 1], [{"id": 0, "segments": [0, 1], "label": "chair"}])
    _write_mesh(raw / "scene0002_00" / "scene0002_00_vh_clean_2.ply", TET_XYZ, TET_FACES)
    summary = prepare_scannet(raw, tmp_path / "out", tiny_tsv, progress=False)
    assert summary.written == ["train/scene0001_00", "train/scene0002_00"]
    assert read_scene(tmp_path / "out" / "train" / "scene0001_00")["segment20"].tolist() == [4, 4, 4, 4]
    with pytest.raises(DataError, match="nope.tsv"):
        prepare_scannet(raw, tmp_path / "out2", tmp_path / "nope.tsv", progress=False)
