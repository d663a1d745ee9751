"""Small layers shared by the models: DropPath, Mlp, LayerScale and the Linear init rule.

These replace the few timm pieces the reference uses (spec §5 item 9: no timm). Parameter names match
timm's (`fc1`/`fc2`, `gamma`) so reference checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: zero whole rows of a residual branch with probability `p`, rescale the rest.

    The mask has one entry per index of dim 0. The backbone feeds flat (T, D) token lists, so one row
    is one token; the reference (timm's DropPath on its (T, D) features) drops per token in the same way.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    """fc1 (D -> hidden) -> GELU (exact erf form, as nn.GELU) -> fc2 (hidden -> D); no dropout."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale `gamma` initialised to `init_values` (CaiT / timm LayerScale)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def init_linear(module: nn.Module) -> None:
    """The reference init, for `module.apply`: Linear weights ~ N(0, 0.02²) truncated at ±2, zero bias.

    The truncation bounds are absolute (±2, i.e. ±100 std) as in timm's trunc_normal_, so in practice this
    is a plain normal. Norm layers keep their PyTorch defaults.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
