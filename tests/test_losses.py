"""Loss arithmetic against hand computations: label-smoothed CE, Lovász-softmax, Criteria, empty inputs."""

from __future__ import annotations

import math

import pytest
import torch

from volt.models.losses import Criteria, cross_entropy, lovasz_grad, lovasz_softmax


def _ce_by_hand(rows, labels, eps):
    total, count = 0.0, 0
    for z, y in zip(rows, labels):
        if y == -1:
            continue
        lse = math.log(sum(math.exp(v) for v in z))
        logp = [v - lse for v in z]
        total += -(1 - eps) * logp[y] - eps / len(z) * sum(logp)
        count += 1
    return total / count


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_label_smoothing_matches_hand_computation(eps):
    rows = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.5], [9.0, -9.0, 9.0], [-1.0, 3.0, 0.25]]
    labels = [0, 2, -1, 1]  # the third voxel is ignored; its extreme logits must not matter
    got = cross_entropy(torch.tensor(rows), torch.tensor(labels), label_smoothing=eps)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_ce_by_hand(rows, labels, eps), abs=1e-6)


def _probs_as_logits(p):
    return torch.tensor(p, dtype=torch.float64).log().float()  # softmax(log p) = p when rows sum to 1


def test_lovasz_grad_by_hand():
    # fg sorted [1, 0, 1]: Jaccard losses 1/2, 2/3, 1 -> increments 1/2, 1/6, 1/3
    got = lovasz_grad(torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(got, torch.tensor([0.5, 1 / 6, 1 / 3]))


def test_lovasz_two_classes_matches_hand_computation():
    # probabilities p(class 0) = 0.8, 0.4, 0.3; labels 0, 0, 1; a fourth voxel is ignored.
    # class 0: errors 0.2, 0.6, 0.3 -> sorted 0.6(fg) 0.3(bg) 0.2(fg), grad 1/2 1/6 1/3 -> 5/12
    # class 1: errors 0.2, 0.6, 0.3 -> sorted 0.6(bg) 0.3(fg) 0.2(bg), grad 1/2 1/2 0   -> 9/20
    logits = _probs_as_logits([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.01, 0.99]])
    labels = torch.tensor([0, 0, 1, -1])
    got = lovasz_softmax(logits, labels)
    assert got.item() == pytest.approx((5 / 12 + 9 / 20) / 2, abs=1e-6)


def test_lovasz_present_skips_absent_classes():
    # all labels 0: class 0 errors 0.2, 0.6, 0.7 with grad 1/3 each -> 0.5;
    # class 1 (absent) under "all": fg empty -> grad [1, 0, 0] on sorted p1 -> 0.7; mean 0.6
    logits = _probs_as_logits([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = torch.zeros(3, dtype=torch.long)
    assert lovasz_softmax(logits, labels, classes="present").item() == pytest.approx(0.5, abs=1e-6)
    assert lovasz_softmax(logits, labels, classes="all").item() == pytest.approx(0.6, abs=1e-6)


def test_lovasz_is_zero_for_a_perfect_confident_prediction_and_has_gradients():
    logits = torch.tensor([[20.0, -20.0], [-20.0, 20.0]], requires_grad=True)
    loss = lovasz_softmax(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    loss = lovasz_softmax(wrong, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() > 0 and wrong.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", [cross_entropy, lovasz_softmax, Criteria.default()], ids=["ce", "lovasz", "criteria"])
@pytest.mark.parametrize("case", ["all_ignored", "empty"])
def test_empty_or_all_ignored_gives_zero_with_gradient_path(fn, case):
    if case == "empty":
        logits, labels = torch.zeros(0, 4, requires_grad=True), torch.zeros(0, dtype=torch.long)
    else:
        logits, labels = torch.randn(5, 4, requires_grad=True), torch.full((5,), -1)
    out = fn(logits, labels)
    loss = out[0] if isinstance(out, tuple) else out
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_criteria_default_is_ce_ls01_plus_lovasz():
    torch.manual_seed(0)
    logits = torch.randn(50, 5)
    labels = torch.randint(-1, 5, (50,))
    total, parts = Criteria.default()(logits, labels)
    ce = cross_entropy(logits, labels, label_smoothing=0.1)
    lov = lovasz_softmax(logits, labels)
    assert set(parts) == {"ce", "lovasz"}
    assert total.item() == pytest.approx(ce.item() + lov.item(), abs=1e-6)
    weighted, _ = Criteria({"ce": 2.0, "lovasz": 0.5})(logits, labels)
    assert weighted.item() == pytest.approx(2 * ce.item() + 0.5 * lov.item(), abs=1e-6)


def test_criteria_rejects_unknown_names_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown loss"):
        Criteria({"dice": 1.0})
    with pytest.raises(ValueError, match="expected logits"):
        Criteria.default()(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


def test_losses_under_bfloat16_autocast_are_float32_and_close():
    torch.manual_seed(1)
    logits = torch.randn(40, 6)
    labels = torch.randint(0, 6, (40,))
    ref, _ = Criteria.default()(logits, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = Criteria.default()(logits.bfloat16(), labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
