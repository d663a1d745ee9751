"""InstanceSegmentor: a feature backbone (Volt) + the SPFormer-style superpoint query head (VOLT_SPEC.md §2).

Batch (a dict, volt/data/pipelines_instance.py): grid_coord (V,3), feat (V,C_in), offset (B,) cumulative
scene ends after mixing, segment (V,) semantic ids (-1 ignore), instance (V,) ids (-1 none) and
superpoint (V,) ids, both unique across the batch's scenes.
Label spaces: semantic ids 0..num_classes-1; the head predicts the non-stuff classes re-indexed 0..C-1
(ScanNet-20 minus wall and floor: C = 18); `class_map[c]` is the semantic id of head class c. Everything
this module returns uses semantic ids.
Targets (per scene, at voxel resolution: the batch carries one superpoint id per voxel): an instance's class
is the majority semantic label of its labelled voxels; stuff, unlabelled or voxel-less instances are no
target. Its superpoint mask = superpoints more than half of whose voxels belong to it; an instance that
covers no superpoint that way is dropped.
- train mode `forward(batch)` -> InstanceOutput(loss, parts, predictions).
- `predict(batch, min_size=None)` -> one dict per scene: masks (K, V_scene) bool over the scene's rows,
  classes (K,) int64 semantic ids, scores (K,) float. Inference: softmax without "no object" -> top-k over
  queries x classes -> score = class prob x mean sigmoid of the superpoints with positive logit -> matrix NMS
  (linear kernel: scores decayed, nothing removed) -> superpoint masks = sigmoid > mask_thresh -> rows ->
  drop scores <= score_thresh and masks of <= min_size rows (default npoint_thresh).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from volt.models.instance_loss import InstanceCriterion
from volt.models.matching import HungarianMatcher
from volt.models.spformer import QueryDecoder, superpoint_pool


@dataclass
class InstanceOutput:
    loss: Tensor | None
    parts: dict[str, Tensor] = field(default_factory=dict)
    predictions: list = field(default_factory=list)  # steps x scenes of (cls_logits, mask_logits)


def matrix_nms(masks: Tensor, classes: Tensor, scores: Tensor, weights: Tensor | None = None) -> Tensor:
    """Decayed scores (linear kernel, SOLOv2 matrix NMS): each mask is decayed by its largest IoU with a
    higher-scored mask of the same class, compensated by how much that mask was itself suppressed.
    masks (K, S) {0,1}; weights (S,) area of each column (superpoint size); returns (K,) in the input order."""
    k = masks.shape[0]
    if k == 0:
        return scores
    order = scores.argsort(descending=True)
    m = masks[order].float() * (weights[None] if weights is not None else 1.0)
    b = masks[order].float()
    inter = m @ b.T  # (K, K) weighted intersection
    area = m.sum(1)
    iou = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-6)).triu(diagonal=1)
    same = (classes[order][:, None] == classes[order][None, :]).triu(diagonal=1)
    decay_iou = iou * same  # [i, j]: IoU of j with the better-scored i of its class
    compensate = decay_iou.max(0).values  # how much each mask is suppressed itself
    decay = ((1 - decay_iou) / (1 - compensate[:, None]).clamp(min=1e-6)).min(0).values
    out = torch.empty_like(scores)
    out[order] = scores[order] * decay
    return out


class InstanceSegmentor(nn.Module):
    """Backbone (forward(grid_coord, feat, offset) -> (V, U)) + QueryDecoder + InstanceCriterion."""

    def __init__(self, backbone: nn.Module, num_classes: int = 20, stuff: Sequence[int] = (0, 1), *,
                 num_queries: int = 400, d_model: int = 384, num_heads: int = 8, ffn_dim: int = 1024,
                 num_layers: int = 6, aux_loss: bool = True, loss_weights: dict[str, float] | None = None,
                 cost_weights: dict[str, float] | None = None, no_object_weight: float = 0.1,
                 label_smoothing: float = 0.05, topk: int = 100, mask_thresh: float = 0.55,
                 score_thresh: float = 0.0, npoint_thresh: int = 100):
        super().__init__()
        feat_dim = getattr(backbone, "out_channels", None)
        if feat_dim is None:
            raise ValueError("the backbone needs an 'out_channels' attribute (its feature size)")
        self.backbone = backbone
        self.num_classes = num_classes
        kept = [c for c in range(num_classes) if c not in set(stuff)]
        to_head = torch.full((num_classes + 1,), -1, dtype=torch.int64)  # index num_classes: label -1
        to_head[torch.tensor(kept, dtype=torch.int64)] = torch.arange(len(kept))
        self.register_buffer("class_map", torch.tensor(kept, dtype=torch.int64), persistent=False)
        self.register_buffer("to_head", to_head, persistent=False)
        self.decoder = QueryDecoder(feat_dim, len(kept), num_queries, d_model, num_heads, ffn_dim, num_layers)
        lw = {"class": 0.2, "bce": 1.0, "dice": 1.0, **(loss_weights or {})}
        cw = {"class": 0.5, "bce": 1.0, "dice": 1.0, **(cost_weights or {})}
        matcher = HungarianMatcher(cw["class"], cw["bce"], cw["dice"])
        self.criterion = InstanceCriterion(len(kept), matcher, w_class=lw["class"], w_bce=lw["bce"],
                                           w_dice=lw["dice"], no_object_weight=no_object_weight,
                                           label_smoothing=label_smoothing)
        self.aux_loss = aux_loss
        self.topk, self.mask_thresh, self.score_thresh, self.npoint_thresh = topk, mask_thresh, score_thresh, npoint_thresh

    # --- shared steps ---------------------------------------------------------------------------------------
    def scenes(self, batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[slice]]:
        """Backbone -> per scene: pooled superpoint features (S_b, U), local superpoint id per row (V_b,),
        rows per superpoint (S_b,), row slice."""
        # (V, U); pooled in float32: a superpoint may sum thousands of fp16 rows under AMP
        feat = self.backbone(batch["grid_coord"], batch["feat"], batch["offset"]).float()
        ends = batch["offset"].tolist()
        sp_feats, sp_ids, sp_sizes, rows = [], [], [], []
        for start, end in zip([0, *ends[:-1]], ends):
            sl = slice(start, end)
            # ids 0..S_b-1 per scene; the sizes serve pooling, targets and NMS alike
            _, local, size = torch.unique(batch["superpoint"][sl], return_inverse=True, return_counts=True)
            sp_feats.append(superpoint_pool(feat[sl], local, size))
            sp_ids.append(local)
            sp_sizes.append(size)
            rows.append(sl)
        return sp_feats, sp_ids, sp_sizes, rows

    def scene_targets(self, segment: Tensor, instance: Tensor, sp_local: Tensor,
                      sp_size: Tensor) -> tuple[Tensor, Tensor]:
        """(gt_classes (G,) head ids, gt_masks (G, S) float) of one scene; sp_size (S,) rows per superpoint;
        see the module docstring."""
        num_sp = len(sp_size)
        has = instance >= 0
        ids, inst_local = torch.unique(instance[has], return_inverse=True)
        g = len(ids)
        if g == 0:
            return torch.zeros(0, dtype=torch.int64, device=segment.device), segment.new_zeros((0, num_sp)).float()
        seg = segment[has]
        labelled = seg >= 0
        votes = torch.zeros(g, self.num_classes, device=segment.device)
        votes.index_put_((inst_local[labelled], seg[labelled]), torch.ones(int(labelled.sum()), device=segment.device),
                         accumulate=True)
        cls = torch.where(votes.sum(1) > 0, votes.argmax(1), torch.full_like(votes[:, 0], self.num_classes,
                                                                            dtype=torch.int64))
        head_cls = self.to_head[cls]
        cover = torch.zeros(g, num_sp, device=segment.device)
        cover.index_put_((inst_local, sp_local[has]), torch.ones(len(inst_local), device=segment.device),
                         accumulate=True)
        masks = (cover / sp_size[None]) > 0.5
        keep = (head_cls >= 0) & masks.any(1)
        return head_cls[keep], masks[keep].float()

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> InstanceOutput:
        sp_feats, sp_ids, sp_sizes, rows = self.scenes(batch)
        predictions = self.decoder(sp_feats)
        if "instance" not in batch or "segment" not in batch:
            return InstanceOutput(None, {}, predictions)
        targets = [self.scene_targets(batch["segment"][sl], batch["instance"][sl], ids, size)
                   for sl, ids, size in zip(rows, sp_ids, sp_sizes)]
        steps = predictions if self.aux_loss else predictions[-1:]
        loss, parts = self.criterion(steps, targets)
        return InstanceOutput(loss, parts, predictions)

    # --- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: dict[str, Any], min_size: int | None = None) -> list[dict[str, Tensor]]:
        min_size = self.npoint_thresh if min_size is None else min_size
        sp_feats, sp_ids, sp_sizes, _ = self.scenes(batch)
        final = self.decoder(sp_feats)[-1]
        return [self.scene_instances(cls_logits.float(), mask_logits.float(), ids, size, min_size)
                for (cls_logits, mask_logits), ids, size in zip(final, sp_ids, sp_sizes)]

    def scene_instances(self, cls_logits: Tensor, mask_logits: Tensor, sp_local: Tensor, sp_size: Tensor,
                        min_size: int) -> dict[str, Tensor]:
        """Instances of one scene from its final-step logits; sp_size (S,) rows per superpoint; masks over
        the scene's rows."""
        num_cls = cls_logits.shape[1] - 1
        prob = cls_logits.softmax(-1)[:, :-1].flatten()  # (Q*C,) without "no object"
        scores, idx = prob.topk(min(self.topk, prob.numel()))
        query, head_cls = idx // num_cls, idx % num_cls
        logits = mask_logits[query]  # (K, S)
        sig = logits.sigmoid()
        positive = (logits > 0).float()
        scores = scores * (sig * positive).sum(1) / (positive.sum(1) + 1e-6)
        sp_masks = sig > self.mask_thresh
        scores = matrix_nms(sp_masks, head_cls, scores, sp_size.float())
        masks = sp_masks[:, sp_local]  # (K, V_scene)
        keep = (scores > self.score_thresh) & (masks.sum(1) > min_size)
        order = scores[keep].argsort(descending=True)
        return {"masks": masks[keep][order], "classes": self.class_map[head_cls[keep][order]],
                "scores": scores[keep][order]}
