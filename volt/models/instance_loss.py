"""Losses of the SPFormer-style instance head (VOLT_SPEC.md §2 "Losses"), with re-matching per layer.

Input: `predictions` = one list per prediction step (initial queries, then every decoder layer; the last is
the final output), each a list over scenes of (cls_logits (Q, C+1), mask_logits (Q, S_scene)); `targets` =
one (gt_classes (G,) int64 in 0..C-1, gt_masks (G, S_scene) float {0,1}) per scene.
Per step: every scene is matched anew (`HungarianMatcher`), then
  class: cross-entropy over all queries (unmatched -> "no object" = class C), label smoothing 0.05, class
         weight 0.1 for "no object", averaged over the scenes;
  bce / dice: on the matched (query, instance) pairs, averaged within a scene and then over the scenes that
         have ground truth (the reference's fix_mean_loss);
  step loss = w_class·class + w_bce·bce + w_dice·dice. The total is the sum over steps (aux + final).
Output: (total loss 0-dim, parts dict of detached scalars: final-step class/bce/dice, the total, and
"matched"/"matched_correct" counts of the final step for a training accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from volt.models.matching import HungarianMatcher, dice_loss

Prediction = tuple[Tensor, Tensor]  # (cls_logits (Q, C+1), mask_logits (Q, S))
Target = tuple[Tensor, Tensor]  # (gt_classes (G,), gt_masks (G, S))


class InstanceCriterion(nn.Module):
    """Matching + class/BCE/dice losses summed over the prediction steps (see the module docstring)."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, *, w_class: float = 0.2,
                 w_bce: float = 1.0, w_dice: float = 1.0, no_object_weight: float = 0.1,
                 label_smoothing: float = 0.05):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.w_class, self.w_bce, self.w_dice = w_class, w_bce, w_dice
        self.label_smoothing = label_smoothing
        weight = torch.ones(num_classes + 1)
        weight[-1] = no_object_weight
        self.register_buffer("class_weight", weight, persistent=False)

    def step_loss(self, preds: Sequence[Prediction], targets: Sequence[Target],
                  count_matches: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one prediction step over the scenes of the batch; parts "matched"/"matched_correct" only
        with `count_matches` (the final step's are reported)."""
        cls_terms, bce_terms, dice_terms = [], [], []
        matched = correct = 0
        for (cls_logits, mask_logits), (gt_cls, gt_masks) in zip(preds, targets):
            cls_logits, mask_logits = cls_logits.float(), mask_logits.float()
            qi, gi = self.matcher(cls_logits, mask_logits, gt_cls, gt_masks)
            target = torch.full((cls_logits.shape[0],), self.num_classes, dtype=torch.int64, device=cls_logits.device)
            target[qi] = gt_cls[gi]
            cls_terms.append(F.cross_entropy(cls_logits, target, weight=self.class_weight,
                                             label_smoothing=self.label_smoothing))
            if gi.numel():
                logits, tgt = mask_logits[qi], gt_masks[gi].float()
                bce_terms.append(F.binary_cross_entropy_with_logits(logits, tgt))
                dice_terms.append(dice_loss(logits, tgt))
                if count_matches:  # summed as a tensor: no device sync per scene
                    matched += gi.numel()
                    correct = correct + (cls_logits[qi].detach().argmax(1) == gt_cls[gi]).sum()
        zero = sum(p[1].sum() for p in preds) * 0.0  # keeps the graph when no scene has ground truth
        loss_cls = torch.stack(cls_terms).mean()
        loss_bce = torch.stack(bce_terms).mean() if bce_terms else zero
        loss_dice = torch.stack(dice_terms).mean() if dice_terms else zero
        loss = self.w_class * loss_cls + self.w_bce * loss_bce + self.w_dice * loss_dice
        parts = {"class": loss_cls.detach(), "bce": loss_bce.detach(), "dice": loss_dice.detach()}
        if count_matches:
            parts.update(matched=torch.tensor(float(matched)),
                         matched_correct=torch.as_tensor(correct, dtype=torch.float32))
        return loss, parts

    def forward(self, predictions: Sequence[Sequence[Prediction]],
                targets: Sequence[Target]) -> tuple[Tensor, dict[str, Tensor]]:
        if not predictions:
            raise ValueError("no predictions to compute a loss for")
        total, parts = None, {}
        last = len(predictions) - 1
        for i, preds in enumerate(predictions):  # the last step is the final output; its parts are reported
            loss, parts = self.step_loss(preds, targets, count_matches=i == last)
            total = loss if total is None else total + loss
        # A non-finite total is returned as is: the optimizer step skips inf/NaN gradients
        # (volt.engine.optim.optimizer_step), so the weights, schedule and EMA stay untouched.
        return total, {**parts, "loss": total.detach()}
