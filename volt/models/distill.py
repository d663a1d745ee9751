"""The frozen teacher used for distillation: a model kept outside the student's parameter tree.

`FrozenTeacher(model, condition_heads=None)` wraps either
- a single-dataset teacher whose `forward(grid_coord, feat, offset)` returns class logits (V, C), or
- a joint teacher: a feature backbone returning (V, F) plus `ConditionHeads` giving per-condition logits.

Why a plain object and not an `nn.Module` attribute (VOLT_SPEC.md §1.2, §1.3, §1.9 item 4): the teacher
must stay out of `state_dict()`, `parameters()`, the optimizer, DDP's gradient sync and the EMA copy. A
non-Module attribute of an `nn.Module` is invisible to all of these. `copy.deepcopy` returns the same
FrozenTeacher (see `__deepcopy__`), so the EMA deepcopy of the student does not duplicate the teacher in
GPU memory. Device moves: the owner (the `Segmentor`) forwards its `_apply` — the function behind
`.to()`, `.cuda()`, `.cpu()`, `.half()` — to `FrozenTeacher._apply`, so the teacher follows the student.

The teacher always runs in eval mode (BatchNorm running statistics), with `requires_grad=False`, under
`torch.no_grad()`, and inside whatever autocast context the caller has opened.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from volt.models.heads import ConditionHeads


class FrozenTeacher:
    """A frozen teacher model (plus optional per-condition heads) that never joins a parameter tree."""

    def __init__(self, model: nn.Module, condition_heads: ConditionHeads | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"teacher model must be an nn.Module, got {type(model).__name__}")
        if isinstance(model, FrozenTeacher) or isinstance(condition_heads, FrozenTeacher):
            raise TypeError("FrozenTeacher cannot wrap another FrozenTeacher")
        self.model = model
        self.condition_heads = condition_heads
        self.freeze()

    @property
    def is_joint(self) -> bool:
        """True when the model emits features and per-condition heads produce the logits."""
        return self.condition_heads is not None

    def modules(self) -> list[nn.Module]:
        return [self.model] + ([self.condition_heads] if self.condition_heads is not None else [])

    def freeze(self) -> FrozenTeacher:
        """Eval mode and no gradients; called at construction, before every run and after owner.train()."""
        for module in self.modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> FrozenTeacher:
        # A teacher never trains: BatchNorm must keep its running statistics.
        return self.freeze()

    def _apply(self, fn: Callable[[Tensor], Tensor]) -> FrozenTeacher:
        """Apply a tensor conversion (device/dtype move) to every parameter and buffer of the teacher."""
        for module in self.modules():
            module._apply(fn)
        return self

    def to(self, *args, **kwargs) -> FrozenTeacher:
        for module in self.modules():
            module.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        for t in self.model.parameters():
            return t.device
        for t in self.model.buffers():
            return t.device
        return torch.device("cpu")

    def __deepcopy__(self, memo: dict) -> FrozenTeacher:
        # Shared on purpose: an EMA copy of the student distils from the same (frozen) teacher.
        memo[id(self)] = self
        return self

    def num_classes(self, condition: str) -> int | None:
        """Classes of a joint teacher's head for `condition`; None for a single-dataset teacher."""
        if self.condition_heads is None:
            return None
        return self.condition_heads.num_classes[condition]

    def run(self, grid_coord: Tensor, feat: Tensor, offset: Tensor) -> Tensor:
        """Teacher output on the whole (mixed) batch: logits (V, C), or features (V, F) when joint."""
        self.freeze()
        with torch.no_grad():
            return self.model(grid_coord, feat, offset)

    def pseudo_labels(self, output: Tensor, condition: str, index: Tensor | None = None) -> Tensor:
        """Argmax labels (n,) int64 for the voxels `index` (all when None) of one condition.

        `output` is what `run` returned; a joint teacher's features go through its `condition` head first.
        Every voxel gets a label, including voxels whose ground truth is ignored.
        """
        with torch.no_grad():
            out = output if index is None else output[index]
            if self.condition_heads is not None:
                if condition not in self.condition_heads:
                    raise KeyError(
                        f"the joint teacher has no head for condition {condition!r}; "
                        f"it has {list(self.condition_heads.keys())}"
                    )
                out = self.condition_heads(out, condition)
            return out.argmax(dim=1)

    def __repr__(self) -> str:
        heads = f", condition_heads={list(self.condition_heads.keys())}" if self.condition_heads is not None else ""
        return f"FrozenTeacher({type(self.model).__name__}{heads})"
