"""nuScenes lidarseg: readers on the real sample files, the 32->16 map, bad input, tables, splits, preprocessing."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import NUSCENES_SWEEP, load_tool

from volt.data import nuscenes_splits as splits
from volt.data.io import read_scene
from volt.data.nuscenes import (
    CLASS_NAMES_16,
    FINE_TO_TRAIN,
    key_frame_lidar,
    prepare_nuscenes,
    read_lidarseg,
    read_nuscenes_sweep,
    read_pcd_bin,
)
from volt.errors import DataError

SMALL_SWEEP = "nuscenes/samples/LIDAR_TOP/n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470948018.pcd.bin"
SMALL_LABELS = "nuscenes/lidarseg/v1.0-trainval/5f6c1e0a0c3b444b97e78d2aa3fa34d2_lidarseg.bin"

# Spec §3.2 restated by train id: which fine ids land in each of the 16 classes (all others -> -1).
SPEC_TRAIN_TO_FINE = {
    0: [9], 1: [14], 2: [15, 16], 3: [17], 4: [18], 5: [21], 6: [2, 3, 4, 6], 7: [12],
    8: [22], 9: [23], 10: [24], 11: [25], 12: [26], 13: [27], 14: [28], 15: [30],
}  # fmt: skip


# ------------------------------------------------------------------------------------- class map, splits


def test_fine_to_train_matches_spec_table():
    assert len(FINE_TO_TRAIN) == 32 and len(CLASS_NAMES_16) == 16
    expected = [-1] * 32
    for train_id, fine_ids in SPEC_TRAIN_TO_FINE.items():
        for fine in fine_ids:
            expected[fine] = train_id
    assert list(FINE_TO_TRAIN) == expected
    assert CLASS_NAMES_16[3] == "car" and CLASS_NAMES_16[10] == "driveable_surface"


def test_split_lists():
    assert len(splits.VAL) == len(set(splits.VAL)) == 150
    assert splits.VAL[:3] == ("scene-0003", "scene-0012", "scene-0013")
    assert len(splits.TRAIN) == len(set(splits.TRAIN)) == 700
    assert len(splits.TEST) == len(set(splits.TEST)) == 150
    assert not set(splits.TRAIN) & set(splits.VAL)
    assert not (set(splits.TRAIN) | set(splits.VAL)) & set(splits.TEST)
    assert splits.MINI_TRAIN == tuple(f"scene-{n:04d}" for n in (61, 553, 655, 757, 796, 1077, 1094, 1100))
    assert splits.MINI_VAL == ("scene-0103", "scene-0916")
    assert set(splits.MINI_TRAIN + splits.MINI_VAL) <= set(splits.TRAIN + splits.VAL)
    # Digests of the devkit's lists (joined with ","), so an accidental edit of a run is caught.
    digests = {"TRAIN": "d75a775e17eac454", "VAL": "a45b01ed90bcefb2", "TEST": "3f033eee3b1aa0c1"}
    for name, digest in digests.items():
        assert hashlib.sha256(",".join(getattr(splits, name)).encode()).hexdigest()[:16] == digest, name
    assert splits.split_of("v1.0-mini", "scene-0553") == "train"  # mini has its own split ...
    assert splits.split_of("v1.0-trainval", "scene-0553") == "val"  # ... unlike trainval
    assert splits.split_of("v1.0-test", "scene-0077") == "test"
    assert splits.split_of("v1.0-trainval", "scene-9999") is None
    with pytest.raises(ValueError, match="v2.0"):
        splits.split_of("v2.0", "scene-0001")


# ------------------------------------------------------------------------------------------- real data


def test_real_sweep(shared_data):
    points = read_pcd_bin(shared_data / NUSCENES_SWEEP)
    assert points.shape == (34688, 5) and points.dtype == np.float32
    scene = read_nuscenes_sweep(shared_data / NUSCENES_SWEEP)
    assert scene.num_points == 34688 and "segment" not in scene
    assert scene["coord"].dtype == np.float32 and scene["strength"].shape == (34688, 1)
    assert 0.0 <= scene["strength"].min() and scene["strength"].max() <= 1.0
    np.testing.assert_array_equal(scene["strength"][:, 0], points[:, 3] / np.float32(255))
    assert scene.meta["dataset"] == "nuscenes" and scene.meta["classes"]["segment"] == list(CLASS_NAMES_16)


def test_real_lidarseg_pair(shared_data):
    raw = np.fromfile(shared_data / SMALL_LABELS, dtype=np.uint8)
    assert set(raw.tolist()) == {17, 24, 27, 28, 30, 31}
    scene = read_nuscenes_sweep(shared_data / SMALL_SWEEP, shared_data / SMALL_LABELS, name="pair")
    assert scene.name == "pair" and scene.num_points == 40 and scene["segment"].dtype == np.int32
    expected = {17: 3, 24: 10, 27: 13, 28: 14, 30: 15, 31: -1}
    assert scene["segment"].tolist() == [expected[v] for v in raw.tolist()]
    assert scene.meta["source"] == [str(shared_data / SMALL_SWEEP), str(shared_data / SMALL_LABELS)]


# ------------------------------------------------------------------------------------------- bad input


def _nan_sweep(data: bytes) -> bytes:
    points = np.frombuffer(data, dtype="<f4").reshape(-1, 5).copy()
    points[7, 1] = np.nan
    return points.tobytes()


@pytest.mark.parametrize(
    "case, make_pcd, make_labels, message",
    [
        ("truncated", lambda d: d[:-3], None, "multiple of 20"),
        ("empty", lambda d: b"", None, "empty"),
        ("nan", _nan_sweep, None, "NaN"),
        ("short_labels", None, lambda d: d[:39], "39 labels"),
        ("fine_id_40", None, lambda d: d[:5] + bytes([40]) + d[6:], "ids [40] are out of range"),
        ("empty_labels", None, lambda d: b"", "empty"),
    ],
)
def test_bad_input(shared_data, tmp_path, case, make_pcd, make_labels, message):
    pcd, labels = tmp_path / f"{case}.pcd.bin", tmp_path / f"{case}_lidarseg.bin"
    pcd_bytes = (shared_data / SMALL_SWEEP).read_bytes()
    pcd.write_bytes(make_pcd(pcd_bytes) if make_pcd else pcd_bytes)
    label_bytes = (shared_data / SMALL_LABELS).read_bytes()
    labels.write_bytes(make_labels(label_bytes) if make_labels else label_bytes)
    bad = pcd if make_pcd else labels
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_nuscenes_sweep(pcd, labels)
    assert bad.name in str(info.value)


def test_length_mismatch_names_both_files(shared_data, tmp_path):
    labels = tmp_path / "x_lidarseg.bin"
    labels.write_bytes((shared_data / SMALL_LABELS).read_bytes()[:30])
    with pytest.raises(DataError) as info:
        read_lidarseg(labels, 40, shared_data / SMALL_SWEEP)
    text = str(info.value)
    assert "x_lidarseg.bin" in text and Path(SMALL_SWEEP).name in text and "30" in text and "40" in text


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        read_pcd_bin(tmp_path / "nothing.pcd.bin")
    assert "nothing.pcd.bin" in str(info.value)


# ------------------------------------------------------------------------------------ tables, prepare


def _write_tables(root: Path, version: str, data: Path, scenes: dict[str, int]) -> list[str]:
    """A minimal nuScenes table set with `scenes` (name -> number of samples). Returns lidar tokens.

    Each sample has a key-frame LIDAR_TOP sweep (the real 40-point pcd, with its lidarseg), a
    CAM_FRONT image record and a non-key-frame LIDAR_TOP sweep; the last two must be ignored.
    Extra fields like the real schema's (timestamp, modality, ...) are present and must be ignored.
    """
    tables = {k: [] for k in ("scene", "sample", "sample_data", "sensor", "calibrated_sensor", "lidarseg")}
    tables["sensor"] = [
        {"token": "sen-lidar", "channel": "LIDAR_TOP", "modality": "lidar"},
        {"token": "sen-cam", "channel": "CAM_FRONT", "modality": "camera"},
    ]
    tables["calibrated_sensor"] = [
        {"token": "cal-lidar", "sensor_token": "sen-lidar", "translation": [0, 0, 1.8], "rotation": [1, 0, 0, 0]},
        {"token": "cal-cam", "sensor_token": "sen-cam", "translation": [1, 0, 1.5], "rotation": [1, 0, 0, 0]},
    ]
    pcd, labels = (data / SMALL_SWEEP).read_bytes(), (data / SMALL_LABELS).read_bytes()
    tokens = []
    for s, (name, count) in enumerate(scenes.items()):
        tables["scene"].append({"token": f"sc{s}", "name": name, "description": "test", "nbr_samples": count})
        for i in range(count):
            sample, lidar = f"sa{s}{i}", f"lidar{s}{i}"
            tokens.append(lidar)
            tables["sample"].append({"token": sample, "scene_token": f"sc{s}", "timestamp": 1000 * i})
            pcd_name = f"samples/LIDAR_TOP/log__LIDAR_TOP__{s}{i}.pcd.bin"
            common = {"sample_token": sample, "ego_pose_token": "e", "timestamp": 1000 * i, "prev": "", "next": ""}
            tables["sample_data"] += [
                {"token": lidar, "filename": pcd_name, "is_key_frame": True, "calibrated_sensor_token": "cal-lidar"},
                {"token": f"cam{s}{i}", "filename": f"samples/CAM_FRONT/{s}{i}.jpg", "is_key_frame": True,
                 "calibrated_sensor_token": "cal-cam"},
                {"token": f"sweep{s}{i}", "filename": f"sweeps/LIDAR_TOP/{s}{i}.pcd.bin", "is_key_frame": False,
                 "calibrated_sensor_token": "cal-lidar"},
            ]  # fmt: skip
            for record in tables["sample_data"][-3:]:
                record.update(common)
            label_name = f"lidarseg/{version}/{lidar}_lidarseg.bin"
            tables["lidarseg"].append({"token": f"ls{s}{i}", "sample_data_token": lidar, "filename": label_name})
            for rel, blob in ((pcd_name, pcd), (label_name, labels)):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(blob)
    (root / version).mkdir(parents=True, exist_ok=True)
    for name, records in tables.items():
        (root / version / f"{name}.json").write_text(json.dumps(records))
    return tokens


@pytest.fixture
def mini_root(shared_data, tmp_path):
    root = tmp_path / "nuscenes"
    _write_tables(root, "v1.0-mini", shared_data, {"scene-0061": 2, "scene-0103": 2})
    return root


def test_key_frame_lidar(mini_root):
    items = key_frame_lidar(mini_root, "v1.0-mini")
    assert [(it["token"], it["scene"]) for it in items] == [
        ("lidar00", "scene-0061"), ("lidar01", "scene-0061"), ("lidar10", "scene-0103"), ("lidar11", "scene-0103"),
    ]  # fmt: skip
    assert items[0]["pcd"] == mini_root / "samples/LIDAR_TOP/log__LIDAR_TOP__00.pcd.bin"
    assert items[0]["lidarseg"] == mini_root / "lidarseg/v1.0-mini/lidar00_lidarseg.bin"
    (mini_root / "v1.0-mini/lidarseg.json").unlink()  # labels are optional (e.g. v1.0-test)
    assert all(it["lidarseg"] is None for it in key_frame_lidar(mini_root, "v1.0-mini"))


@pytest.mark.parametrize("table", ["scene", "sample", "sample_data", "calibrated_sensor", "sensor"])
def test_missing_table(mini_root, table):
    (mini_root / "v1.0-mini" / f"{table}.json").unlink()
    with pytest.raises(DataError, match=f"{table}.json"):
        key_frame_lidar(mini_root, "v1.0-mini")


def test_broken_references(mini_root):
    path = mini_root / "v1.0-mini/sample.json"
    samples = json.loads(path.read_text())
    path.write_text(json.dumps(samples[1:]))  # sa00 disappears: its sample-data now dangles
    with pytest.raises(DataError, match="sa00") as info:
        key_frame_lidar(mini_root, "v1.0-mini")
    assert "sample.json" in str(info.value)
    path.write_text(json.dumps([{"token": "x"}]))
    with pytest.raises(DataError, match="scene_token"):
        key_frame_lidar(mini_root, "v1.0-mini")


def test_missing_referenced_file(mini_root):
    (mini_root / "lidarseg/v1.0-mini/lidar10_lidarseg.bin").unlink()
    with pytest.raises(DataError, match="lidar10_lidarseg.bin"):
        key_frame_lidar(mini_root, "v1.0-mini")
    summary = prepare_nuscenes(mini_root, mini_root.parent / "out", "v1.0-mini", progress=False)
    assert list(summary.failed) == ["lidar10"] and "lidar10_lidarseg.bin" in summary.failed["lidar10"]


def test_prepare_nuscenes(mini_root, shared_data):
    out = mini_root.parent / "out"
    summary = prepare_nuscenes(mini_root, out, "v1.0-mini", progress=False)
    assert sorted(summary.written) == ["lidar00", "lidar01", "lidar10", "lidar11"] and summary.exit_code == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["lidar00", "lidar01"]
    assert sorted(p.name for p in (out / "val").iterdir()) == ["lidar10", "lidar11"]
    scene = read_scene(out / "val" / "lidar10")
    direct = read_nuscenes_sweep(shared_data / SMALL_SWEEP, shared_data / SMALL_LABELS)
    np.testing.assert_array_equal(scene["segment"], direct["segment"])
    np.testing.assert_array_equal(scene["coord"], direct["coord"])
    assert scene.meta["scene"] == "scene-0103" and scene.meta["split"] == "val"

    again = prepare_nuscenes(mini_root, out, "v1.0-mini", progress=False)
    assert sorted(again.skipped) == ["lidar00", "lidar01", "lidar10", "lidar11"] and not again.written
    assert len(prepare_nuscenes(mini_root, out, "v1.0-mini", overwrite=True, progress=False).written) == 4


def test_prepare_bad_sample_and_tool_exit(shared_data, tmp_path):
    root = tmp_path / "nuscenes"
    _write_tables(root, "v1.0-mini", shared_data, {"scene-0655": 2, "scene-0916": 1, "scene-9999": 1})
    truncated = root / "samples/LIDAR_TOP/log__LIDAR_TOP__01.pcd.bin"
    truncated.write_bytes(truncated.read_bytes()[:-7])
    summary = prepare_nuscenes(root, tmp_path / "out", "v1.0-mini", progress=False)
    assert sorted(summary.written) == ["lidar00", "lidar10"]
    assert sorted(summary.failed) == ["lidar01", "lidar20"]
    assert truncated.name in summary.failed["lidar01"] and "scene-9999" in summary.failed["lidar20"]
    main = load_tool("prepare_nuscenes").main
    argv = ["--root", str(root), "--version", "v1.0-mini", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 1
    shutil.rmtree(root / "v1.0-mini")
    _write_tables(root, "v1.0-mini", shared_data, {"scene-0655": 1})
    assert main(argv) == 0


def test_tool_single_sweep(shared_data, tmp_path):
    main = load_tool("prepare_nuscenes").main
    out = tmp_path / "one"
    assert main(["--pcd", str(shared_data / SMALL_SWEEP), "--lidarseg", str(shared_data / SMALL_LABELS),
                 "--out", str(out)]) == 0  # fmt: skip
    scene = read_scene(out)
    assert scene.num_points == 40 and scene["segment"].min() == -1 and scene.meta["dataset"] == "nuscenes"
    bad = tmp_path / "bad.pcd.bin"
    bad.write_bytes(b"\0" * 30)
    assert main(["--pcd", str(bad), "--out", str(tmp_path / "two")]) == 1


def test_tool_unusable_dataset(tmp_path, capsys):
    main = load_tool("prepare_nuscenes").main
    assert main(["--root", str(tmp_path), "--version", "v1.0-trainval", "--out", str(tmp_path / "o")]) == 2
    assert "v1.0-trainval" in capsys.readouterr().err
