"""Semantic-segmentation losses: label-smoothed cross-entropy, Lovász-softmax, and `Criteria`.

Inputs are per-voxel logits (V, C) and integer labels (V,) where `ignore_index` (-1) marks voxels that
carry no label. Every loss returns a 0-dim float32 tensor and is safe on an empty input or when every
label is ignored: it then returns `0 * logits.sum()`, which is 0, has no NaN, and keeps the logits in the
autograd graph (so DDP and GradScaler see a normal backward).

The reference recipe (VOLT_SPEC.md §1.2) is `Criteria.default()`: cross-entropy with label smoothing 0.1
(weight 1) plus multiclass Lovász-softmax over the classes present in the labels (weight 1).
Lovász-softmax: Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss", CVPR 2018 (arXiv 1705.08790).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def _zero(logits: Tensor) -> Tensor:
    # 0 with a gradient path back to the logits (never NaN, unlike a mean over nothing).
    return logits.float().sum() * 0.0


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.1, ignore_index: int = -1) -> Tensor:
    """Mean over labelled voxels of (1-ε)·(-log p_y) + ε·mean_c(-log p_c); 0 when nothing is labelled."""
    valid = target != ignore_index
    if logits.shape[0] == 0 or not bool(valid.any()):
        return _zero(logits)
    # float32 even under autocast: the log-softmax of fp16 logits loses the small probabilities.
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, label_smoothing=label_smoothing)


def lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order.

    fg_sorted (P,) is 1 where the sorted voxel belongs to the class. Entry i is J(i+1) - J(i), where J(k) is
    the Jaccard loss 1 - |fg ∩ top-k| / |fg ∪ top-k| of predicting the k largest-error voxels as the class.
    """
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if fg_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(logits: Tensor, target: Tensor, ignore_index: int = -1, classes: str = "present") -> Tensor:
    """Multiclass Lovász-softmax on softmax(logits): mean over classes of <sorted |fg - p_c|, lovasz_grad>.

    classes="present" averages only over classes that occur among the labelled voxels; "all" over every
    class (a class absent from the labels then contributes its largest predicted probability).
    """
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    valid = target != ignore_index
    if logits.shape[0] == 0 or not bool(valid.any()):
        return _zero(logits)
    probas = logits.float().softmax(dim=1)[valid]  # (P, C)
    labels = target[valid].long()  # (P,)
    num_classes = probas.shape[1]
    losses = []
    for c in range(num_classes):
        fg = (labels == c).float()
        if classes == "present" and not bool(fg.any()):
            continue
        # A one-column input has no softmax competitor; the reference then uses the column itself.
        class_pred = probas[:, 0] if num_classes == 1 else probas[:, c]
        errors = (fg - class_pred).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    if not losses:
        return _zero(logits)
    return torch.stack(losses).mean()


LOSSES: dict[str, Callable[..., Tensor]] = {"ce": cross_entropy, "lovasz": lovasz_softmax}


class Criteria:
    """A weighted sum of named losses; `__call__(logits, target) -> (total, {name: detached value})`.

    `weights` maps a name in LOSSES to its weight (terms with weight 0 are skipped). `label_smoothing`
    applies to "ce"; `ignore_index` to every term. Plain object (no parameters), safe to share between the
    GT and the distillation branch.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        label_smoothing: float = 0.1,
        ignore_index: int = -1,
    ):
        weights = dict(weights) if weights is not None else {"ce": 1.0, "lovasz": 1.0}
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss name(s) {unknown}; known: {sorted(LOSSES)}")
        if not any(w != 0 for w in weights.values()):
            raise ValueError("Criteria needs at least one loss with a non-zero weight")
        self.weights = weights
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)

    @classmethod
    def default(cls) -> Criteria:
        """The reference recipe: CE with label smoothing 0.1 (×1) + Lovász-softmax (×1), ignore -1."""
        return cls({"ce": 1.0, "lovasz": 1.0}, label_smoothing=0.1, ignore_index=-1)

    def _term(self, name: str, logits: Tensor, target: Tensor) -> Tensor:
        if name == "ce":
            return cross_entropy(logits, target, self.label_smoothing, self.ignore_index)
        return LOSSES[name](logits, target, ignore_index=self.ignore_index)

    def __call__(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if logits.ndim != 2 or target.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits (V, C) and target (V,), got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        total = _zero(logits)
        parts: dict[str, Tensor] = {}
        for name, weight in self.weights.items():
            if weight == 0:
                continue
            value = self._term(name, logits, target)
            parts[name] = value.detach()
            total = total + weight * value
        return total, parts

    def __repr__(self) -> str:
        return (
            f"Criteria(weights={self.weights}, label_smoothing={self.label_smoothing}, "
            f"ignore_index={self.ignore_index})"
        )
