"""The SPFormer-style instance head on small hand-made cases: matching costs and assignment, losses with
per-layer re-matching, superpoint pooling, targets, matrix NMS, the model's forward/predict, and the instance
data chains (ids carried through grid sampling, unique per batch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from volt.data.pipelines_instance import collate_instances, scannet_instance_train, scannet_instance_val
from volt.models import build_volt
from volt.models.instance_loss import InstanceCriterion
from volt.models.instance_segmentor import InstanceSegmentor, matrix_nms
from volt.models.matching import HungarianMatcher, dice_loss, match_cost, pairwise_bce, pairwise_dice
from volt.models.spformer import superpoint_pool

pytest.importorskip("scipy")


def test_match_cost_by_hand():
    # mask logits 0 (sigmoid 0.5) vs target [1, 0]: BCE ln 2, dice 1 - (2·0.5 + 1)/(1 + 1 + 1) = 1/3;
    # class logits 0 over 3 columns: prob 1/3 -> class cost -0.5/3.
    cost = match_cost(torch.zeros(1, 3), torch.zeros(1, 2), torch.tensor([1]), torch.tensor([[1.0, 0.0]]))
    assert cost.item() == pytest.approx(math.log(2) + 1 / 3 - 0.5 / 3, abs=1e-6)


def test_pairwise_costs_equal_per_pair_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g) * 3
    masks = (torch.rand(3, 7, generator=g) > 0.5).float()
    bce, dice = pairwise_bce(logits, masks), pairwise_dice(logits, masks)
    for q in range(5):
        for t in range(3):
            ref = F.binary_cross_entropy_with_logits(logits[q], masks[t])
            assert bce[q, t].item() == pytest.approx(ref.item(), rel=1e-5)
            assert dice[q, t].item() == pytest.approx(dice_loss(logits[q:q + 1], masks[t:t + 1]).item(), rel=1e-5)


def test_dice_loss_by_hand():
    assert dice_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1 / 3)
    assert dice_loss(torch.full((1, 4), 30.0), torch.ones(1, 4)).item() == pytest.approx(0.0, abs=1e-6)


def _scene(perm: list[int], gt_masks: torch.Tensor, gt_cls: torch.Tensor, num_queries: int, num_classes: int):
    """Predictions where query perm[j] predicts GT j exactly (confident mask and class); other queries weak."""
    q_cls = torch.zeros(num_queries, num_classes + 1)
    q_cls[:, -1] = 2.0  # the rest say "no object"
    q_mask = torch.full((num_queries, gt_masks.shape[1]), -1.0)
    for j, q in enumerate(perm):
        q_mask[q] = 12 * (2 * gt_masks[j] - 1)
        q_cls[q] = 0
        q_cls[q, gt_cls[j]] = 12.0
    return q_cls, q_mask


def test_matcher_recovers_the_permutation():
    gt_masks = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1.0]])
    gt_cls = torch.tensor([2, 0, 1])
    perm = [4, 0, 2]
    cls, mask = _scene(perm, gt_masks, gt_cls, num_queries=6, num_classes=3)
    qi, gi = HungarianMatcher()(cls, mask, gt_cls, gt_masks)
    assert dict(zip(gi.tolist(), qi.tolist())) == {0: 4, 1: 0, 2: 2}
    empty = HungarianMatcher()(cls, mask, torch.zeros(0, dtype=torch.long), torch.zeros(0, 6))
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_criterion_rematches_every_layer():
    gt_masks = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0.0]])
    gt_cls = torch.tensor([1, 0])
    crit = InstanceCriterion(num_classes=2)
    layer0 = [_scene([3, 1], gt_masks, gt_cls, 5, 2)]  # a different query per instance in each layer
    layer1 = [_scene([0, 2], gt_masks, gt_cls, 5, 2)]
    wrong = [_scene([1, 3], gt_masks.flip(0), gt_cls, 5, 2)]  # masks swapped against the classes
    targets = [(gt_cls, gt_masks)]
    single, parts = crit([layer1], targets)
    both, _ = crit([layer0, layer1], targets)
    assert parts["bce"] < 1e-4 and parts["dice"] < 1e-4 and parts["matched_correct"] == 2
    assert both.item() == pytest.approx(2 * single.item(), rel=1e-4)  # layer 0 matched on its own
    assert crit([wrong], targets)[0] > single + 1.0
    _, last_parts = crit([layer1, wrong], targets)  # the counts are the final step's, not a sum over steps
    assert last_parts["matched"] == 2 and last_parts["matched_correct"] == 0
    assert crit([wrong, layer1], targets)[1]["matched_correct"] == 2


def test_criterion_passes_a_nonfinite_loss_on():
    # no silent zero: the optimizer step skips the NaN gradients (volt.engine.optim.optimizer_step)
    gt_masks, gt_cls = torch.tensor([[1, 1, 0, 0.0]]), torch.tensor([0])
    preds = [[(torch.zeros(3, 3), torch.full((3, 4), float("nan")))]]
    loss, parts = InstanceCriterion(2)(preds, [(gt_cls, gt_masks)])
    assert not torch.isfinite(loss) and not torch.isfinite(parts["loss"])


def test_criterion_weights_and_scene_without_instances():
    gt_masks = torch.tensor([[1, 1, 0, 0.0]])
    gt_cls = torch.tensor([0])
    preds = [[(torch.randn(3, 3, requires_grad=True), torch.randn(3, 4, requires_grad=True))]]
    base = InstanceCriterion(2)
    _, parts = base(preds, [(gt_cls, gt_masks)])
    only_dice = InstanceCriterion(2, w_class=0.0, w_bce=0.0, w_dice=1.0)
    assert only_dice(preds, [(gt_cls, gt_masks)])[0].item() == pytest.approx(parts["dice"].item(), rel=1e-6)
    loss, parts = base(preds, [(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))])
    assert torch.isfinite(loss) and parts["bce"] == 0 and parts["matched"] == 0
    loss.backward()
    assert preds[0][0][0].grad is not None  # every query is pushed to "no object"


def test_superpoint_pool_means():
    feat = torch.tensor([[1.0, 0], [3, 2], [5, 4], [7, 6]])
    sp = torch.tensor([1, 0, 1, 1])
    out = superpoint_pool(feat, sp, torch.tensor([1, 3, 0]))  # id 2 has no rows
    assert torch.allclose(out, torch.tensor([[3.0, 2], [13 / 3, 10 / 3], [0, 0]]))


def test_matrix_nms_decays_same_class_overlaps_only():
    masks = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]).bool()
    classes = torch.tensor([1, 1, 2, 1])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    out = matrix_nms(masks, classes, scores)
    assert out[0] == pytest.approx(0.9) and out[1] == pytest.approx(0.0, abs=1e-6)  # duplicate of a better mask
    assert out[2] == pytest.approx(0.7)  # another class: untouched
    # mask 3 overlaps mask 0 with IoU 2/6 and the suppressed mask 1 (compensated by 1 - 1): 0.6·(1 - 1/3)
    assert out[3] == pytest.approx(0.6 * (1 - 1 / 3), rel=1e-5)
    # weights: columns 4, 5 count 4 times -> IoU with mask 0 = 2 / (4 + 10 - 2)
    w = torch.tensor([1.0, 1, 1, 1, 4, 4])
    out = matrix_nms(masks[[0, 3]], classes[[0, 3]], scores[[0, 3]], w)
    assert out[1] == pytest.approx(0.6 * (1 - 2 / 12), rel=1e-5)


def _tiny_model(**kw) -> InstanceSegmentor:
    torch.manual_seed(0)
    args = {"num_queries": 8, "d_model": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 2, "npoint_thresh": 0}
    return InstanceSegmentor(build_volt("volt-tiny", 6), num_classes=20, stuff=(0, 1), **{**args, **kw})


def test_scene_targets_by_hand():
    model = _tiny_model()
    # superpoints 0 (4 rows), 1 (2 rows), 2 (2 rows); instance 7 = chair (class 4) covers sp 0 wholly and
    # one of sp 1's two rows (not more than half); instance 3 = wall (class 0, stuff); instance 5 unlabelled.
    sp = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    inst = torch.tensor([7, 7, 7, 7, 7, 3, 5, 5])
    seg = torch.tensor([4, 4, 4, -1, 6, 0, -1, -1])
    cls, masks = model.scene_targets(seg, inst, sp, torch.tensor([4, 2, 2]))
    assert cls.tolist() == [model.to_head[4].item()] and model.class_map[cls].tolist() == [4]
    assert masks.tolist() == [[1.0, 0.0, 0.0]]


def _random_samples(n_scenes: int = 2, n: int = 300, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_scenes):
        grid = rng.integers(0, 15, (n, 3)).astype(np.int32)
        inst = rng.integers(-1, 4, n)
        out.append({"name": f"s{s}", "condition": "ScanNet", "coord": grid.astype(np.float32) * 0.1,
                    "grid_coord": grid, "feat": rng.random((n, 6), dtype=np.float32),
                    "segment": np.where(inst >= 0, inst + 2, -1), "instance": inst,
                    "superpoint": rng.integers(0, 20, n)})
    return out


def test_forward_backward_and_predict():
    model = _tiny_model()
    batch = collate_instances(_random_samples(), mix_prob=1.0, rng=np.random.default_rng(0))  # one mixed scene
    assert batch["offset"].tolist() == [600]
    out = model(batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert {"class", "bce", "dice", "loss"} <= set(out.parts)
    assert len(out.predictions) == 3  # initial queries + 2 layers, all supervised
    out.loss.backward()
    assert model.decoder.query.weight.grad is not None and model.backbone.tokenizer is not None
    model.eval()
    preds = model.predict(collate_instances(_random_samples()))
    assert len(preds) == 2
    for p in preds:
        assert p["masks"].dtype == torch.bool and p["masks"].shape[1] == 300
        assert p["classes"].dtype == torch.int64 and not set(p["classes"].tolist()) & {0, 1}
        assert torch.all(p["scores"][:-1] >= p["scores"][1:])


def test_collate_makes_ids_unique_across_the_batch():
    a, b = _random_samples(1, 4, seed=1)[0], _random_samples(1, 3, seed=2)[0]
    a.update(instance=np.array([0, 0, 1, -1]), superpoint=np.array([5, 5, 2, -1]), origin_instance=np.array([0, 1, -1]))
    b.update(instance=np.array([0, 2, 2]), superpoint=np.array([2, 3, 3]), origin_instance=np.array([2, 0]))
    batch = collate_instances([a, b], mix_prob=1.0, rng=np.random.default_rng(0))
    assert batch["offset"].tolist() == [7]  # mixed into one scene
    assert batch["superpoint"].tolist() == [0, 0, 1, 2, 3, 4, 4]  # first-appearance order, -1 -> own id
    assert batch["instance"].tolist() == [0, 0, 1, -1, 2, 4, 4]
    assert batch["origin_instance"].tolist() == [0, 1, -1, 4, 2]


def test_instance_chains_carry_ids_through_grid_sampling(demo_processed):
    from volt.data.dataset import SceneDataset

    ds = SceneDataset(demo_processed / "scannet", "train",
                      fields=["coord", "color", "normal", "segment20", "instance", "superpoint"])
    scene = ds[0]
    train = scannet_instance_train(grid_size=0.1, seed=0)(scene)
    assert len(train["instance"]) == len(train["superpoint"]) == len(train["coord"])
    assert set(np.unique(train["superpoint"])) <= set(np.unique(scene["superpoint"]))
    val = scannet_instance_val(grid_size=0.1)(scene)
    n = len(scene["coord"])
    assert len(val["inverse"]) == len(val["origin_instance"]) == n
    # every voxel's ids come from one of its own points
    rows = val["inverse"]
    picked = np.zeros(len(val["coord"]), bool)
    picked[rows[val["origin_instance"] == val["instance"][rows]]] = True
    assert picked.all()
    assert np.array_equal(val["origin_instance"], scene["instance"])
