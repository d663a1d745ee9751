"""Exponential moving average of the model's weights (VOLT_SPEC.md §1.3, a Volt addition).

`EMA(model, decay)` keeps a deep copy of the unwrapped model (DDP's `.module` is taken), in eval mode with
`requires_grad=False`. After every optimizer step that was not skipped, `update(model)` sets
  p_ema = decay·p_ema + (1 − decay)·p        for every floating-point parameter,
  b_ema = b                                  for every buffer (BatchNorm running statistics are copied).
The EMA model is what validation scores and what best checkpoints are chosen by; `state_dict` /
`load_state_dict` save and restore it (a checkpoint's `ema` entry). A Segmentor's FrozenTeacher is shared,
not copied, by the deepcopy (volt.models.distill), so the EMA does not duplicate the teacher.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind a DistributedDataParallel (or similar `.module`) wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class EMA:
    """Shadow copy of a model updated by exponential moving average; see the module docstring."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = unwrap(model)
        d = self.decay
        for (name, p_ema), (name_live, p) in zip(self.module.named_parameters(), live.named_parameters(),
                                                  strict=True):
            if name != name_live:
                raise RuntimeError(f"EMA parameter order differs from the model: {name} vs {name_live}")
            if p_ema.dtype.is_floating_point:
                p_ema.mul_(d).add_(p.detach(), alpha=1.0 - d)
            else:
                p_ema.copy_(p)
        for b_ema, b in zip(self.module.buffers(), live.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state, strict=True)
