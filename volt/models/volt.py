"""The Volume Transformer backbone (spec §1.1): voxels -> patch tokens -> ViT blocks -> voxels.

`VolumeTransformer(...)(grid_coord (V, 3) int >= 0, feat (V, C_in), offset (B,) int64 cumulative voxel counts)
-> (V, U)` features per voxel, in input order. Pipeline:
  volt.ops.patchify   voxels -> 5×5×5 patches: token order (scene, px, py, pz), slot per voxel, cu_seqlens
  Tokenizer           Linear(125·C_in -> D) over each patch's slots                      (T, D)
  Block × depth       pre-norm: x + DropPath(LS(Attn(LN x))), x + DropPath(LS(Mlp(LN x)))
                      global attention per scene, q/k LayerNorm per head, 3D RoPE on patch coords
  Decoder             BN-GELU-Linear(D -> U)-BN-GELU -> Detokenizer (125 slot rows) -> BN-GELU   (V, U)
Parameter names equal the reference's (tokenizer.proj, blocks.i.attn.qkv, decoder.unembed.proj, ...), so a
converted reference state_dict loads strictly (volt.models.convert).

Presets (`PRESETS`, `build_volt`): volt-s (D 384, depth 12, 6 heads, U 128), volt-b (768/12/12, U 256) and
volt-tiny (D 64, depth 2, 1 head of 64, U 32) for CPU demos and tests.
"""

from __future__ import annotations

import torch
from torch import nn

from volt.models.attention import Attention
from volt.models.layers import DropPath, LayerScale, Mlp, init_linear
from volt.models.rope import AxialRoPE
from volt.models.tokenizer import Detokenizer, Tokenizer
from volt.ops.patchify import patchify

PRESETS: dict[str, dict] = {
    "volt-s": {"embed_dim": 384, "depth": 12, "num_heads": 6, "up_mlp_dim": 128, "drop_path": 0.3},
    "volt-b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "up_mlp_dim": 256, "drop_path": 0.3},
    "volt-tiny": {"embed_dim": 64, "depth": 2, "num_heads": 1, "up_mlp_dim": 32, "drop_path": 0.1},
}


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class Block(nn.Module):
    """Pre-norm Transformer block over packed tokens (T, D)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, drop_path: float = 0.0,
        init_values: float | None = None, attn_backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, backend=attn_backend)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rope, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), rope, cu_seqlens, max_seqlen)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class Decoder(nn.Module):
    """Tokens (T, D) -> per-voxel features (V, U): pre MLP, slot-wise detokenizer, post BN-GELU."""

    def __init__(self, embed_dim: int, channels: int, patch: int = 5):
        super().__init__()
        self.pre = nn.Sequential(
            _bn(embed_dim), nn.GELU(), nn.Linear(embed_dim, channels, bias=False), _bn(channels), nn.GELU()
        )
        self.unembed = Detokenizer(channels, patch)
        self.post = nn.Sequential(_bn(channels), nn.GELU())

    def forward(self, tokens: torch.Tensor, voxel2token: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        return self.post(self.unembed(self.pre(tokens), voxel2token, slot))


class VolumeTransformer(nn.Module):
    """Volt backbone; see the module docstring for the pipeline and shapes."""

    def __init__(
        self,
        in_channels: int = 6,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        patch: int = 5,
        up_mlp_dim: int = 128,
        drop_path: float = 0.3,
        increase_drop_path: bool = True,
        init_values: float | None = None,
        rope_theta: float = 100.0,
        attn_backend: str = "auto",
    ):
        super().__init__()
        self.in_channels = in_channels
        self.patch = patch
        self.out_channels = up_mlp_dim
        self.tokenizer = Tokenizer(in_channels, embed_dim, patch)
        # drop-path rate grows linearly over depth (0 -> drop_path), as in the reference
        if increase_drop_path:
            rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        else:
            rates = [drop_path] * depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qk_norm, rate, init_values, attn_backend) for rate in rates
        )
        self.rope = AxialRoPE(embed_dim // num_heads, rope_theta)
        self.decoder = Decoder(embed_dim, up_mlp_dim, patch)
        self.apply(init_linear)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block to `backend` ("auto", "sdpa", "flash", "varlen")."""
        for block in self.blocks:
            block.attn.backend = backend

    def forward(self, grid_coord: torch.Tensor, feat: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        if grid_coord.ndim != 2 or grid_coord.shape[1] != 3 or feat.shape != (grid_coord.shape[0], self.in_channels):
            raise ValueError(
                f"expected grid_coord (V, 3) and feat (V, {self.in_channels}), "
                f"got {tuple(grid_coord.shape)} and {tuple(feat.shape)}"
            )
        layout = patchify(grid_coord, offset, patch_size=self.patch)
        x = self.tokenizer(feat, layout.voxel2token, layout.slot, layout.num_tokens)  # (T, D)
        rope = self.rope(layout.patch_coord)  # (cos, sin), each (T, Dh/2)
        for block in self.blocks:
            x = block(x, rope, layout.cu_seqlens, layout.max_seqlen)  # (T, D)
        return self.decoder(x, layout.voxel2token, layout.slot)  # (V, U)


def build_volt(preset: str = "volt-s", in_channels: int = 6, **overrides) -> VolumeTransformer:
    """A backbone from a named preset, with any constructor argument overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Volt preset '{preset}'; choose one of {sorted(PRESETS)}")
    return VolumeTransformer(in_channels=in_channels, **{**PRESETS[preset], **overrides})
