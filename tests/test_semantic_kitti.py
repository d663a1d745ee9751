"""SemanticKITTI: the real scan and labels, the learning map, bad input, and preprocessing a sequence tree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import load_tool

from volt.data.io import read_scene
from volt.data.semantic_kitti import (
    CLASS_NAMES_19,
    STANDARD_LEARNING_MAP,
    load_learning_map,
    prepare_semantic_kitti,
    read_kitti_bin,
    read_kitti_label,
    read_kitti_scan,
)
from volt.errors import DataError

SCAN = "semantic_kitti/sequences/00/velodyne/000000.bin"
LABEL = "semantic_kitti/sequences/00/labels/000000.label"
YAML = "semantic_kitti/semantic-kitti.yaml"


def test_builtin_map_equals_yaml(shared_data):
    from_yaml = load_learning_map(shared_data / YAML)
    assert from_yaml.raw_to_train == STANDARD_LEARNING_MAP.raw_to_train
    assert from_yaml.class_names == STANDARD_LEARNING_MAP.class_names == CLASS_NAMES_19
    assert len(CLASS_NAMES_19) == 19 and from_yaml.source.endswith("semantic-kitti.yaml")
    assert load_learning_map(None) is STANDARD_LEARNING_MAP


def test_real_scan(shared_data):
    learning_map = load_learning_map(shared_data / YAML)
    scene = read_kitti_scan(shared_data / SCAN, shared_data / LABEL, learning_map)
    n = 124_668
    assert scene.name == "00_000000" and scene.num_points == n
    assert scene["coord"].shape == (n, 3) and scene["strength"].shape == (n, 1)
    assert 0.0 <= scene["strength"].min() and scene["strength"].max() <= 1.0
    segment, instance = scene["segment"], scene["instance"]
    assert segment.dtype == np.int32 and -1 <= segment.min() and segment.max() <= 18

    # Recompute the labels independently from the yaml and the raw uint32 file.
    doc = yaml.safe_load((shared_data / YAML).read_text())
    raw = np.fromfile(shared_data / LABEL, dtype="<u4")
    expected = np.array([doc["learning_map"][int(v)] - 1 for v in raw & 0xFFFF])
    np.testing.assert_array_equal(segment, expected)
    assert (segment == 0).sum() == 4234  # raw 10 "car" (no moving cars in this scan)

    # Instances: raw upper 16 bits, only on "thing" classes (train ids 0..7), one class per instance.
    ids = raw >> 16
    np.testing.assert_array_equal(instance >= 0, (ids > 0) & (expected >= 0))
    np.testing.assert_array_equal(instance[instance >= 0], ids[instance >= 0])
    assert set(segment[instance >= 0].tolist()) <= set(range(8))
    assert len(np.unique(instance[instance >= 0])) == 14
    for inst in np.unique(instance[instance >= 0]):
        assert len(np.unique(segment[instance == inst])) == 1


def test_scan_without_labels(shared_data):
    scene = read_kitti_scan(shared_data / SCAN, name="x")
    assert scene.name == "x" and "segment" not in scene and "instance" not in scene
    assert scene.meta["dataset"] == "semantic_kitti" and scene.meta["classes"]["segment"] == list(CLASS_NAMES_19)


def _scan(n: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 10, (n, 3)), rng.uniform(0, 1, (n, 1))], axis=1).astype("<f4")


def _labels(n: int = 50, raw_id: int = 40, instance: int = 0) -> np.ndarray:
    return np.full(n, (instance << 16) | raw_id, dtype="<u4")


def _nan_scan() -> bytes:
    points = _scan()
    points[3, 2] = np.inf
    return points.tobytes()


@pytest.mark.parametrize(
    "case, scan_bytes, label_bytes, message",
    [
        ("truncated", _scan().tobytes()[:-5], _labels().tobytes(), "multiple of 16"),
        ("empty", b"", _labels().tobytes(), "empty"),
        ("nan", _nan_scan(), _labels().tobytes(), "NaN or Inf"),
        ("short_labels", _scan().tobytes(), _labels(49).tobytes(), "holds 49 labels but the scan has 50"),
        ("ragged_labels", _scan().tobytes(), _labels().tobytes()[:-2], "multiple of 4"),
        ("unknown_id", _scan().tobytes(), _labels(raw_id=2).tobytes(), "raw semantic ids [2]"),
    ],
)
def test_bad_input(tmp_path, case, scan_bytes, label_bytes, message):
    scan, label = tmp_path / f"{case}.bin", tmp_path / f"{case}.label"
    scan.write_bytes(scan_bytes)
    label.write_bytes(label_bytes)
    bad = scan if case in ("truncated", "empty", "nan") else label
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_kitti_scan(scan, label)
    assert bad.name in str(info.value)


def test_low_level_readers(tmp_path):
    scan = tmp_path / "a.bin"
    scan.write_bytes(_scan(7).tobytes())
    assert read_kitti_bin(scan).shape == (7, 4)
    label = tmp_path / "a.label"
    label.write_bytes(_labels(7, raw_id=10, instance=3).tobytes())
    value = read_kitti_label(label, 7)
    assert value.dtype == np.uint32 and (value & 0xFFFF).tolist() == [10] * 7 and (value >> 16).tolist() == [3] * 7
    with pytest.raises(DataError, match="not found"):
        read_kitti_bin(tmp_path / "missing.bin")


def test_bad_yaml(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("labels: {0: unlabeled}\nlearning_map: {0: 0}\n")
    with pytest.raises(DataError, match="learning_map_inv") as info:
        load_learning_map(path)
    assert "map.yaml" in str(info.value)


def _sequence(root: Path, seq: str, frames: int, labels: bool) -> None:
    for i in range(frames):
        (root / "sequences" / seq / "velodyne").mkdir(parents=True, exist_ok=True)
        (root / "sequences" / seq / "velodyne" / f"{i:06d}.bin").write_bytes(_scan(seed=i).tobytes())
        if labels:
            (root / "sequences" / seq / "labels").mkdir(parents=True, exist_ok=True)
            label = _labels(raw_id=10, instance=i + 1)
            (root / "sequences" / seq / "labels" / f"{i:06d}.label").write_bytes(label.tobytes())


def test_prepare_semantic_kitti(shared_data, tmp_path):
    root, out = tmp_path / "kitti", tmp_path / "out"
    for rel in (SCAN, LABEL):  # the real scan as sequence 00 (train)
        target = root / Path(rel).relative_to("semantic_kitti")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / rel, target)
    _sequence(root, "08", 2, labels=True)  # val
    _sequence(root, "11", 1, labels=False)  # test: no labels
    summary = prepare_semantic_kitti(root, out, progress=False)
    assert summary.exit_code == 0
    assert sorted(summary.written) == ["00_000000", "08_000000", "08_000001", "11_000000"]
    assert [p.name for p in (out / "train").iterdir()] == ["00_000000"]
    assert sorted(p.name for p in (out / "val").iterdir()) == ["08_000000", "08_000001"]
    val = read_scene(out / "val" / "08_000001")
    assert val["segment"].tolist() == [0] * 50 and val["instance"].tolist() == [2] * 50
    assert val.meta["split"] == "val" and val.meta["learning_map"] == "built-in"
    test = read_scene(out / "test" / "11_000000")
    assert "segment" not in test and test.num_points == 50
    train = read_scene(out / "train" / "00_000000")
    assert train.num_points == 124_668 and train["segment"].max() <= 18

    again = prepare_semantic_kitti(root, out, progress=False)
    assert len(again.skipped) == 4 and not again.written

    # A val scan without its label fails alone; an unknown sequence is reported; the tool exits 1.
    (root / "sequences/08/labels/000001.label").unlink()
    _sequence(root, "30", 1, labels=True)
    summary = prepare_semantic_kitti(root, out, overwrite=True, progress=False)
    assert sorted(summary.failed) == ["08_000001", "sequence 30"]
    assert "000001.label" in summary.failed["08_000001"]
    main = load_tool("prepare_semantic_kitti").main
    assert main(["--root", str(root), "--out", str(out), "--no-progress"]) == 1
    shutil.rmtree(root / "sequences/30")
    (root / "sequences/08/velodyne/000001.bin").unlink()
    yaml_path = shared_data / YAML
    argv = ["--root", str(root), "--out", str(out), "--no-progress", "--overwrite", "--yaml", str(yaml_path)]
    assert main(argv) == 0
    assert read_scene(out / "val" / "08_000000").meta["learning_map"] == str(yaml_path)


def test_tool_unusable_dataset(tmp_path, capsys):
    main = load_tool("prepare_semantic_kitti").main
    assert main(["--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "sequences" in capsys.readouterr().err
