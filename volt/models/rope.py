"""3D axial rotary position embedding on integer patch coordinates (spec §1.1 "3D RoPE", §5 item 2).

Each head vector of size Dh is read as Dh/2 complex numbers from consecutive (even, odd) dims (the
interleaved / LLaMA convention, not rotate-half). Pair j is rotated by the angle `pos[axis_j] * freq_j`.
The pairs are split over the axes as [x | y | z]; each axis has its own geometric frequency ladder
`1 / theta ** linspace(0, 1, n)`, from 1 rad down to 1/theta rad per patch step, with theta = 100.

Split rule (`rope_split`): with P = Dh/2 pairs, z gets round(P/4) (at least 1), x gets the larger half of
the rest and y the remainder, i.e. x:y:z ≈ 3:3:2. For Dh = 64 this is the reference's (12, 12, 8).

Unlike the reference, nothing is tabulated: angles are computed from the positions on every call (float32,
like the reference's tables), so there is no scene-size cap and no out-of-range index. The same rotation is
applied to every head.

Inputs/outputs: `AxialRoPE(head_dim)(patch_coord (T, 3) int) -> (cos, sin)` each (T, Dh/2) float32;
`apply_rope(x (T, H, Dh), cos, sin) -> (T, H, Dh)` in x's dtype (rotation computed in float32).
"""

from __future__ import annotations

import torch
from torch import nn


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Number of complex pairs given to the x, y and z axes for a head of size `head_dim`."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head_dim >= 6 (one pair per axis at least), got {head_dim}")
    pairs = head_dim // 2
    nz = max(1, int(pairs / 4 + 0.5))  # round half up, explicit (Python's round() rounds half to even)
    nx = (pairs - nz + 1) // 2
    return nx, pairs - nz - nx, nz


def axis_frequencies(n: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Frequencies (n,) float32 of one axis: 1 / theta ** linspace(0, 1, n), i.e. 1 ... 1/theta rad/step."""
    return 1.0 / theta ** torch.linspace(0.0, 1.0, n, device=device, dtype=torch.float32)


class AxialRoPE(nn.Module):
    """Turns integer patch coordinates into per-pair rotation (cos, sin). Has no parameters or buffers."""

    def __init__(self, head_dim: int, theta: float = 100.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = float(theta)
        self.split = rope_split(head_dim)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"patch coordinates must be (T, 3), got {tuple(pos.shape)}")
        pos = pos.to(torch.float32)  # exact for |coord| < 2**24 patches
        angles = torch.cat(
            [pos[:, a : a + 1] * axis_frequencies(n, self.theta, pos.device) for a, n in enumerate(self.split)],
            dim=1,
        )  # (T, Dh/2): [x pairs | y pairs | z pairs]
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, split={self.split}"


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every interleaved pair of x (T, H, Dh) by the (T, Dh/2) angles; same rotation for all heads."""
    t, h, d = x.shape
    if cos.shape != (t, d // 2):
        raise ValueError(f"rotation table {tuple(cos.shape)} does not fit x {tuple(x.shape)}")
    a, b = x.float().reshape(t, h, d // 2, 2).unbind(-1)  # real, imaginary parts: (T, H, Dh/2)
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.stack((a * c - b * s, a * s + b * c), dim=-1)  # (a + ib)(c + is)
    return out.reshape(t, h, d).to(x.dtype)
