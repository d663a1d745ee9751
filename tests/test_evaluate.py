"""Quick validation and the precise fragment x view test, with fake models whose logits are known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import load_tool
from torch import nn

from volt.engine.evaluate import accumulate_views, precise_test, validate
from volt.engine.metrics import ConfusionMatrix
from volt.errors import DataError
from volt.models.segmentor import Segmentor, SegmentorOutput
from volt.ops.voxelize import voxelize


class FeatIsLogits:
    """Fake model: the first C feature channels are the logits; records every batch it sees."""

    def __init__(self, as_output: bool = True):
        self.calls: list[dict] = []
        self.as_output = as_output
        self.training = False

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def __call__(self, batch):
        self.calls.append(batch)
        logits = batch["feat"]
        return SegmentorOutput(logits=logits, loss=logits.sum() * 0 + 1.5) if self.as_output else logits


def frag(index, probs):
    """A fragment whose logits are log(probs): the softmax gives `probs` back exactly."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(index)
    return {
        "coord": np.zeros((n, 3), np.float32),
        "grid_coord": np.arange(3 * n, dtype=np.int32).reshape(n, 3),
        "feat": np.log(probs).astype(np.float32),
        "index": np.asarray(index, dtype=np.int64),
    }


# Scene of 4 points, 3 classes; view A has two fragments, view B one. Point 0 is in 3 fragments.
FRAGMENTS = [
    frag([0, 1], [[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]]),  # view A, fragment 0
    frag([2, 0], [[0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]),  # view A, fragment 1
    frag([3, 0, 2], [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]),  # view B
]
EXPECTED_SUM = np.array([
    [0.5 + 0.1 + 0.1, 0.3 + 0.1 + 0.1, 0.2 + 0.8 + 0.8],  # -> class 2, although fragment 0 alone says 0
    [0.6, 0.2, 0.2],
    [0.1 + 0.3, 0.1 + 0.3, 0.8 + 0.4],
    [0.2, 0.7, 0.1],
])
EXPECTED_PRED = np.array([2, 0, 2, 1])


@pytest.mark.parametrize("fragment_batch", [1, 2, 5])
def test_softmax_sums_per_point(fragment_batch):
    model = FeatIsLogits()
    probs, count = accumulate_views(model, iter(FRAGMENTS), 4, 3, fragment_batch=fragment_batch, condition="demo")
    assert count == 3
    np.testing.assert_allclose(probs.numpy(), EXPECTED_SUM, rtol=1e-6)
    assert len(model.calls) == -(-3 // fragment_batch)
    first = model.calls[0]
    sizes = [len(f["index"]) for f in FRAGMENTS[:fragment_batch]]
    assert first["offset"].tolist() == np.cumsum(sizes).tolist()  # each fragment is its own scene
    assert first["condition"] == ["demo"] * len(sizes)
    assert first["grid_coord"].dtype == torch.int32 and first["feat"].dtype == torch.float32


def test_precise_test_labels_metrics_and_cache(tmp_path):
    scene = {"name": "room", "coord": np.zeros((4, 3), np.float32), "segment": np.array([2, 1, 2, -1])}
    model = FeatIsLogits(as_output=False)  # a plain logits tensor works too
    seen = {}
    result = precise_test(model, [scene], lambda s: iter(FRAGMENTS), 3, out_dir=tmp_path,
                          on_scene=lambda name, pred: seen.update({name: pred}), log=lambda msg: None)
    np.testing.assert_array_equal(seen["room"], EXPECTED_PRED)
    np.testing.assert_array_equal(np.load(tmp_path / "room_pred.npy"), EXPECTED_PRED)
    m = result.metrics
    np.testing.assert_array_equal(m.intersection, [0, 0, 2])  # point 1 (gt 1) predicted 0
    assert m.miou == pytest.approx((0 + 0 + 1) / 3) and m.allacc == pytest.approx(2 / 3)
    assert result.scenes[0]["fragments"] == 3 and result.scenes[0]["points"] == 4
    # Second run: the cached prediction is used, the model is not called.
    model.calls.clear()
    again = precise_test(model, [scene], lambda s: iter(()), 3, out_dir=tmp_path)
    assert model.calls == [] and again.scenes[0]["cached"]
    np.testing.assert_array_equal(again.metrics.intersection, m.intersection)
    np.save(tmp_path / "room_pred.npy", np.zeros(3, np.int16))
    with pytest.raises(DataError, match="cached prediction"):
        precise_test(model, [scene], lambda s: iter(FRAGMENTS), 3, out_dir=tmp_path)


def test_cached_predictions_of_another_view_count_are_recomputed(tmp_path):
    scene = {"name": "room", "coord": np.zeros((4, 3), np.float32), "segment": np.array([2, 1, 2, -1])}
    model = FeatIsLogits()
    first = precise_test(model, [scene], lambda s: iter(FRAGMENTS), 3, out_dir=tmp_path, num_views=2)
    assert not first.scenes[0]["cached"] and len(model.calls) == 3
    model.calls.clear()
    same = precise_test(model, [scene], lambda s: iter(()), 3, out_dir=tmp_path, num_views=2)
    assert same.scenes[0]["cached"] and model.calls == []
    # Another number of views: a miss, recomputed with the views given (here: only view A, so point 3 of
    # FRAGMENTS' view B is missing and the scene must fail rather than reuse the 2-view prediction).
    with pytest.raises(DataError, match="in no fragment"):
        precise_test(model, [scene], lambda s: iter(FRAGMENTS[:2]), 3, out_dir=tmp_path, num_views=1)
    one = precise_test(model, [scene], lambda s: iter(FRAGMENTS), 3, out_dir=tmp_path, num_views=1)
    assert not one.scenes[0]["cached"]
    assert precise_test(model, [scene], lambda s: iter(()), 3, out_dir=tmp_path, num_views=1).scenes[0]["cached"]
    # A cache without its record (older runs) is a miss when the views are known.
    (tmp_path / "room_pred.json").unlink()
    again = precise_test(model, [scene], lambda s: iter(FRAGMENTS), 3, out_dir=tmp_path, num_views=1)
    assert not again.scenes[0]["cached"]
    np.testing.assert_array_equal(np.load(tmp_path / "room_pred.npy"), EXPECTED_PRED)


def test_subsample_inverse_expands_to_raw_points():
    # 6 raw points pre-subsampled to the 4 points of FRAGMENTS; inverse maps raw -> subsampled.
    inverse = np.array([0, 0, 1, 3, 2, 3])
    segment = np.array([2, 2, 0, 1, 2, 0])
    frags = [dict(f, origin_inverse=inverse, num_points=4, origin_segment=segment) for f in FRAGMENTS]
    scene = {"name": "sweep", "coord": np.zeros((6, 3), np.float32)}  # labels come with the fragments
    seen = {}
    result = precise_test(FeatIsLogits(), [scene], lambda s: iter(frags), 3,
                          on_scene=lambda name, pred: seen.update({name: pred}))
    np.testing.assert_array_equal(seen["sweep"], EXPECTED_PRED[inverse])
    assert result.metrics.num_points == 6 and result.metrics.allacc == pytest.approx(5 / 6)


def test_uncovered_point_and_empty_views_raise():
    scene = {"name": "gap", "coord": np.zeros((5, 3), np.float32)}  # point 4 is in no fragment
    with pytest.raises(DataError, match="1 of 5 points are in no fragment"):
        precise_test(FeatIsLogits(), [scene], lambda s: iter(FRAGMENTS), 3)
    with pytest.raises(DataError, match="no fragment"):
        precise_test(FeatIsLogits(), [scene], lambda s: iter(()), 3)
    unlabelled = precise_test(FeatIsLogits(), [{"name": "t", "coord": np.zeros((4, 3))}],
                              lambda s: iter(FRAGMENTS), 3)
    assert unlabelled.metrics is None and "allAcc" not in unlabelled.scenes[0]


def voxel_views(scene, grid=0.3, scales=(1.0, 1.1)):
    """Test-mode fragments of two scaled views through the real voxelize, as the data pipeline does."""
    coord = torch.from_numpy(scene["coord"])
    for s in scales:
        vox = voxelize(coord * s, torch.tensor([len(coord)]), grid, mode="test")
        for i in range(vox.num_fragments):
            idx = vox.fragment(i)
            yield {"coord": (coord * s)[idx].numpy(), "grid_coord": vox.grid_coord.numpy(),
                   "feat": scene["feat"][idx.numpy()], "index": idx.numpy()}


def test_every_point_predicted_and_mass_equals_coverage():
    rng = np.random.default_rng(0)
    scene = {"name": "r", "coord": rng.uniform(0, 1, (300, 3)).astype(np.float32),
             "feat": rng.normal(size=(300, 5)).astype(np.float32)}
    seen_index = [f["index"] for f in voxel_views(scene)]
    coverage = np.bincount(np.concatenate(seen_index), minlength=300)
    assert coverage.min() >= 2  # each of the 2 views covers every point at least once
    probs, count = accumulate_views(FeatIsLogits(), voxel_views(scene), 300, 5)
    assert count == len(seen_index) > 2
    np.testing.assert_allclose(probs.sum(1).numpy(), coverage, rtol=1e-5)  # one unit of mass per visit
    # The features do not change across views, so the argmax equals the per-point feature argmax.
    np.testing.assert_array_equal(probs.argmax(1).numpy(), scene["feat"].argmax(1))


class LinearBackbone(nn.Module):
    out_channels = 4

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, grid_coord, feat, offset):
        return self.lin(feat)


def test_validate_maps_voxels_to_points_and_restores_mode():
    model = FeatIsLogits()
    model.train()
    batches = [
        {"feat": torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])), "offset": torch.tensor([2]),
         "grid_coord": torch.zeros(2, 3, dtype=torch.int32), "segment": torch.tensor([0, 2]),
         "inverse": torch.tensor([0, 0, 1, 1, 1]), "origin_segment": torch.tensor([0, 1, 2, -1, 2])},
        {"feat": torch.log(torch.tensor([[0.2, 0.7, 0.1]])), "offset": torch.tensor([1]),
         "grid_coord": torch.zeros(1, 3, dtype=torch.int32), "segment": torch.tensor([1]),
         "inverse": torch.tensor([0, 0]), "origin_segment": torch.tensor([1, 0])},
    ]
    out = validate(model, batches, 3, class_names=["a", "b", "c"])
    # point preds [0, 0, 2, 2, 2] and [1, 1] against [0, 1, 2, -1, 2] and [1, 0]
    np.testing.assert_array_equal(out.metrics.intersection, [1, 1, 2])
    np.testing.assert_array_equal(out.metrics.target, [2, 2, 2])
    assert out.batches == 2 and out.loss == pytest.approx(1.5)
    assert model.training  # restored
    voxel_only = validate(model, [{k: v for k, v in batches[0].items() if k not in ("inverse", "origin_segment")}], 3)
    assert voxel_only.metrics.num_points == 2 and voxel_only.metrics.allacc == pytest.approx(1.0)


def test_validate_real_segmentor_with_autocast():
    torch.manual_seed(0)
    seg = Segmentor(LinearBackbone(), {"demo": 4}).train()
    batch = {"feat": torch.randn(6, 3), "grid_coord": torch.zeros(6, 3, dtype=torch.int32),
             "offset": torch.tensor([6]), "segment": torch.tensor([0, 1, 2, 3, 0, -1]), "condition": ["demo"],
             "inverse": torch.arange(6).repeat(2), "origin_segment": torch.tensor([0, 1, 2, 3, 0, -1] * 2)}
    out = validate(seg, [batch], 4, amp_dtype=torch.bfloat16)
    assert seg.training and out.metrics.num_points == 10 and out.loss is not None
    with torch.no_grad():
        expected = seg.eval()(batch).logits.argmax(1)
    assert out.metrics.intersection.sum() == int((expected[:5] == batch["segment"][:5]).sum()) * 2


def softmax_np(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("dataset", ["scannet", "nuscenes"])
def test_precise_test_with_the_real_test_views(dataset):
    """volt.data.pipelines.test_views end to end: the result equals a by-hand sum over its fragments."""
    from volt.data.pipelines import build_pipeline, test_views

    rng = np.random.default_rng(1)
    n = 400
    if dataset == "scannet":
        scene = {"coord": rng.uniform(0, 0.3, (n, 3)).astype(np.float32),
                 "color": rng.integers(0, 256, (n, 3)).astype(np.uint8),
                 "normal": rng.normal(size=(n, 3)).astype(np.float32), "segment20": rng.integers(-1, 6, n)}
        label, classes = "segment20", 6
    else:
        scene = {"coord": rng.uniform(-0.1, 0.1, (n, 3)).astype(np.float32),
                 "strength": rng.uniform(0, 1, (n, 1)).astype(np.float32), "segment": rng.integers(-1, 4, n)}
        label, classes = "segment", 4
    scene["name"] = "s"
    pipeline = build_pipeline(dataset, "test", label=label)
    frags = list(test_views(scene, pipeline))
    num_points = frags[0]["num_points"]
    by_hand = np.zeros((num_points, classes))
    for f in frags:
        np.add.at(by_hand, f["index"], softmax_np(f["feat"].astype(np.float64)))
    expected = by_hand.argmax(1)[frags[0]["origin_inverse"]]
    if dataset == "nuscenes":
        assert num_points < n  # the 2.5 cm pre-sampling merged points

    model, seen = FeatIsLogits(), {}
    result = precise_test(model, [scene], lambda s: test_views(s, pipeline), classes, condition="C",
                          label_key=label, fragment_batch=4, on_scene=lambda name, pred: seen.update({name: pred}))
    assert seen["s"].shape == (n,)
    np.testing.assert_array_equal(seen["s"], expected)
    assert result.scenes[0]["fragments"] == len(frags)
    assert len({f["view"] for f in frags}) == (13 if dataset == "scannet" else 10)
    direct = ConfusionMatrix(classes).update(expected, scene[label]).compute()
    np.testing.assert_array_equal(result.metrics.intersection, direct.intersection)


def test_dataset_class_names_fall_back_from_meta_to_table_to_indices(tmp_path):
    from volt.config import DatasetCfg
    from volt.data.io import write_scene
    from volt.data.scannet_classes import CLASS_NAMES_20
    from volt.data.scene import Scene
    from volt.engine.build import dataset_class_names

    ds = DatasetCfg(root=str(tmp_path / "none"), pipeline="scannet", num_classes=20)
    assert dataset_class_names(ds) == list(CLASS_NAMES_20)  # no processed data: the benchmark's table
    assert dataset_class_names(dataclasses.replace(ds, num_classes=3)) == ["class_0", "class_1", "class_2"]
    names = ["floor", "crate", "shelf"]
    arrays = {"coord": np.zeros((2, 3), np.float32), "segment20": np.zeros(2, np.int32)}
    write_scene(Scene("s0", arrays, {"classes": {"segment20": names}}), tmp_path / "data" / "val" / "s0")
    assert dataset_class_names(dataclasses.replace(ds, root=str(tmp_path / "data"), num_classes=3)) == names


def test_tools_test_cli_end_to_end(tmp_path, capsys):
    """tools/test.py: checkpoint (with its stored config) -> precise test -> table, JSON, submission files."""
    import json

    from volt.config import Config, DatasetCfg, to_dict
    from volt.data.io import write_scene
    from volt.data.scene import Scene
    from volt.engine.build import build_segmentor
    from volt.engine.checkpoint import save_checkpoint
    from volt.engine.submission import read_nuscenes_bin

    rng = np.random.default_rng(3)
    root = tmp_path / "nuscenes"
    for name in ("tok0", "tok1"):
        n = 150
        arrays = {"coord": rng.uniform(-0.2, 0.2, (n, 3)).astype(np.float32),
                  "strength": rng.uniform(0, 1, (n, 1)).astype(np.float32),
                  "segment": rng.integers(-1, 16, n).astype(np.int32)}
        write_scene(Scene(name, arrays, {}), root / "val" / name)
    ds = DatasetCfg(condition="nuScenes", pipeline="nuscenes", root=str(root), segment_field="segment",
                    num_classes=16, grid_size=0.05)
    cfg = Config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, datasets=[ds]),
                              model=dataclasses.replace(cfg.model, in_channels=4, volt=dataclasses.replace(
                                  cfg.model.volt, preset="volt-tiny")))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", build_segmentor(cfg), to_dict(cfg))

    tool = load_tool("test")
    out = tmp_path / "out"
    code = tool.main(["--ckpt", str(ckpt), "--out", str(out), "--submission", "--device", "cpu",
                      "--fragment-batch", "8"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "mean over all 16 classes (reference definition)" in printed and "driveable_surface" in printed
    data = json.loads((out / "metrics.json").read_text())
    assert len(data["classes"]) == 16 and [s["name"] for s in data["scenes"]] == ["tok0", "tok1"]
    assert data["weights"] == "model" and data["split"] == "val"
    for name in ("tok0", "tok1"):
        pred = np.load(out / f"{name}_pred.npy")
        assert pred.shape == (150,)
        np.testing.assert_array_equal(read_nuscenes_bin(out / "submit" / "lidarseg" / "val" / f"{name}_lidarseg.bin"),
                                      pred)
    assert (out / "submit" / "val" / "submission.json").is_file()
    # A rerun reuses the cached predictions.
    assert tool.main(["--ckpt", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "metrics.json").read_text())["scenes"][0]["cached"]
    # ... but not those of another number of TTA views (nuScenes has 10).
    assert tool.main(["--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", "--views", "1"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["views"] == 1 and not data["scenes"][0]["cached"]
    assert tool.main(["--ckpt", str(ckpt), "--dataset", "nope", "--device", "cpu"]) == 2


def test_validate_with_the_real_val_loader_scores_every_original_point():
    from volt.data.loader import build_loader
    from volt.data.pipelines import build_pipeline

    rng = np.random.default_rng(5)
    scenes = []
    for i, n in enumerate((120, 90, 60)):
        scenes.append({"name": f"s{i}", "coord": rng.uniform(-0.3, 0.3, (n, 3)).astype(np.float32),
                       "strength": rng.uniform(0, 1, (n, 1)).astype(np.float32),
                       "segment": rng.integers(-1, 4, n).astype(np.int32)})
    loader = build_loader(scenes, build_pipeline("nuscenes", "val"), batch_size=2, shuffle=False)
    batches = list(loader)
    assert batches[0]["offset"].numel() == 2 and batches[0]["inverse"].numel() == 210
    out = validate(FeatIsLogits(), batches, 4)  # feat = xyz + strength: 4 "logits"
    labelled = sum(int((s["segment"] != -1).sum()) for s in scenes)
    assert out.batches == 2 and out.metrics.num_points == labelled
    # The same numbers from a by-hand mapping of each batch's voxel argmax to its original points.
    by_hand = ConfusionMatrix(4)
    for b in batches:
        by_hand.update(b["feat"].argmax(1)[b["inverse"]], b["origin_segment"])
    np.testing.assert_array_equal(out.metrics.intersection, by_hand.compute().intersection)
