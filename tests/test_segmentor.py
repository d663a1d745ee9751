"""Segmentor routing, point weighting, distillation arithmetic, the frozen teacher, eval checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from volt.models.distill import FrozenTeacher
from volt.models.heads import ConditionHeads
from volt.models.losses import Criteria
from volt.models.segmentor import Segmentor


class Scale(nn.Module):
    """Stand-in backbone with the real signature: features = feat · scale (learnable), out_channels = C."""

    def __init__(self, channels: int):
        super().__init__()
        self.out_channels = channels
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, grid_coord, feat, offset):
        return feat * self.scale


class BNTeacher(nn.Module):
    """Teacher stand-in with BatchNorm (train mode would change its statistics and outputs)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(c_in)
        self.fc = nn.Linear(c_in, c_out)

    def forward(self, grid_coord, feat, offset):
        return self.fc(self.bn(feat))


class Fixed(nn.Module):
    """Teacher stand-in that returns the input features unchanged (so its logits are known)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, grid_coord, feat, offset):
        return feat + 0 * self.dummy


def _batch(feat, segment, unmixed_offset, condition, offset=None):
    v = feat.shape[0]
    return {
        "grid_coord": torch.zeros(v, 3, dtype=torch.int32),
        "feat": feat,
        "offset": torch.tensor([v]) if offset is None else torch.tensor(offset),
        "unmixed_offset": torch.tensor(unmixed_offset),
        "condition": condition,
        "segment": torch.tensor(segment),
    }


def _two_condition_case():
    # samples: s0 = A (3 voxels), s1 = B (2 voxels), s2 = A (1 voxel); s0 and s1 were mixed into one scene
    feat = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 1.0, 4.0]]
    )
    segment = [0, -1, 2, 1, -1, 1]
    return _batch(feat, segment, [3, 5, 6], ["A", "B", "A"], offset=[5, 6])


def test_distillation_loss_arithmetic_point_weighted_over_two_conditions():
    torch.manual_seed(0)
    heads = ConditionHeads(3, {"A": 3, "B": 2})
    with torch.no_grad():  # teacher logits = features (A) or their first two columns (B)
        heads["A"].weight.copy_(torch.eye(3)); heads["A"].bias.zero_()
        heads["B"].weight.copy_(torch.eye(3)[:2]); heads["B"].bias.zero_()
    teacher = FrozenTeacher(Fixed(), heads)
    model = Segmentor(Scale(3), {"A": 3, "B": 2}, teacher=teacher).train()
    batch = _two_condition_case()
    out = model(batch)

    # pseudo-labels by hand (argmax of the teacher logits), including the GT-ignored voxels 1 and 4
    idx_a, idx_b = torch.tensor([0, 1, 2, 5]), torch.tensor([3, 4])
    pseudo_a, pseudo_b = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1])
    crit, feat, seg = Criteria.default(), batch["feat"], batch["segment"]
    with torch.no_grad():
        loss_a = 0.5 * crit(model.seg_heads["A"](feat[idx_a]), seg[idx_a])[0] + 0.5 * crit(
            model.distill_heads["A"](feat[idx_a]), pseudo_a)[0]
        loss_b = 0.5 * crit(model.seg_heads["B"](feat[idx_b]), seg[idx_b])[0] + 0.5 * crit(
            model.distill_heads["B"](feat[idx_b]), pseudo_b)[0]
    expected = loss_a * 4 / 6 + loss_b * 2 / 6
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert out.parts["A/loss"].item() == pytest.approx(loss_a.item(), abs=1e-6)
    assert out.parts["B/loss"].item() == pytest.approx(loss_b.item(), abs=1e-6)
    assert torch.equal(out.index["A"], idx_a) and torch.equal(out.index["B"], idx_b)
    assert out.logits["A"].shape == (4, 3) and out.logits["B"].shape == (2, 2)
    assert {"A/seg/ce", "A/seg/lovasz", "A/distill/ce", "A/distill/lovasz", "loss"} <= set(out.parts)
    # the same batch without a teacher is the plain point-weighted GT loss
    plain = Segmentor(Scale(3), {"A": 3, "B": 2}).train()
    plain.seg_heads.load_state_dict(model.seg_heads.state_dict())
    with torch.no_grad():
        gt = crit(plain.seg_heads["A"](feat[idx_a]), seg[idx_a])[0] * 4 / 6 + crit(
            plain.seg_heads["B"](feat[idx_b]), seg[idx_b])[0] * 2 / 6
    assert plain(batch).loss.item() == pytest.approx(gt.item(), abs=1e-6)


def test_single_dataset_teacher_logits_give_argmax_pseudo_labels():
    teacher = FrozenTeacher(Fixed())  # its "logits" are the features
    feat = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    labels = teacher.pseudo_labels(teacher.run(None, feat, None), "Default")
    assert labels.tolist() == [0, 2, 1]
    model = Segmentor(Scale(3), {"Default": 4}, teacher=FrozenTeacher(Fixed())).train()
    with pytest.raises(ValueError, match="teacher gives 3 classes"):
        model(_batch(feat, [0, 1, 2], [3], ["Default"]))


def test_head_of_an_absent_condition_gets_no_gradient():
    torch.manual_seed(0)
    model = Segmentor(Scale(3), {"A": 3, "B": 2}).train()
    feat = torch.randn(5, 3)
    model(_batch(feat, [0, 1, 2, 0, 1], [2, 5], ["A", "A"])).loss.backward()
    for p in model.seg_heads["B"].parameters():
        assert p.grad is None or not p.grad.any()
    assert model.seg_heads["A"].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model(_two_condition_case()).loss.backward()
    assert model.seg_heads["B"].weight.grad.abs().sum() > 0


def test_non_finite_condition_loss_is_replaced_by_zero():
    class NanForB(Criteria):
        def __call__(self, logits, target):
            total, parts = super().__call__(logits, target)
            return (total * float("nan") if logits.shape[1] == 2 else total), parts

    torch.manual_seed(0)
    model = Segmentor(Scale(3), {"A": 3, "B": 2}, criteria=NanForB()).train()
    batch = _two_condition_case()
    out = model(batch)
    assert torch.isfinite(out.loss) and out.parts["B/nonfinite"].item() == 1.0
    assert out.parts["A/nonfinite"].item() == 0.0
    idx_a = torch.tensor([0, 1, 2, 5])
    with torch.no_grad():
        loss_a = Criteria.default()(model.seg_heads["A"](batch["feat"][idx_a]), batch["segment"][idx_a])[0]
    assert out.loss.item() == pytest.approx(loss_a.item() * 4 / 6, abs=1e-6)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_finite_step_reports_zero_nonfinite_for_every_condition():
    # The trainer averages each part over the micro-batches that carry it: a flag written only when a loss
    # is non-finite would always average to 1.0 in the log.
    torch.manual_seed(0)
    model = Segmentor(Scale(3), {"A": 3, "B": 2}).train()
    out = model(_two_condition_case())
    assert torch.isfinite(out.loss)
    assert out.parts["A/nonfinite"].item() == 0.0 and out.parts["B/nonfinite"].item() == 0.0
    only_a = model(_batch(torch.randn(3, 3), [0, 1, 2], [3], ["A"]))
    assert only_a.parts["A/nonfinite"].item() == 0.0 and "B/nonfinite" not in only_a.parts


def test_teacher_stays_frozen_outside_optimizer_state_dict_and_deepcopy():
    torch.manual_seed(0)
    teacher_model = BNTeacher(3, 3)
    with torch.no_grad():
        teacher_model.bn.running_mean.uniform_(-1, 1)
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    model = Segmentor(Scale(3), {"A": 3}, teacher=teacher_model)  # an nn.Module is wrapped automatically
    teacher = model.teacher
    model.train()
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    student_before = model.backbone.scale.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model(_batch(torch.randn(8, 3), [0, 1, 2, 0, 1, 2, -1, 0], [8], ["A"] * 1)).loss.backward()
        opt.step()
    assert not torch.equal(model.backbone.scale.detach(), student_before)  # the student did train
    for k, v in teacher_model.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed"
    teacher_ids = {id(p) for p in teacher_model.parameters()}
    assert not teacher_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert all("teacher" not in k and not k.startswith(("bn.", "fc.")) for k in model.state_dict())
    assert set(model.state_dict()) == {
        "backbone.scale", "seg_heads.A.weight", "seg_heads.A.bias", "distill_heads.A.weight", "distill_heads.A.bias"}
    ema = copy.deepcopy(model)
    assert ema.teacher is teacher and ema.teacher.model is teacher_model
    assert ema.backbone.scale is not model.backbone.scale
    teacher.model.train()  # even if someone flips it, the next run is in eval mode
    model(_batch(torch.randn(4, 3), [0, 1, 2, 0], [4], ["A"]))
    assert not teacher.model.training and torch.equal(teacher_model.bn.running_mean, before["bn.running_mean"])


def test_teacher_follows_device_and_dtype_moves_and_autocast():
    model = Segmentor(Scale(3), {"A": 3}, teacher=BNTeacher(3, 3))
    model.double()
    assert model.teacher.model.fc.weight.dtype == torch.float64
    model.to(torch.float32)
    assert model.teacher.model.fc.weight.dtype == torch.float32
    assert model.teacher.device == torch.device("cpu")
    model.train()
    batch = _batch(torch.randn(6, 3), [0, 1, 2, 0, 1, 2], [6], ["A"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.teacher.run(None, batch["feat"], None).dtype == torch.bfloat16
        out = model(batch)
    assert torch.isfinite(out.loss)


def test_eval_needs_one_condition_and_uses_seg_heads():
    torch.manual_seed(0)
    model = Segmentor(Scale(3), {"A": 3, "B": 2}, teacher=FrozenTeacher(Fixed(), ConditionHeads(3, {"A": 3, "B": 2})))
    model.eval()
    batch = _two_condition_case()
    with pytest.raises(ValueError, match="share one condition"):
        model(batch)
    batch["condition"] = ["B", "B", "B"]
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        model(batch)  # labels of condition A do not fit the 2 classes of B
    batch["segment"] = torch.tensor([0, -1, 1, 1, -1, 0])
    out = model(batch)
    assert out.condition == "B" and out.logits.shape == (6, 2)
    assert torch.allclose(out.logits, model.seg_heads["B"](batch["feat"]))
    assert out.loss is not None and torch.isfinite(out.loss)
    del batch["condition"], batch["segment"]
    with pytest.raises(ValueError, match="no 'condition'"):
        model(batch)
    single = Segmentor(Scale(3), {"Default": 3}).eval()
    out = single(batch)
    assert out.loss is None and out.logits.shape == (6, 3)


def test_bad_routing_inputs_raise():
    model = Segmentor(Scale(3), {"A": 3}).train()
    with pytest.raises(ValueError, match="unmixed_offset ends at"):
        model(_batch(torch.randn(4, 3), [0, 0, 0, 0], [3], ["A"]))
    with pytest.raises(ValueError, match="condition strings"):
        model(_batch(torch.randn(4, 3), [0, 0, 0, 0], [2, 4], ["A"]))
    with pytest.raises(KeyError, match="unknown condition"):
        model(_batch(torch.randn(4, 3), [0, 0, 0, 0], [4], ["C"]))


def test_tiny_volt_backbone_forward_backward():
    volt = pytest.importorskip("volt.models.volt", reason="VolumeTransformer not available")
    torch.manual_seed(0)
    backbone = volt.build_volt("volt-tiny", in_channels=6)
    model = Segmentor(backbone, {"A": 5, "B": 3}).train()
    cells = torch.stack(torch.meshgrid(*[torch.arange(12)] * 3, indexing="ij"), -1).reshape(-1, 3)
    g = torch.cat([cells[torch.randperm(len(cells))[:300]], cells[torch.randperm(len(cells))[:200]]]).int()
    batch = _batch(torch.randn(500, 6), torch.randint(-1, 5, (500,)).tolist(), [300, 500], ["A", "B"], offset=[500])
    batch["segment"][300:] = batch["segment"][300:].clamp(max=2)
    batch["grid_coord"] = g
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and backbone.tokenizer.proj.weight.grad.abs().sum() > 0
