"""Semantic-segmentation metrics from a confusion matrix accumulated over a whole split.

Definition (the reference's `intersection_and_union`, VOLT_SPEC.md §1.9 item 6 and §5 item 7): points whose
ground truth is -1 are dropped (whatever their prediction); per class c, intersection I_c = points with
gt = pred = c, target T_c = points with gt = c, union U_c = T_c + P_c - I_c (P_c = predictions c).
Everything is summed over the split first, then
  IoU_c = I_c / (U_c + 1e-10),  Acc_c = I_c / (T_c + 1e-10),
  mIoU = mean of IoU_c over ALL K classes (a class absent from both GT and prediction counts 0),
  mAcc = mean of Acc_c over all K classes, allAcc = sum(I) / (sum(T) + 1e-10).
We also report the means over the classes present in the ground truth (T_c > 0) as extra columns.

`ConfusionMatrix(K).update(pred, target)` takes numpy arrays or torch tensors (any device) of equal
length; `compute()` returns a `SegMetrics`. Several scenes accumulated one by one give exactly the
same matrix as one pass over their concatenation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from volt.errors import DataError

EPS = 1e-10  # the reference's smoothing term
IGNORE = -1


def _as_long(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(None, f"labels must be integers, got {t.dtype}")
    return t.reshape(-1).long()


@dataclass
class SegMetrics:
    """Per-class counts (K,) int64 and the derived scores; see the module docstring."""

    intersection: np.ndarray
    union: np.ndarray
    target: np.ndarray  # ground-truth points per class
    predicted: np.ndarray  # predicted points per class (over points with valid ground truth)
    class_names: tuple[str, ...]
    confusion: np.ndarray | None = None  # (K, K) counts, rows = ground truth, columns = prediction

    @property
    def num_classes(self) -> int:
        return len(self.intersection)

    @property
    def present(self) -> np.ndarray:
        """(K,) bool: the class occurs in the ground truth."""
        return self.target > 0

    @property
    def iou(self) -> np.ndarray:
        return self.intersection / (self.union + EPS)

    @property
    def acc(self) -> np.ndarray:
        return self.intersection / (self.target + EPS)

    @property
    def miou(self) -> float:
        """The reference number: mean over all K classes."""
        return float(np.mean(self.iou))

    @property
    def macc(self) -> float:
        return float(np.mean(self.acc))

    @property
    def allacc(self) -> float:
        return float(self.intersection.sum() / (self.target.sum() + EPS))

    @property
    def miou_present(self) -> float:
        """Mean IoU over the classes present in the ground truth (NaN when none is)."""
        return float(np.mean(self.iou[self.present])) if self.present.any() else float("nan")

    @property
    def macc_present(self) -> float:
        return float(np.mean(self.acc[self.present])) if self.present.any() else float("nan")

    @property
    def num_points(self) -> int:
        """Points with a valid ground-truth label that were scored."""
        return int(self.target.sum())

    def summary(self) -> dict[str, float]:
        return {
            "mIoU": self.miou,
            "mIoU_present": self.miou_present,
            "mAcc": self.macc,
            "mAcc_present": self.macc_present,
            "allAcc": self.allacc,
        }


class ConfusionMatrix:
    """K x K counts, rows = ground truth, columns = prediction; ground truth -1 is ignored."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        if class_names is None:
            class_names = [f"class_{i}" for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        self.class_names = tuple(str(n) for n in class_names)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> ConfusionMatrix:
        """Add one scene (or batch) of per-point predictions and labels. Returns self."""
        k = self.num_classes
        pred_t, target_t = _as_long(pred), _as_long(target)
        if pred_t.numel() != target_t.numel():
            raise DataError(None, f"{pred_t.numel()} predictions for {target_t.numel()} labels")
        pred_t = pred_t.to(target_t.device)
        bad = (target_t < IGNORE) | (target_t >= k)
        if bool(bad.any()):
            raise DataError(None, f"ground-truth labels must lie in [-1, {k - 1}], found {int(target_t[bad][0])}")
        valid = target_t != IGNORE
        pred_t, target_t = pred_t[valid], target_t[valid]
        bad = (pred_t < 0) | (pred_t >= k)
        if bool(bad.any()):
            raise DataError(None, f"predictions must lie in [0, {k - 1}], found {int(pred_t[bad][0])}")
        # bincount on the tensors' own device; only the K*K counts travel to the host.
        counts = torch.bincount(target_t * k + pred_t, minlength=k * k)
        self.matrix += counts.cpu().numpy().reshape(k, k)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ranks when torch.distributed is initialized (a no-op otherwise)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            t = torch.from_numpy(self.matrix).to(device)
            dist.all_reduce(t)
            self.matrix = t.cpu().numpy()
        return self

    def compute(self) -> SegMetrics:
        m = self.matrix
        inter = np.diag(m).copy()
        target = m.sum(axis=1)
        predicted = m.sum(axis=0)
        return SegMetrics(
            intersection=inter,
            union=target + predicted - inter,
            target=target,
            predicted=predicted,
            class_names=self.class_names,
            confusion=m.copy(),
        )


def intersection_and_union(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, union, target) counts per class for one array pair, ground truth -1 ignored."""
    m = ConfusionMatrix(num_classes).update(pred, target).compute()
    return m.intersection, m.union, m.target
