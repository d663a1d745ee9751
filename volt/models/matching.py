"""Hungarian matching of predicted instance queries to ground-truth instances (VOLT_SPEC.md §2, SPFormer).

Inputs per scene: class logits (Q, C+1) (last column = "no object"), mask logits (Q, S) over superpoints,
GT classes (G,) in the head's 0..C-1 numbering and GT superpoint masks (G, S) in {0, 1}.
`pairwise_bce` / `pairwise_dice` give every (query, GT) pair's loss, `dice_loss` the mean dice of
row i against target row i (the matched pairs, for the loss).
`match_cost` gives the (Q, G) cost = w_cls·(−softmax prob of the GT class) + w_bce·mean pairwise sigmoid
BCE + w_dice·pairwise dice (with +1 smoothing), in float32 with NaN/inf replaced by 1e6.
`HungarianMatcher(...)(cls_logits, mask_logits, gt_classes, gt_masks)` -> (query ids, gt ids), both int64
(min(Q, G),), solved with scipy.optimize.linear_sum_assignment (optional dep, imported when first used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from volt.errors import require


def pairwise_bce(mask_logits: Tensor, gt_masks: Tensor) -> Tensor:
    """(Q, G) mean over superpoints of BCE(sigmoid(logit_q), target_g), via two matmuls."""
    s = max(mask_logits.shape[1], 1)
    pos = F.softplus(-mask_logits)  # -log σ(x)
    neg = F.softplus(mask_logits)  # -log(1-σ(x))
    return (pos @ gt_masks.T + neg @ (1 - gt_masks).T) / s


def soft_dice(inter: Tensor, p_sum: Tensor, t_sum: Tensor) -> Tensor:
    """1 − (2·|p∩t| + 1) / (|p| + |t| + 1), elementwise (broadcasting)."""
    return 1 - (2 * inter + 1) / (p_sum + t_sum + 1)


def pairwise_dice(mask_logits: Tensor, gt_masks: Tensor) -> Tensor:
    """(Q, G) soft dice of every (query, GT) pair with p = sigmoid(logits)."""
    p = mask_logits.sigmoid()
    return soft_dice(p @ gt_masks.T, p.sum(1)[:, None], gt_masks.sum(1)[None, :])


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of the soft dice of row i against target row i (the diagonal of `pairwise_dice`)."""
    p = logits.sigmoid()
    return soft_dice((p * target).sum(1), p.sum(1), target.sum(1)).mean()


def match_cost(cls_logits: Tensor, mask_logits: Tensor, gt_classes: Tensor, gt_masks: Tensor,
               w_class: float = 0.5, w_bce: float = 1.0, w_dice: float = 1.0) -> Tensor:
    """(Q, G) matching cost; see the module docstring."""
    cls_logits, mask_logits, gt_masks = cls_logits.float(), mask_logits.float(), gt_masks.float()
    prob = cls_logits.softmax(-1)[:, gt_classes]  # (Q, G)
    cost = -w_class * prob + w_bce * pairwise_bce(mask_logits, gt_masks) + w_dice * pairwise_dice(mask_logits, gt_masks)
    return torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)


def linear_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of rows to columns (scipy), as int64 tensors on cost's device."""
    optimize = require("scipy.optimize", "instance", "Hungarian matching of instance queries")
    rows, cols = optimize.linear_sum_assignment(cost.detach().cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.int64, device=cost.device),
            torch.as_tensor(cols, dtype=torch.int64, device=cost.device))


class HungarianMatcher:
    """Callable: (cls_logits (Q,C+1), mask_logits (Q,S), gt_classes (G,), gt_masks (G,S)) -> (qi, gi)."""

    def __init__(self, w_class: float = 0.5, w_bce: float = 1.0, w_dice: float = 1.0):
        self.w_class, self.w_bce, self.w_dice = w_class, w_bce, w_dice

    @torch.no_grad()
    def __call__(self, cls_logits: Tensor, mask_logits: Tensor, gt_classes: Tensor,
                 gt_masks: Tensor) -> tuple[Tensor, Tensor]:
        if gt_classes.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=cls_logits.device)
            return empty, empty.clone()
        cost = match_cost(cls_logits, mask_logits, gt_classes, gt_masks, self.w_class, self.w_bce, self.w_dice)
        return linear_assignment(cost)

    def __repr__(self) -> str:
        return f"HungarianMatcher(w_class={self.w_class}, w_bce={self.w_bce}, w_dice={self.w_dice})"
