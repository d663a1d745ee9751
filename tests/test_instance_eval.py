"""ScanNet instance AP: parity with the reference evaluator's fixture, hand-built cases, submission files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import fixture_file

from volt.engine import instance_eval
from volt.engine.instance_eval import InstanceEvaluator, evaluate_scenes, format_ap_table
from volt.engine.instance_submission import read_instance_submission, write_instance_submission
from volt.errors import DataError

CHAIR, SOFA, TABLE, WALL = 4, 5, 6, 0
N = 1500
# Point ranges of the hand-built scene: two chairs, a sofa, a void strip and a (large) wall instance.
A, B, C, VOID, WALL_PTS = range(300), range(300, 600), range(600, 900), range(900, 1200), range(1200, 1500)


def build_scene(gt=((CHAIR, 1, A), (CHAIR, 2, B), (SOFA, 3, C))):
    """segment/instance arrays: the listed (class, id, points) instances, void strip, wall instance 9."""
    segment = np.full(N, -1, dtype=np.int64)
    instance = np.full(N, -1, dtype=np.int64)
    for cls, iid, pts in gt:
        segment[list(pts)], instance[list(pts)] = cls, iid
    segment[list(WALL_PTS)], instance[list(WALL_PTS)] = WALL, 9
    return segment, instance


def mask(*parts) -> np.ndarray:
    m = np.zeros(N, dtype=bool)
    for pts in parts:
        m[list(pts)] = True
    return m


def evaluate(preds, gt=None, **kwargs):
    """preds: list of (mask, class, score) on the hand-built scene."""
    segment, instance = build_scene() if gt is None else build_scene(gt)
    masks = np.stack([p[0] for p in preds]) if preds else np.zeros((0, N), dtype=bool)
    ev = InstanceEvaluator(**kwargs)
    ev.add(segment, instance, masks, np.array([p[1] for p in preds], dtype=np.int64),
           np.array([p[2] for p in preds], dtype=np.float64), name="hand")
    return ev.compute()


PERFECT = [(mask(A), CHAIR, 0.9), (mask(B), CHAIR, 0.8), (mask(C), SOFA, 0.7)]


def flat(result):
    out = {k: v for k, v in result.items() if k != "classes"}
    for name, row in result["classes"].items():
        out.update({f"{name}/{k}": v for k, v in row.items()})
    return out


# --- parity with the reference evaluator -------------------------------------------------------------------

def test_fixture_parity():
    ref = torch.load(fixture_file("scannet_instance_ap.pt"), weights_only=True)
    got = evaluate_scenes(ref["scenes"], class_names=ref["class_names"], ignore_classes=ref["segment_ignore_index"],
                          min_region_size=ref["min_region_size"])
    want, have = flat(ref["output"]), flat(got)
    assert list(have) == list(want)
    for key, w in want.items():
        if math.isnan(w):
            assert math.isnan(have[key]), key
        else:
            assert abs(have[key] - w) <= 1e-9, (key, have[key], w)


def test_fixture_streaming_and_chunking(monkeypatch):
    ref = torch.load(fixture_file("scannet_instance_ap.pt"), weights_only=True)
    kwargs = {"class_names": ref["class_names"], "ignore_classes": ref["segment_ignore_index"]}
    whole = flat(evaluate_scenes(ref["scenes"], **kwargs))
    monkeypatch.setattr(instance_eval, "_CHUNK", 3 * 6000)  # three masks per bincount block
    ev = InstanceEvaluator(**kwargs)
    for s in reversed(ref["scenes"]):  # scene order and numpy inputs must not matter
        ev.add(s["segment"].numpy(), s["instance"].numpy(), s["pred_masks"].numpy() != 0, s["pred_classes"].numpy(),
               s["pred_scores"].numpy())
    assert ev.num_scenes == len(ref["scenes"])
    np.testing.assert_array_equal(list(flat(ev.compute()).values()), list(whole.values()))


# --- hand-built cases ----------------------------------------------------------------------------------------

def test_perfect_prediction_is_ap_1():
    r = evaluate(PERFECT)
    assert (r["all_ap"], r["all_ap_50%"], r["all_ap_25%"]) == (1.0, 1.0, 1.0)
    for name in ("chair", "sofa"):
        assert r["classes"][name] == {"ap": 1.0, "ap50%": 1.0, "ap25%": 1.0, "prec50%": 1.0, "rec50%": 1.0}
    assert "wall" not in r["classes"] and "floor" not in r["classes"] and len(r["classes"]) == 18


def test_iou_0_6_counts_at_0_5_not_at_0_7():
    part = [(mask(range(180)), CHAIR, 0.9)]  # 180 of chair A's 300 points: IoU exactly 0.6
    gt = ((CHAIR, 1, A),)
    assert evaluate(part, gt, overlaps=[0.5])["all_ap"] == 1.0
    assert evaluate(part, gt, overlaps=[0.7])["all_ap"] == 0.0
    r = evaluate(part, gt)
    assert r["all_ap_50%"] == 1.0 and r["all_ap_25%"] == 1.0
    assert r["all_ap"] == pytest.approx(2 / 9, abs=1e-15)  # of 0.50:0.05:0.90 only 0.50 and 0.55 are below 0.6


def test_duplicates_become_false_positives():
    dup = [(mask(A), CHAIR, 0.9), (mask(A), CHAIR, 0.8), (mask(B), CHAIR, 0.7), (mask(C), SOFA, 0.7)]
    chair = evaluate(dup)["classes"]["chair"]
    # Ranked: 0.9 TP, 0.8 FP, 0.7 TP -> PR points (p, r) = (2/3, 1), (1/2, 1/2), (1, 1/2), end (1, 0);
    # step widths 1/4 each -> AP = (2/3 + 1/2 + 1 + 1) / 4 = 19/24; best F1 at (2/3, 1).
    assert chair["ap50%"] == pytest.approx(19 / 24, abs=1e-15)
    assert (chair["prec50%"], chair["rec50%"]) == (pytest.approx(2 / 3), 1.0)
    # Exactly as if the duplicate were a stray chair prediction on the sofa's points.
    stray = [dup[0], (mask(C), CHAIR, 0.8), dup[2], dup[3]]
    np.testing.assert_equal(flat(evaluate(stray)), flat(evaluate(dup)))  # NaN == NaN here
    # The highest-scored duplicate keeps the match, whatever the input order.
    swapped = [(mask(A), CHAIR, 0.8), (mask(A), CHAIR, 0.9), dup[2], dup[3]]
    np.testing.assert_equal(flat(evaluate(swapped)), flat(evaluate(dup)))


def test_a_matched_prediction_is_not_matched_again():
    # p1 = chair A + 200 points of chair B (IoU 0.6 with A, 1/3 with B); p2 = chair A exactly.
    p1, p2 = (mask(A, range(300, 500)), CHAIR, 0.9), (mask(A), CHAIR, 0.8)
    gt = ((CHAIR, 1, A), (CHAIR, 2, B))
    # Instances in id order, predictions in input order: at 0.25 A takes p1 (TP 0.9) and p2 is a duplicate
    # (FP 0.8); p1 is used up, so B stays a false negative: PR (1/2, 1/2), (1, 1/2), end -> AP 1/2.
    assert evaluate([p1, p2], gt)["classes"]["chair"]["ap25%"] == 0.5
    # Input order matters in the benchmark's greedy matching: p2 first makes p1 the (unused) duplicate of A,
    # free to match B at 0.25, so both instances are found and AP25 is 1.
    assert evaluate([p2, p1], gt)["classes"]["chair"]["ap25%"] == 1.0


@pytest.mark.parametrize("where", [VOID, WALL_PTS], ids=["void", "wall"])
def test_predictions_in_ignored_regions_are_not_penalized(where):
    base = [(mask(A), CHAIR, 0.5)]
    gt = ((CHAIR, 1, A), (SOFA, 3, C))
    r = evaluate(base + [(mask(where), CHAIR, 0.9), (mask(where), WALL, 0.95)], gt)
    assert r["classes"]["chair"]["ap"] == 1.0 and r["classes"]["chair"]["ap25%"] == 1.0
    # The same prediction on annotated sofa points is a false positive ranked above the true one:
    # PR (1/2, 1), (0, 0), end (1, 0); widths 1/2, 1/2, 0 -> AP 1/4.
    assert evaluate(base + [(mask(C), CHAIR, 0.9)], gt)["classes"]["chair"]["ap"] == 0.25


def test_partly_void_prediction_is_ignored_up_to_its_void_fraction():
    # 240 void + 60 sofa points: 80 % ignored, so it is a false positive only for thresholds >= 0.8
    # (0.80, 0.85, 0.90 of the nine) where it costs AP 1 -> 1/4: (6 + 3/4) / 9.
    preds = [(mask(A), CHAIR, 0.5), (mask(range(960, 1200), range(600, 660)), CHAIR, 0.9)]
    r = evaluate(preds, ((CHAIR, 1, A), (SOFA, 3, C)))["classes"]["chair"]
    assert r["ap50%"] == 1.0 and r["ap25%"] == 1.0
    assert r["ap"] == pytest.approx(0.75, abs=1e-15)


def test_min_region_size():
    gt = ((CHAIR, 1, A), (CHAIR, 5, range(600, 650)), (SOFA, 3, range(650, 900)))
    tiny = [(mask(range(660, 720)), CHAIR, 0.99)]  # 60 points: below 100, dropped
    on_small_gt = [(mask(range(600, 650), range(900, 1000)), CHAIR, 0.95)]  # IoU 0.5 with a 50-point chair
    r = evaluate([(mask(A), CHAIR, 0.5)] + tiny + on_small_gt, gt)["classes"]["chair"]
    assert r["ap50%"] == 1.0 and r["ap"] == 1.0 and r["rec50%"] == 1.0  # the small chair is no false negative
    only_small = evaluate([(mask(range(600, 650)), CHAIR, 0.9)], ((CHAIR, 5, range(600, 650)),))
    assert math.isnan(only_small["all_ap"]) and math.isnan(only_small["classes"]["chair"]["ap"])


def test_classes_without_ground_truth_are_excluded():
    extra = [(mask(C), TABLE, 0.99)]  # a table prediction where the scene has no table
    r = evaluate(PERFECT + extra)
    assert all(math.isnan(v) for v in r["classes"]["table"].values())
    assert r["all_ap"] == 1.0 and r["all_ap_50%"] == 1.0  # NaN classes leave the means
    missed = evaluate(PERFECT[:2])  # the sofa has ground truth but no prediction: AP 0 and it counts
    assert missed["classes"]["sofa"] == {"ap": 0.0, "ap50%": 0.0, "ap25%": 0.0, "prec50%": 0.0, "rec50%": 0.0}
    assert missed["all_ap"] == 0.5
    empty = InstanceEvaluator().compute()
    assert math.isnan(empty["all_ap"]) and len(empty["classes"]) == 18


def test_streaming_equals_batch_and_accepts_torch():
    rng = np.random.default_rng(0)
    scenes = []
    for _ in range(3):
        segment, instance = build_scene()
        masks = rng.random((6, N)) < rng.random((6, 1))
        scenes.append({"segment": torch.from_numpy(segment), "instance": torch.from_numpy(instance),
                           "pred_masks": torch.from_numpy(masks), "pred_classes": torch.tensor([4, 4, 5, 6, 0, 4]),
                           "pred_scores": torch.from_numpy(rng.random(6))})
    ev = InstanceEvaluator()
    for s in scenes:
        ev.add(s["segment"], s["instance"], s["pred_masks"], s["pred_classes"], s["pred_scores"])
    assert flat(ev.compute()) == pytest.approx(flat(evaluate_scenes(scenes)), nan_ok=True)


@pytest.mark.parametrize("change, problem", [
    ({"pred_masks": np.zeros((1, N - 1), dtype=bool)}, "shape mismatch"),
    ({"pred_classes": np.array([25])}, "pred_classes must lie"),
    ({"pred_scores": np.array([np.nan])}, "finite"),
    ({"segment": np.full(N, 30)}, "segment ids must lie"),
])
def test_bad_input_raises(change, problem):
    segment, instance = build_scene()
    args = {"segment": segment, "instance": instance, "pred_masks": mask(A)[None], "pred_classes": np.array([CHAIR]),
                "pred_scores": np.array([0.5])}
    args.update(change)
    with pytest.raises(DataError, match=problem) as err:
        InstanceEvaluator().add(**args, name="scene0001_00")
    assert "scene0001_00" in str(err.value)


def test_format_ap_table():
    text = format_ap_table(evaluate(PERFECT[:2]), title="val")
    lines = text.splitlines()
    assert lines[0] == "val" and lines[1].split() == ["class", "AP", "AP50", "AP25", "Prec50", "Rec50"]
    assert lines[3].split() == ["cabinet", "n/a", "n/a", "n/a", "n/a", "n/a"]
    assert "chair" in text and "100.00" in text
    assert lines[-2].split() == ["mean", "50.00", "50.00", "50.00"]


# --- submission files ----------------------------------------------------------------------------------------

def test_submission_round_trip(tmp_path):
    masks = np.stack([mask(A), mask(C)])
    scores = np.array([0.875, 1 / 3])
    index = write_instance_submission(tmp_path, "scene0011_00", masks, np.array([CHAIR, SOFA]), scores)
    assert index == tmp_path / "scene0011_00.txt"
    lines = index.read_text().splitlines()
    assert [ln.split()[:2] for ln in lines] == [["predicted_masks/scene0011_00_000.txt", "5"],
                                                ["predicted_masks/scene0011_00_001.txt", "6"]]  # NYU40 chair, sofa
    mask_lines = (tmp_path / "predicted_masks" / "scene0011_00_001.txt").read_text().splitlines()
    assert len(mask_lines) == N and set(mask_lines) == {"0", "1"} and mask_lines.count("1") == len(C)
    got_masks, got_classes, got_scores = read_instance_submission(tmp_path, "scene0011_00")
    np.testing.assert_array_equal(got_masks, masks)
    np.testing.assert_array_equal(got_classes, [CHAIR, SOFA])
    np.testing.assert_array_equal(got_scores, scores)


def test_submission_bad_input(tmp_path):
    with pytest.raises(DataError, match="pred_classes must lie"):
        write_instance_submission(tmp_path, "scene0011_00", mask(A)[None], np.array([20]), np.array([0.5]))
    with pytest.raises(DataError, match="plain file name"):
        write_instance_submission(tmp_path, "a/b", mask(A)[None], np.array([CHAIR]), np.array([0.5]))
    write_instance_submission(tmp_path, "scene0011_00", mask(A)[None], np.array([CHAIR]), np.array([0.5]))
    (tmp_path / "predicted_masks" / "scene0011_00_000.txt").unlink()
    with pytest.raises(DataError, match="not found"):
        read_instance_submission(tmp_path, "scene0011_00")


# --- the instance test: model building, the tool, the metrics file --------------------------------------------

def _instance_config(root: str = "none"):
    from volt.config import config_from_dict

    return config_from_dict({"task": "instance", "model": {"in_channels": 6, "volt": {"preset": "volt-tiny"}},
                             "instance": {"num_queries": 8, "d_model": 32, "num_heads": 2, "ffn_dim": 64,
                                          "num_layers": 1},
                             "data": {"datasets": [{"condition": "ScanNet", "pipeline": "scannet", "root": root,
                                                    "num_classes": 20, "grid_size": 0.1}]},
                             "train": {"amp": False}})


def test_build_test_segmentor_loads_an_instance_checkpoint():
    from volt.engine.build import build_test_segmentor
    from volt.engine.instance_train import build_instance_segmentor
    from volt.models.instance_segmentor import InstanceSegmentor

    cfg = _instance_config()
    torch.manual_seed(0)
    raw = build_instance_segmentor(cfg, load_init=False).state_dict()
    torch.manual_seed(1)
    ema = build_instance_segmentor(cfg, load_init=False).state_dict()
    model, weights = build_test_segmentor(cfg, {"model": raw, "ema": ema}, "cpu", source="inst.pt")
    assert isinstance(model, InstanceSegmentor) and not model.training and weights == "ema"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())
    model, weights = build_test_segmentor(cfg, {"model": raw, "ema": ema}, "cpu", use_ema=False)
    assert weights == "model" and all(torch.equal(model.state_dict()[k], v) for k, v in raw.items())
    partial = {"model": {k: v for k, v in raw.items() if not k.startswith("backbone.")}}
    with pytest.raises(DataError, match="missing keys") as err:  # every weight comes from the checkpoint
        build_test_segmentor(cfg, partial, "cpu", source="inst.pt")
    assert err.value.path == "inst.pt"


def test_tools_test_reads_an_instance_checkpoint_once(demo_processed, tmp_path, monkeypatch, capsys):
    import json

    from conftest import load_tool

    from volt.config import to_dict
    from volt.engine import checkpoint
    from volt.engine.instance_train import build_instance_segmentor

    cfg = _instance_config(str(demo_processed / "scannet"))
    torch.manual_seed(0)
    path = checkpoint.save_checkpoint(tmp_path / "inst.pt", build_instance_segmentor(cfg, load_init=False),
                                      config=to_dict(cfg))
    reads = []
    real = checkpoint.load_weights_only
    monkeypatch.setattr(checkpoint, "load_weights_only", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    assert load_tool("test").main(["--ckpt", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert reads == [path]
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["checkpoint"] == str(path) and data["weights"] == "model" and data["split"] == "val"
    assert {"AP", "AP50", "AP25"} <= set(data) and "AP50" in capsys.readouterr().out


def test_save_json_writes_nan_as_null_at_any_depth(tmp_path):
    import json

    from volt.engine.report import save_json

    path = save_json(tmp_path / "m.json", None, AP=float("nan"), n=np.int64(3),
                     result={"classes": {7: {"ap": np.float32("nan"), "ap50": np.float64(0.5)}},
                             "curve": (1.0, math.nan, [np.nan])})
    assert json.loads(path.read_text()) == {"AP": None, "n": 3, "result": {
        "classes": {"7": {"ap": None, "ap50": 0.5}}, "curve": [1.0, None, [None]]}}
