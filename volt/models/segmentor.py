"""Segmentor: shared backbone + one head per dataset ("condition") + losses, with optional distillation.

Batch (a dict or an object with these attributes; VOLT_SPEC.md §1.2, §1.5):
  grid_coord (V, 3) int, feat (V, C_in), offset (B,) int64 cumulative scene ends AFTER mixing,
  unmixed_offset (B0,) int64 cumulative sample ends BEFORE mixing (defaults to offset),
  condition: list of B0 strings, one per unmixed sample (or one string for the whole batch),
  segment (V,) int labels, -1 = ignore.

Training (`model.train()`): every condition's voxels (found through unmixed_offset) go to their own head
and loss; total = Σ_c loss_c·n_c/N with n_c the voxels of condition c and N all voxels (point-weighted).
With a teacher: argmax pseudo-labels of the frozen teacher, run on the same mixed batch, supervise the
distill head of each condition over EVERY voxel (GT-ignored ones included), and
loss_c = (1-w)·GT + w·distill with w = 0.5. A non-finite loss_c is replaced by 0·sum(logits) (non-finite
logits counted as 0, so the replacement is exactly 0 with zero gradients); the part "<c>/nonfinite" is 1.0
then and 0.0 otherwise (written for every condition in the batch).
Eval (`model.eval()`): all samples must share one condition; its seg head gives the logits (V, C); the loss
is computed when `segment` is present. Distill heads are never used at inference.
Returns a `SegmentorOutput`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from volt.models.distill import FrozenTeacher
from volt.models.heads import ConditionHeads
from volt.models.losses import Criteria

_MISSING = object()


def _field(batch: Any, name: str, default: Any = _MISSING) -> Any:
    # Accept plain dicts (collate output) as well as typed batch objects.
    if isinstance(batch, Mapping):
        value = batch.get(name, default)
    else:
        value = getattr(batch, name, default)
    if value is _MISSING:
        raise KeyError(f"the batch has no '{name}'")
    return value


def _check_labels(target: Tensor, num_classes: int, condition: str) -> None:
    # A clear message instead of an index error (or a CUDA device-side assert) inside the loss.
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < -1):
        raise ValueError(
            f"labels of condition {condition!r} must lie in [-1, {num_classes - 1}], "
            f"got [{int(target.min())}, {int(target.max())}]"
        )


@dataclass
class SegmentorOutput:
    """logits: (V, C) in eval; {condition: (n_c, C_c)} in training, rows ordered as `index[condition]`.

    loss: 0-dim tensor (None in eval without labels). parts: detached scalars for logging, e.g.
    "ScanNet/seg/ce", "ScanNet/distill/lovasz", "ScanNet/loss", "ScanNet/nonfinite" (0 or 1, training).
    index: voxel ids per condition (training).
    """

    logits: Tensor | dict[str, Tensor]
    loss: Tensor | None = None
    parts: dict[str, Tensor] = field(default_factory=dict)
    index: dict[str, Tensor] | None = None
    condition: str | None = None


class Segmentor(nn.Module):
    """Backbone (forward(grid_coord, feat, offset) -> (V, feat_dim)) with per-condition heads."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: Mapping[str, int],
        *,
        feat_dim: int | None = None,
        criteria: Criteria | None = None,
        teacher: FrozenTeacher | nn.Module | None = None,
        teacher_criteria: Criteria | None = None,
        distill_weight: float = 0.5,
        distill_heads: bool | None = None,
    ):
        super().__init__()
        if feat_dim is None:
            feat_dim = getattr(backbone, "out_channels", None)
        if feat_dim is None:
            raise ValueError("pass feat_dim: the backbone has no 'out_channels' attribute")
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
        self.backbone = backbone
        self.seg_heads = ConditionHeads(feat_dim, num_classes)
        if teacher is not None and not isinstance(teacher, FrozenTeacher):
            teacher = FrozenTeacher(teacher)
        if distill_heads is None:
            distill_heads = teacher is not None
        if teacher is not None and not distill_heads:
            raise ValueError("a teacher needs distill heads")
        # Distill heads may exist without a teacher, so a distilled checkpoint loads strictly for fine-tuning.
        self.distill_heads = ConditionHeads(feat_dim, num_classes) if distill_heads else None
        # A plain attribute (FrozenTeacher is not an nn.Module): out of state_dict/parameters/DDP/EMA.
        self.teacher = teacher
        self.criteria = criteria if criteria is not None else Criteria.default()
        self.teacher_criteria = teacher_criteria if teacher_criteria is not None else self.criteria
        self.distill_weight = float(distill_weight)

    @property
    def conditions(self) -> tuple[str, ...]:
        return self.seg_heads.conditions

    # --- keep the teacher frozen and on the student's device -------------------------------------------
    def train(self, mode: bool = True) -> Segmentor:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.freeze()
        return self

    def _apply(self, fn, recurse: bool = True):  # behind .to(), .cuda(), .cpu(), .half(), ...
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn)
        return self

    # --- forward ----------------------------------------------------------------------------------------
    def forward(self, batch: Any) -> SegmentorOutput:
        grid_coord = _field(batch, "grid_coord")
        feat_in = _field(batch, "feat")
        offset = _field(batch, "offset")
        if self.training:
            return self._forward_train(batch, grid_coord, feat_in, offset)
        return self._forward_eval(batch, grid_coord, feat_in, offset)

    def _forward_eval(self, batch: Any, grid_coord: Tensor, feat_in: Tensor, offset: Tensor) -> SegmentorOutput:
        condition = self._single_condition(_field(batch, "condition", None))
        feat = self.backbone(grid_coord, feat_in, offset)  # (V, feat_dim)
        logits = self.seg_heads(feat, condition)  # (V, C)
        segment = _field(batch, "segment", None)
        if segment is None:
            return SegmentorOutput(logits=logits, condition=condition)
        _check_labels(segment, logits.shape[1], condition)
        loss, parts = self.criteria(logits, segment)
        parts = {f"{condition}/seg/{k}": v for k, v in parts.items()}
        parts["loss"] = loss.detach()
        return SegmentorOutput(logits=logits, loss=loss, parts=parts, condition=condition)

    def _forward_train(self, batch: Any, grid_coord: Tensor, feat_in: Tensor, offset: Tensor) -> SegmentorOutput:
        segment = _field(batch, "segment", None)
        if segment is None:
            raise KeyError("training needs 'segment' labels in the batch")
        num_voxels = feat_in.shape[0]
        routes = self._route(batch, offset, num_voxels, feat_in.device)
        teacher_out = self.teacher.run(grid_coord, feat_in, offset) if self.teacher is not None else None
        feat = self.backbone(grid_coord, feat_in, offset)  # (V, feat_dim)

        total = feat.float().sum() * 0.0  # stays 0 with a gradient path when no condition has voxels
        logits_out: dict[str, Tensor] = {}
        parts: dict[str, Tensor] = {}
        for condition, index in routes.items():
            feat_c = feat if index is None else feat[index]
            target = segment if index is None else segment[index]
            logits = self.seg_heads(feat_c, condition)  # (n_c, C_c)
            _check_labels(target, logits.shape[1], condition)
            loss, gt_parts = self.criteria(logits, target)
            parts.update({f"{condition}/seg/{k}": v for k, v in gt_parts.items()})
            guard = torch.nan_to_num(logits.float()).sum()
            if teacher_out is not None:
                pseudo = self._pseudo_labels(teacher_out, condition, index)
                distill_logits = self.distill_heads(feat_c, condition)
                distill_loss, d_parts = self.teacher_criteria(distill_logits, pseudo)
                parts.update({f"{condition}/distill/{k}": v for k, v in d_parts.items()})
                loss = (1.0 - self.distill_weight) * loss + self.distill_weight * distill_loss
                guard = guard + torch.nan_to_num(distill_logits.float()).sum()
            finite = bool(torch.isfinite(loss))
            if not finite:
                # One bad condition must not poison the step; keep the graph so every rank runs backward.
                # nan_to_num: with inf logits, the reference's plain 0·sum(logits) would itself be NaN.
                loss = guard * 0.0
            # Written every step (0 or 1): the trainer averages a part over the micro-batches that have it,
            # so the log shows the fraction of this condition's micro-batches that were non-finite.
            parts[f"{condition}/nonfinite"] = torch.full((), 0.0 if finite else 1.0, device=feat.device)
            count = feat_c.shape[0]
            parts[f"{condition}/loss"] = loss.detach()
            total = total + loss * (count / num_voxels)
            logits_out[condition] = logits
        parts["loss"] = total.detach()
        index_out = {
            c: (torch.arange(num_voxels, device=feat.device) if i is None else i) for c, i in routes.items()
        }
        return SegmentorOutput(logits=logits_out, loss=total, parts=parts, index=index_out)

    # --- helpers ----------------------------------------------------------------------------------------
    def _single_condition(self, condition: Any) -> str:
        if condition is None:
            if len(self.conditions) != 1:
                raise ValueError(f"the batch has no 'condition' and the model has several heads {self.conditions}")
            return self.conditions[0]
        names = [condition] if isinstance(condition, str) else list(condition)
        unique = sorted(set(names))
        if len(unique) != 1:
            raise ValueError(
                f"evaluation needs every sample of a batch to share one condition, got {unique}; "
                "evaluate one dataset at a time"
            )
        if unique[0] not in self.seg_heads:
            raise KeyError(f"unknown condition {unique[0]!r}; this model has heads for {list(self.conditions)}")
        return unique[0]

    def _route(self, batch: Any, offset: Tensor, num_voxels: int, device: torch.device) -> dict[str, Tensor | None]:
        """{condition: voxel ids (n_c,) int64} for conditions with voxels; None means 'all voxels'."""
        unmixed = _field(batch, "unmixed_offset", None)
        unmixed = offset if unmixed is None else unmixed
        unmixed = torch.as_tensor(unmixed).to(device=device, dtype=torch.long).reshape(-1)
        condition = _field(batch, "condition", None)
        if condition is None:
            if len(self.conditions) != 1:
                raise ValueError(f"the batch has no 'condition' and the model has several heads {self.conditions}")
            condition = self.conditions[0]
        names = [condition] * unmixed.numel() if isinstance(condition, str) else list(condition)
        if len(names) != unmixed.numel():
            raise ValueError(f"{len(names)} condition strings for {unmixed.numel()} samples in unmixed_offset")
        total = int(unmixed[-1]) if unmixed.numel() else 0
        if total != num_voxels:
            raise ValueError(f"unmixed_offset ends at {total} but the batch has {num_voxels} voxels")
        unknown = sorted(set(names) - set(self.conditions))
        if unknown:
            raise KeyError(f"unknown condition(s) {unknown}; this model has heads for {list(self.conditions)}")
        present = sorted(set(names), key=names.index)
        if len(present) == 1:
            return {present[0]: None} if num_voxels > 0 else {}
        counts = torch.diff(unmixed, prepend=unmixed.new_zeros(1))  # voxels per unmixed sample
        sample_cond = torch.tensor([present.index(n) for n in names], device=device)
        voxel_cond = torch.repeat_interleave(sample_cond, counts)  # (V,)
        routes: dict[str, Tensor | None] = {}
        for k, name in enumerate(present):
            index = torch.nonzero(voxel_cond == k).squeeze(1)
            if index.numel() > 0:
                routes[name] = index
        return routes

    def _pseudo_labels(self, teacher_out: Tensor, condition: str, index: Tensor | None) -> Tensor:
        expected = self.distill_heads.num_classes[condition]
        got = self.teacher.num_classes(condition) if self.teacher.is_joint else teacher_out.shape[1]
        if got != expected:
            raise ValueError(
                f"teacher gives {got} classes for condition {condition!r} but the distill head has {expected}"
            )
        return self.teacher.pseudo_labels(teacher_out, condition, index)
