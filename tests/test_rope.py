"""3D RoPE: the reference split, an explicit 2×2-rotation implementation, and the relative-position property."""

from __future__ import annotations

import math

import pytest
import torch

from volt.models.rope import AxialRoPE, apply_rope, rope_split


def manual_rope(x: torch.Tensor, pos: torch.Tensor, theta: float = 100.0) -> torch.Tensor:
    """Rotate pair j of every head by the 2×2 matrix [[c, -s], [s, c]], angle = pos[axis_j] · freq_j (float64)."""
    t, h, d = x.shape
    axes = [a for a, n in enumerate(rope_split(d)) for _ in range(n)]
    index_in_axis = [sum(1 for b in axes[:j] if b == axes[j]) for j in range(d // 2)]
    counts = rope_split(d)
    out = torch.empty(t, h, d, dtype=torch.float64)
    for i in range(t):
        for j in range(d // 2):
            n = counts[axes[j]]
            freq = theta ** (-(index_in_axis[j] / (n - 1))) if n > 1 else 1.0
            angle = float(pos[i, axes[j]]) * freq
            rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                               dtype=torch.float64)
            for k in range(h):
                out[i, k, 2 * j : 2 * j + 2] = rot @ x[i, k, 2 * j : 2 * j + 2].double()
    return out


@pytest.mark.parametrize(
    "head_dim, split", [(64, (12, 12, 8)), (32, (6, 6, 4)), (48, (9, 9, 6)), (40, (8, 7, 5)), (6, (1, 1, 1))]
)
def test_split_rule(head_dim, split):
    assert rope_split(head_dim) == split
    assert sum(split) * 2 == head_dim


@pytest.mark.parametrize("head_dim", [63, 4, 0])
def test_split_rejects_bad_head_dims(head_dim):
    with pytest.raises(ValueError):
        rope_split(head_dim)


def test_reference_frequency_ladder():
    """Per axis from 1 rad down to 1/theta = 0.01 rad per patch step (spec §1.1)."""
    cos, sin = AxialRoPE(64)(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    angles = torch.atan2(sin, cos)
    x_pairs, y_pairs, z_pairs = angles[0, :12], angles[1, 12:24], angles[2, 24:]
    for ladder in (x_pairs, y_pairs, z_pairs):
        assert ladder[0].item() == pytest.approx(1.0)
        assert ladder[-1].item() == pytest.approx(0.01, rel=1e-5)
        assert bool((ladder[1:] < ladder[:-1]).all())
    # an x step leaves the y and z pairs unrotated
    assert torch.equal(angles[0, 12:], torch.zeros(20))


@pytest.mark.parametrize("head_dim, heads", [(64, 2), (32, 3)])
def test_matches_explicit_rotation(head_dim, heads):
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 300, (9, 3), generator=g)
    x = torch.randn(9, heads, head_dim, generator=g)
    got = apply_rope(x, *AxialRoPE(head_dim)(pos))
    torch.testing.assert_close(got.double(), manual_rope(x, pos), atol=1e-4, rtol=1e-4)


def test_positions_beyond_the_reference_table():
    """No 1024 cap: large coordinates rotate correctly (float32 angles, so a looser tolerance)."""
    g = torch.Generator().manual_seed(1)
    pos = torch.tensor([[1023, 5, 511], [1024, 2048, 512], [5000, 3000, 4000]])
    x = torch.randn(3, 1, 64, generator=g)
    got = apply_rope(x, *AxialRoPE(64)(pos))
    torch.testing.assert_close(got.double(), manual_rope(x, pos), atol=5e-3, rtol=0)


def test_same_rotation_for_every_head():
    x = torch.randn(5, 1, 64).expand(5, 4, 64).contiguous()
    out = apply_rope(x, *AxialRoPE(64)(torch.randint(0, 50, (5, 3))))
    for h in range(1, 4):
        assert torch.equal(out[:, h], out[:, 0])


def test_relative_position_property():
    """<R(p) q, R(r) k> depends only on p - r: shifting both positions leaves every dot product unchanged."""
    g = torch.Generator().manual_seed(2)
    rope = AxialRoPE(64)
    q, k = torch.randn(1, 1, 64, generator=g), torch.randn(1, 1, 64, generator=g)

    def score(p, r):
        qr = apply_rope(q, *rope(p.view(1, 3)))
        kr = apply_rope(k, *rope(r.view(1, 3)))
        return (qr * kr).sum().item()

    for _ in range(5):
        p, r = torch.randint(0, 100, (3,), generator=g), torch.randint(0, 100, (3,), generator=g)
        base = score(p, r)
        for shift in ([3, 0, 0], [0, 7, 0], [0, 0, 11], [250, -40, 90], [1500, 1200, 700]):
            s = torch.tensor(shift)
            assert score(p + s, r + s) == pytest.approx(base, abs=2e-3)
        # and it does depend on p - r
        assert abs(score(p + torch.tensor([1, 0, 0]), r) - base) > 1e-4


def test_dtype_kept_math_in_float32():
    x = torch.randn(4, 2, 64)
    cos, sin = AxialRoPE(64)(torch.randint(0, 20, (4, 3)))
    out = apply_rope(x.bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, apply_rope(x.bfloat16().float(), cos, sin).bfloat16())


def test_rotation_preserves_norms():
    x = torch.randn(6, 2, 40)
    out = apply_rope(x, *AxialRoPE(40)(torch.randint(-30, 30, (6, 3))))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
