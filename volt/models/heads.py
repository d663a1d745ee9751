"""One linear classifier per dataset ("condition"), used for the segmentation and the distillation heads.

`ConditionHeads(in_dim, {"ScanNet": 20, "nuScenes": 16})` is an `nn.ModuleDict` of `Linear(in_dim, C_c)`.
Subclassing ModuleDict (rather than holding one) keeps the state_dict keys `<cond>.weight` / `<cond>.bias`,
so a segmentor's keys read `seg_heads.ScanNet.weight` exactly as in the reference checkpoints
(VOLT_SPEC.md §1.2). `forward(feat (V, in_dim), condition) -> logits (V, C_condition)`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn


class ConditionHeads(nn.ModuleDict):
    """Linear heads keyed by condition name; all read the same backbone features."""

    def __init__(self, in_dim: int, num_classes: Mapping[str, int]):
        if not num_classes:
            raise ValueError("ConditionHeads needs at least one condition")
        heads = {}
        for name, count in num_classes.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"condition names must be non-empty strings without '.', got {name!r}")
            if int(count) < 1:
                raise ValueError(f"condition {name!r} needs at least one class, got {count}")
            heads[name] = nn.Linear(int(in_dim), int(count))
        super().__init__(heads)
        self.in_dim = int(in_dim)

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.keys())

    @property
    def num_classes(self) -> dict[str, int]:
        return {name: head.out_features for name, head in self.items()}

    def forward(self, feat: Tensor, condition: str) -> Tensor:
        if condition not in self:
            raise KeyError(f"unknown condition {condition!r}; this model has heads for {list(self.keys())}")
        return self[condition](feat)  # (V, C_condition)
