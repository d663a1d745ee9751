"""Metrics, report and submission files: hand-computed tables, the reference mIoU definition, round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from volt.data.scannet_classes import VALID_CLASS_IDS_20, VALID_CLASS_IDS_200
from volt.engine import report, submission
from volt.engine.metrics import ConfusionMatrix, intersection_and_union
from volt.errors import DataError

# K = 4. Points with ground truth -1 are dropped, including the one predicted as class 3.
# Kept: gt [0, 0, 1, 1, 2], pred [0, 1, 1, 1, 0] ->
#   I = [1, 2, 0, 0], T = [2, 2, 1, 0], P = [2, 3, 0, 0], U = T + P - I = [3, 3, 1, 0]
#   IoU = [1/3, 2/3, 0, 0]; class 3 is absent from GT and prediction and still counts 0 in the mean.
TARGET = np.array([0, 0, 1, 1, 2, -1, -1])
PRED = np.array([0, 1, 1, 1, 0, 3, 0])
NAMES = ("wall", "floor", "chair", "sofa")


def hand_metrics():
    return ConfusionMatrix(4, NAMES).update(PRED, TARGET).compute()


def test_hand_computed_table():
    m = hand_metrics()
    np.testing.assert_array_equal(m.intersection, [1, 2, 0, 0])
    np.testing.assert_array_equal(m.union, [3, 3, 1, 0])
    np.testing.assert_array_equal(m.target, [2, 2, 1, 0])
    np.testing.assert_array_equal(m.predicted, [2, 3, 0, 0])
    np.testing.assert_allclose(m.iou, [1 / 3, 2 / 3, 0, 0])
    assert m.miou == pytest.approx(0.25)  # (1/3 + 2/3 + 0 + 0) / 4: the absent class counts 0
    assert m.miou_present == pytest.approx(1 / 3)  # over the 3 classes present in GT
    np.testing.assert_allclose(m.acc, [0.5, 1.0, 0, 0])
    assert m.macc == pytest.approx(0.375)
    assert m.allacc == pytest.approx(0.6)
    assert m.num_points == 5
    np.testing.assert_array_equal(m.present, [True, True, True, False])


def test_predicted_but_absent_class_counts_zero():
    # Class 2 is predicted but not in GT: IoU 0 (union > 0), still in the all-class mean.
    m = ConfusionMatrix(3).update(np.array([0, 2]), np.array([0, 0])).compute()
    np.testing.assert_allclose(m.iou, [0.5, 0, 0])
    assert m.miou == pytest.approx(0.5 / 3)
    assert m.miou_present == pytest.approx(0.5)


def reference_histogram(pred, target, k):
    """The reference's histogram formulation, written independently of ConfusionMatrix."""
    pred = pred.copy()
    pred[target == -1] = -1
    inter = pred[pred == target]
    area_i = np.histogram(inter, bins=k, range=(0, k - 1))[0]
    area_p = np.histogram(pred, bins=k, range=(0, k - 1))[0]
    area_t = np.histogram(target, bins=k, range=(0, k - 1))[0]
    return area_i, area_p + area_t - area_i, area_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_and_accumulation_equals_concatenation(seed):
    rng = np.random.default_rng(seed)
    k = 7
    sizes = rng.integers(0, 300, size=5)
    preds = [rng.integers(0, k - 1, size=n) for n in sizes]  # class k-1 never predicted
    targets = [rng.integers(-1, k - 2, size=n) for n in sizes]  # classes k-2, k-1 never in GT
    cm = ConfusionMatrix(k)
    for p, t in zip(preds, targets):
        cm.update(torch.from_numpy(p), t)  # torch and numpy inputs mix
    whole = ConfusionMatrix(k).update(np.concatenate(preds), np.concatenate(targets))
    np.testing.assert_array_equal(cm.matrix, whole.matrix)
    i, u, t = reference_histogram(np.concatenate(preds), np.concatenate(targets), k)
    np.testing.assert_array_equal(cm.compute().intersection, i)
    np.testing.assert_array_equal(cm.compute().union, u)
    np.testing.assert_array_equal(cm.compute().target, t)
    assert cm.compute().miou == pytest.approx(np.mean(i / (u + 1e-10)))
    for got, want in zip(intersection_and_union(np.concatenate(preds), np.concatenate(targets), k), (i, u, t)):
        np.testing.assert_array_equal(got, want)
    merged = ConfusionMatrix(k).update(preds[0], targets[0]).merge(
        ConfusionMatrix(k).update(np.concatenate(preds[1:]), np.concatenate(targets[1:])))
    np.testing.assert_array_equal(merged.matrix, whole.matrix)


@pytest.mark.parametrize(
    "pred, target, message",
    [
        ([0, 1], [0, 4], "ground-truth labels"),
        ([0, 1], [0, -2], "ground-truth labels"),
        ([0, 5], [0, 1], "predictions must lie"),
        ([0, -1], [0, 1], "predictions must lie"),
        ([0], [0, 1], "1 predictions for 2 labels"),
    ],
)
def test_bad_labels_raise(pred, target, message):
    with pytest.raises(DataError, match=message):
        ConfusionMatrix(4).update(np.array(pred), np.array(target))


def test_prediction_at_ignored_point_is_not_checked():
    m = ConfusionMatrix(2).update(np.array([-1, 9, 1]), np.array([-1, -1, 1])).compute()
    np.testing.assert_array_equal(m.intersection, [0, 1])


def test_table_has_every_class_and_marks_absent():
    table = report.format_table(hand_metrics(), title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo"
    for name in NAMES:
        assert sum(f" {name} " in line for line in lines) == 1
    sofa = next(line for line in lines if " sofa " in line)
    assert report.ABSENT in sofa and "IoU counts 0" in sofa
    assert all(report.ABSENT not in line for line in lines if " chair " in line)
    assert "mIoU          25.00  mean over all 4 classes (reference definition)" in lines
    assert "mIoU present  33.33  mean over the 3 classes present in GT" in lines
    assert "mAcc          37.50  all 4 classes (present only: 50.00)" in lines
    assert "allAcc        60.00  over 5 labelled points" in lines


def test_json_has_per_class_rows(tmp_path):
    path = report.save_json(tmp_path / "sub" / "metrics.json", hand_metrics(), split="val", scenes=[{"name": "a"}])
    data = json.loads(path.read_text())
    assert data["mIoU"] == pytest.approx(0.25) and data["mIoU_present"] == pytest.approx(1 / 3)
    assert data["allAcc"] == pytest.approx(0.6) and data["mAcc"] == pytest.approx(0.375)
    assert [c["name"] for c in data["classes"]] == list(NAMES)
    assert data["classes"][1]["iou"] == pytest.approx(2 / 3) and data["classes"][1]["union"] == 3
    assert [c["present"] for c in data["classes"]] == [True, True, True, False]
    assert data["split"] == "val" and data["scenes"] == [{"name": "a"}]
    empty = ConfusionMatrix(2).update(np.array([0]), np.array([-1])).compute()
    data = json.loads(report.save_json(tmp_path / "e.json", empty).read_text())
    assert data["mIoU_present"] is None and data["mIoU"] == 0.0 and not math.isnan(data["mAcc"])


# --- submission files ------------------------------------------------------------------------------------
def test_scannet20_txt_round_trip(tmp_path):
    pred = np.array([0, 12, 19, 14, 0])
    path = submission.write_scannet_txt(tmp_path / "scene0707_00.txt", pred)
    # desk is training index 12 and NYU40 id 14; otherfurniture 19 -> 39; refrigerator 14 -> 24.
    assert path.read_text().split() == ["1", "14", "39", "24", "1"]
    np.testing.assert_array_equal(submission.read_scannet_txt(path), pred)


def test_scannet200_txt_round_trip(tmp_path):
    ids = submission.scannet_class_ids(200)
    assert ids == VALID_CLASS_IDS_200 and submission.scannet_class_ids(20) == VALID_CLASS_IDS_20
    pred = np.arange(200)[::-1].copy()
    path = submission.write_scannet_txt(tmp_path / "s.txt", pred, ids)
    assert int(path.read_text().split()[0]) == 1191
    np.testing.assert_array_equal(submission.read_scannet_txt(path, ids), pred)


def test_scannet_txt_bad_values(tmp_path):
    with pytest.raises(DataError, match="must lie in"):
        submission.write_scannet_txt(tmp_path / "x.txt", np.array([0, 20]))
    (tmp_path / "y.txt").write_text("1\n13\n")  # 13 is a NYU40 id but not one of the 20
    with pytest.raises(DataError, match="id 13"):
        submission.read_scannet_txt(tmp_path / "y.txt")


def test_nuscenes_bin_round_trip(tmp_path):
    pred = np.array([0, 15, 3, 10], dtype=np.int64)
    path = submission.write_nuscenes_bin(tmp_path, "abc123", pred, split="test")
    assert path == tmp_path / "lidarseg" / "test" / "abc123_lidarseg.bin"
    raw = np.fromfile(path, dtype=np.uint8)
    np.testing.assert_array_equal(raw, [1, 16, 4, 11])  # class + 1, uint8: one byte per point
    assert path.stat().st_size == 4
    np.testing.assert_array_equal(submission.read_nuscenes_bin(path), pred)
    with pytest.raises(DataError, match="must lie in"):
        submission.write_nuscenes_bin(tmp_path, "bad", np.array([16]))
    np.zeros(3, dtype=np.uint8).tofile(tmp_path / "zero.bin")
    with pytest.raises(DataError, match=r"\[1, 16\]"):
        submission.read_nuscenes_bin(tmp_path / "zero.bin")


def test_nuscenes_meta(tmp_path):
    path = submission.write_nuscenes_meta(tmp_path, "val")
    assert path == tmp_path / "val" / "submission.json"
    meta = json.loads(path.read_text())["meta"]
    assert meta == {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                    "use_external": False}
    with pytest.raises(ValueError, match="unknown"):
        submission.write_nuscenes_meta(tmp_path, use_sonar=True)
