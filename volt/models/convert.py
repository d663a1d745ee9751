"""Reference (official Volt / Pointcept) backbone checkpoints -> our VolumeTransformer, loaded strictly.

- `volt_from_reference_config(config)`: the reference constructor's keyword arguments -> our backbone.
- `split_reference_checkpoint(sd)`: a full reference checkpoint (optionally {"state_dict": ...}, keys with
  `module.` from DDP) -> (backbone keys without `backbone.`, every other key, e.g. the heads).
- `convert_reference_state_dict(sd)`: backbone keys -> our keys and layouts.
- `load_strict(model, sd, source)`: load, or raise DataError listing missing / unexpected / mis-shaped keys
  (spec §5 item 4: never a silent partial load, unlike the reference's instance configs, §1.9 item 1).

Our parameter names equal the current reference's, so new-style checkpoints convert by prefix stripping.
Old checkpoints (before the reference's commit 11a0a0d) used spconv layers for the tokenizer and detokenizer;
their 5-D kernels are converted as follows (spconv 2.x stores kernels (out, kx, ky, kz, in), like the
teacher fixture). Both spconv and our layers are correlations with kernel = stride = p and no padding:
- Tokenizer `SparseConv3d(C, D)`: output patch q receives Σ_k W[:, k, :] · feat(voxel p·q + k), where k is
  exactly the in-patch offset o = grid_coord mod p. Our Linear reads input entry slot·C + c with
  slot = ox·p² + oy·p + oz, which is the row-major flattening of (kx, ky, kz, c). Hence
  `tokenizer.weight` (D, p, p, p, C) -> `tokenizer.proj.weight` = reshape(D, p³·C); `tokenizer.bias` ->
  `tokenizer.proj.bias`.
- Detokenizer `SparseInverseConv3d(U, U)` reuses the tokenizer's index pairs reversed: voxel p·q + k receives
  W[:, k, :] · token(q). Our Linear's output row slot·U + u_out is that slot's (U_out, U_in) matrix, hence
  `decoder.unembed.weight` (U_out, p, p, p, U_in) -> `decoder.unembed.proj.weight` =
  permute(1, 2, 3, 0, 4).reshape(p³·U_out, U_in); `decoder.unembed.bias` is kept.
tests/test_volt.py checks both rules against torch's dense conv3d / conv_transpose3d (the same
correlation convention). RoPE tables (`pos_enc.*`) are recomputed by us and dropped if present.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from volt.errors import DataError
from volt.models.volt import VolumeTransformer

_SAME_NAME = ("in_channels", "embed_dim", "depth", "num_heads", "mlp_ratio", "qk_norm", "up_mlp_dim",
              "drop_path", "init_values", "increase_drop_path")


def volt_from_reference_config(config: Mapping, **overrides) -> VolumeTransformer:
    """Our backbone from the reference `Volt(...)` arguments (stride = kernel_size, or `patch`)."""
    sizes = {int(config[k]) for k in ("stride", "kernel_size", "patch") if k in config}
    if len(sizes) > 1:
        raise ValueError(f"patches must not overlap: stride/kernel_size/patch differ in {dict(config)}")
    unknown = set(config) - set(_SAME_NAME) - {"stride", "kernel_size", "patch"}
    if unknown:
        raise ValueError(f"unknown reference Volt config keys: {sorted(unknown)}")
    kwargs = {k: config[k] for k in _SAME_NAME if k in config}
    if sizes:
        kwargs["patch"] = sizes.pop()
    return VolumeTransformer(**{**kwargs, **overrides})


def _strip(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix):]
    return key


def split_reference_checkpoint(sd: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone tensors, other tensors). Without any `backbone.` key, everything counts as backbone."""
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    flat = {_strip(k, "module."): v for k, v in sd.items()}
    if not any(k.startswith("backbone.") for k in flat):
        return dict(flat), {}
    backbone = {k[len("backbone."):]: v for k, v in flat.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in flat.items() if not k.startswith("backbone.")}
    return backbone, rest


def _spconv_kernel(key: str, w: torch.Tensor) -> torch.Tensor:
    if w.ndim != 5 or not w.shape[1] == w.shape[2] == w.shape[3]:
        raise DataError(key, f"expected an spconv 2.x kernel (out, p, p, p, in), got shape {tuple(w.shape)}")
    return w


def convert_reference_state_dict(sd: Mapping) -> dict[str, torch.Tensor]:
    """Reference backbone tensors (new Linear or old spconv layout, any prefixes) -> our state_dict."""
    backbone, _ = split_reference_checkpoint(sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        if key.startswith("pos_enc."):
            continue  # RoPE tables: recomputed from positions
        if key == "tokenizer.weight" and value.ndim == 5:
            w = _spconv_kernel(key, value)
            out["tokenizer.proj.weight"] = w.reshape(w.shape[0], -1).contiguous()
        elif key == "tokenizer.bias":
            out["tokenizer.proj.bias"] = value
        elif key == "decoder.unembed.weight" and value.ndim == 5:
            w = _spconv_kernel(key, value)
            out["decoder.unembed.proj.weight"] = w.permute(1, 2, 3, 0, 4).reshape(-1, w.shape[4]).contiguous()
        else:
            out[key] = value
    return out


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> None:
    """Load every tensor or none: raise DataError(source, ...) listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    bad_shape = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    problems = [f"{name}: {', '.join(keys)}" for name, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", bad_shape)) if keys]
    if problems:
        raise DataError(source, "checkpoint does not match the model; " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
