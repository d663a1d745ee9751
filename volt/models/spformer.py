"""SPFormer-style instance head: superpoint pooling and the masked-attention query decoder (VOLT_SPEC.md §2).

- `superpoint_pool(feat (V, U), superpoint (V,) ids 0..S-1, counts (S,) rows per id) -> (S, U)`: scatter-mean
  of the backbone's per-voxel features over each superpoint.
- `QueryDecoder(in_channels=U, num_classes=C, num_queries=400, d_model=384, num_heads=8, ffn_dim=1024,
  num_layers=6, attn_mask_thresh=0.5)`: `forward(sp_feats: list of (S_b, U) per scene)` -> one list per
  prediction step (the initial queries, then each layer; the last is the final output), each a list over
  scenes of (cls_logits (Q, C+1), mask_logits (Q, S_b)). Layers: masked cross-attention of the queries on
  the superpoint features (superpoints whose predicted mask sigmoid < 0.5 are hidden; a query that would see
  nothing sees everything; the mask is detached), then self-attention, then an FFN — each post-norm with a
  residual, no query position embedding, dropout 0. Scenes are processed one at a time (their superpoint
  counts differ). The class head is LN -> Linear -> ReLU -> Linear(C+1); mask logits are the dot product of
  the normalized query with each superpoint's mask feature (x_mask: Linear -> ReLU -> Linear of the pooled
  backbone features).
"""

from __future__ import annotations

from torch import Tensor, nn


def superpoint_pool(feat: Tensor, superpoint: Tensor, counts: Tensor) -> Tensor:
    """(S, U) mean of `feat` rows over each superpoint id 0..S-1; `counts` (S,) = rows per id (as
    torch.unique's return_counts gives them); an id with no rows gives zeros."""
    out = feat.new_zeros(len(counts), feat.shape[1]).index_add_(0, superpoint, feat)
    return out / counts.clamp(min=1).to(feat.dtype)[:, None]


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query: Tensor, source: Tensor, blocked: Tensor | None) -> Tensor:
        # query (1, Q, d), source (1, S, d), blocked (Q, S) True = may not attend
        out, _ = self.attn(query, source, source, attn_mask=blocked, need_weights=False)
        return self.norm(query + out)


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query: Tensor) -> Tensor:
        out, _ = self.attn(query, query, query, need_weights=False)
        return self.norm(query + out)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query: Tensor) -> Tensor:
        return self.norm(query + self.net(query))


class QueryDecoder(nn.Module):
    """Learnable queries refined by masked cross-attention on superpoint features; see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int, num_queries: int = 400, d_model: int = 384,
                 num_heads: int = 8, ffn_dim: int = 1024, num_layers: int = 6, attn_mask_thresh: float = 0.5):
        super().__init__()
        self.attn_mask_thresh = attn_mask_thresh
        self.input_proj = nn.Sequential(nn.Linear(in_channels, d_model), nn.LayerNorm(d_model), nn.ReLU())
        self.x_mask = nn.Sequential(nn.Linear(in_channels, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.query = nn.Embedding(num_queries, d_model)
        self.cross = nn.ModuleList(CrossAttentionLayer(d_model, num_heads) for _ in range(num_layers))
        self.self_attn = nn.ModuleList(SelfAttentionLayer(d_model, num_heads) for _ in range(num_layers))
        self.ffn = nn.ModuleList(FFNLayer(d_model, ffn_dim) for _ in range(num_layers))
        self.out_norm = nn.LayerNorm(d_model)
        self.out_cls = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, num_classes + 1))

    def predict_head(self, query: Tensor, mask_feats: Tensor) -> tuple[Tensor, Tensor]:
        """(cls_logits (Q, C+1), mask_logits (Q, S))."""
        q = self.out_norm(query[0])  # (Q, d)
        return self.out_cls(q), q @ mask_feats.T

    def attention_block(self, mask_logits: Tensor) -> Tensor:
        """(Q, S) True = superpoint hidden from the query in the next cross-attention."""
        blocked = mask_logits.detach().sigmoid() < self.attn_mask_thresh
        blocked[blocked.all(1)] = False  # a query that would see nothing sees everything
        return blocked

    def forward_scene(self, feats: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Predictions of every step for one scene; feats (S, U) pooled superpoint features."""
        source = self.input_proj(feats)[None]  # (1, S, d)
        mask_feats = self.x_mask(feats)  # (S, d)
        query = self.query.weight[None]  # (1, Q, d)
        steps = [self.predict_head(query, mask_feats)]
        for cross, self_attn, ffn in zip(self.cross, self.self_attn, self.ffn):
            blocked = self.attention_block(steps[-1][1])  # from the previous step's masks
            query = ffn(self_attn(cross(query, source, blocked)))
            steps.append(self.predict_head(query, mask_feats))
        return steps

    def forward(self, sp_feats: list[Tensor]) -> list[list[tuple[Tensor, Tensor]]]:
        per_scene = [self.forward_scene(f) for f in sp_feats]
        return [list(step) for step in zip(*per_scene)]  # steps x scenes
