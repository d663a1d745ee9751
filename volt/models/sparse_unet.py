"""The sparse-convolution UNet teacher (SpUNet-v1m1, spec §1.2) with two interchangeable backends.

`SparseUNet(in_channels, num_classes, base_channels, channels, layers, backend)` maps voxels
`grid_coord` (N, 3) int >= 0, `feat` (N, C_in) and `offset` (B,) cumulative scene ends to
(N, num_classes) logits (or (N, channels[-1]) features when num_classes is 0), in input order.
Layout: stem SubM k5 -> per stage [SparseConv k2 s2 -> BN -> ReLU, BasicBlocks] -> per stage in reverse
[SparseInverseConv k2 on the down conv's map -> BN -> ReLU, concat [up, skip], BasicBlocks] -> SubM k1.
Parameter names and shapes are those of the reference checkpoints (spconv names, kernels stored
(out, kx, ky, kz, in)), so state_dicts load 1:1 and are shared by both backends:
- backend="volt": kernel maps and gather-GEMM-scatter from volt.ops (CPU and CUDA, deterministic);
- backend="spconv": spconv's SubMConv3d / SparseConv3d / SparseInverseConv3d (ConvAlgo.Native, as the
  reference forces). On the CPU only inference is allowed and it runs on one thread: spconv 2.3.8's CPU
  scatter races with several threads and its CPU backward crashes without CUDA (spec §5 item 3).
spconv 2.3.8 computes a 1x1x1 convolution as feat @ weight.view(C_in, C_out), i.e. it reads the stored
(C_out, 1, 1, 1, C_in) buffer as (C_in, C_out); trained checkpoints depend on that reading, so the volt
backend computes 1x1x1 kernels the same way (checked against spconv and the parity fixture).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from volt.errors import require
from volt.models.convert import load_strict
from volt.ops.kernel_map import check_coords, downsample_map, inverse_map, submanifold_map
from volt.ops.sparse_conv import sparse_conv

BACKENDS = ("volt", "spconv")


@dataclass(frozen=True)
class SparseTensor:
    """Features of one resolution level plus the per-forward graph that knows its coordinates and maps."""

    feat: torch.Tensor  # (N_level, C)
    level: int  # 0 = input voxels; a down conv adds 1, an inverse conv subtracts 1
    graph: _VoltGraph | _SpconvGraph

    def replace(self, feat: torch.Tensor) -> SparseTensor:
        return replace(self, feat=feat)


class SparseConv(nn.Module):
    """One spconv-layout convolution; kind 'subm' (same voxels), 'down' (k2 s2) or 'inverse' (undoes a down)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, kind: str, indice_key: str | None = None,
                 bias: bool = False):
        super().__init__()
        if kind not in ("subm", "down", "inverse"):
            raise ValueError(f"kind must be subm|down|inverse, got {kind!r}")
        self.c_in, self.c_out, self.kernel, self.kind, self.indice_key = c_in, c_out, kernel, kind, indice_key
        self.weight = nn.Parameter(torch.empty(c_out, kernel, kernel, kernel, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        # The reference's init: SubM kernels trunc_normal(std 0.02, cut at +-2) with zero bias; down and inverse
        # kernels keep spconv's default, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), fan_in = k^3 * c_in.
        if kind == "subm":
            nn.init.trunc_normal_(self.weight, std=0.02, a=-2.0, b=2.0)
        else:
            bound = 1.0 / (kernel**3 * c_in) ** 0.5
            nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.graph.conv(self, x)

    def extra_repr(self) -> str:
        return f"{self.c_in}, {self.c_out}, kernel={self.kernel}, kind={self.kind}, bias={self.bias is not None}"


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d on the features (eps 1e-3, momentum 0.01 as in the reference)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-3, momentum=0.01)

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feat))


class SparseReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(F.relu(x.feat))


class BasicBlock(nn.Module):
    """Two SubM k3 convs with BN; residual through a 1x1 SubM conv + BN when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, indice_key: str):
        super().__init__()
        # nn.Sequential only for the reference's key names (proj.0.weight, proj.1.*).
        self.proj = (nn.Identity() if c_in == c_out
                     else nn.Sequential(SparseConv(c_in, c_out, 1, "subm"), SparseBatchNorm(c_out)))
        self.conv1 = SparseConv(c_in, c_out, 3, "subm", indice_key)
        self.bn1 = SparseBatchNorm(c_out)
        self.conv2 = SparseConv(c_out, c_out, 3, "subm", indice_key)
        self.bn2 = SparseBatchNorm(c_out)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = F.relu(self.bn1(self.conv1(x)).feat)
        out = self.bn2(self.conv2(x.replace(out))).feat
        return x.replace(F.relu(out + self.proj(x).feat))


def _blocks(c_in: int, c_out: int, count: int, indice_key: str) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        (f"block{i}", BasicBlock(c_in if i == 0 else c_out, c_out, indice_key)) for i in range(count)))


class SparseUNet(nn.Module):
    """SpUNet-v1m1: forward(grid_coord (N,3), feat (N,C_in), offset (B,)) -> (N, num_classes) in input order."""

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 32,
                 channels: Sequence[int] = (32, 64, 128, 256, 256, 128, 96, 96),
                 layers: Sequence[int] = (2, 3, 4, 6, 2, 2, 2, 2), backend: str = "volt"):
        super().__init__()
        channels, layers = tuple(channels), tuple(layers)
        if len(channels) != len(layers) or len(channels) % 2:
            raise ValueError(f"channels and layers must have the same even length, got {channels} and {layers}")
        self.backend = _check_backend(backend)
        stages = len(layers) // 2
        self.num_classes = num_classes
        self.out_channels = num_classes if num_classes > 0 else channels[-1]
        self.conv_input = nn.Sequential(
            SparseConv(in_channels, base_channels, 5, "subm", "stem"), SparseBatchNorm(base_channels), SparseReLU())
        self.down, self.enc, self.up, self.dec = (nn.ModuleList() for _ in range(4))
        enc_c, dec_c = base_channels, channels[-1]
        for s in range(stages):
            key = f"spconv{s + 1}"  # the down conv and its inverse share this map
            self.down.append(nn.Sequential(
                SparseConv(enc_c, channels[s], 2, "down", key), SparseBatchNorm(channels[s]), SparseReLU()))
            self.enc.append(_blocks(channels[s], channels[s], layers[s], f"subm{s + 1}"))
            # Up stage s returns level s + 1 -> s with dec_c channels; its blocks see [up, skip] channels.
            self.up.append(nn.Sequential(
                SparseConv(channels[-s - 2], dec_c, 2, "inverse", key), SparseBatchNorm(dec_c), SparseReLU()))
            self.dec.append(_blocks(dec_c + enc_c, dec_c, layers[-s - 1], f"subm{s}"))
            enc_c, dec_c = channels[s], channels[-s - 2]
        self.final = (SparseConv(channels[-1], num_classes, 1, "subm", bias=True) if num_classes > 0
                      else nn.Identity())

    def forward(self, grid_coord: torch.Tensor, feat: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        coords = _batched_coords(grid_coord, feat, offset)  # (N, 4) int32 [batch, x, y, z]
        backend = _check_backend(self.backend)
        if backend == "spconv":
            _check_spconv_use(self, feat)
        with (_one_thread() if backend == "spconv" and feat.device.type == "cpu" else contextlib.nullcontext()):
            graph = _VoltGraph(coords) if backend == "volt" else _SpconvGraph(coords, feat, offset.numel())
            x = self.conv_input(SparseTensor(feat, 0, graph))
            skips = [x]
            for down, enc in zip(self.down, self.enc):
                x = enc(down(x))
                skips.append(x)
            x = skips.pop()
            for s in reversed(range(len(self.up))):
                x = self.up[s](x)
                x = self.dec[s](x.replace(torch.cat([x.feat, skips.pop().feat], dim=1)))
            return self.final(x).feat


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "spconv":
        require("spconv.pytorch", "spconv", "The spconv teacher backend")
    return backend


def _batched_coords(grid_coord: torch.Tensor, feat: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(N, 4) int32 [batch, x, y, z] from grid_coord and the cumulative scene ends in offset."""
    if grid_coord.dim() != 2 or grid_coord.shape[1] != 3 or grid_coord.dtype.is_floating_point:
        raise ValueError(f"grid_coord must be an integer (N, 3) tensor, got {grid_coord.dtype} {tuple(grid_coord.shape)}")
    n = grid_coord.shape[0]
    if feat.dim() != 2 or feat.shape[0] != n:
        raise ValueError(f"feat must be (N, C) with N = {n} rows, got {tuple(feat.shape)}")
    if offset.dim() != 1 or offset.numel() == 0 or offset.dtype.is_floating_point:
        raise ValueError(f"offset must be a non-empty 1-D integer tensor, got {offset.dtype} {tuple(offset.shape)}")
    ends = offset.long().cpu()
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    if n == 0 or int(ends[-1]) != n or bool((counts < 0).any()):
        raise ValueError(f"offset must be non-decreasing cumulative scene ends ending at N = {n}, got {ends.tolist()}")
    batch = torch.repeat_interleave(torch.arange(len(counts)), counts).to(grid_coord.device)
    return torch.cat([batch[:, None], grid_coord.long()], dim=1).int().contiguous()


class _VoltGraph:
    """volt.ops backend: coordinates per level, submanifold maps per (level, kernel), down maps per level."""

    def __init__(self, coords: torch.Tensor):
        self.coords = [coords]
        self.subm: dict[tuple[int, int], object] = {}
        self.down: list = []  # down map from level l to l + 1

    def conv(self, m: SparseConv, x: SparseTensor) -> SparseTensor:
        if m.kind == "subm" and m.kernel == 1:
            # spconv's 1x1x1 rule (module docstring): the (C_out,1,1,1,C_in) buffer read as (C_in, C_out).
            out = x.feat @ m.weight.reshape(m.c_in, m.c_out)
            return x.replace(out if m.bias is None else out + m.bias.to(out.dtype))
        if m.kind == "subm":
            key = (x.level, m.kernel)
            if key not in self.subm:
                self.subm[key] = submanifold_map(self.coords[x.level], m.kernel)
            return x.replace(sparse_conv(x.feat, m.weight, self.subm[key], m.bias))
        if m.kind == "down":
            if len(self.down) == x.level:
                out_coords, kmap = downsample_map(self.coords[x.level], m.kernel, 2)
                self.coords.append(out_coords)
                self.down.append(kmap)
            return SparseTensor(sparse_conv(x.feat, m.weight, self.down[x.level], m.bias), x.level + 1, self)
        kmap = inverse_map(self.down[x.level - 1])
        return SparseTensor(sparse_conv(x.feat, m.weight, kmap, m.bias), x.level - 1, self)


class _SpconvGraph:
    """spconv backend: one SparseConvTensor per level (sharing spconv's indice_dict) and spconv conv modules."""

    def __init__(self, coords: torch.Tensor, feat: torch.Tensor, batch_size: int):
        import spconv.pytorch as spconv

        self.spconv = spconv
        # spconv trusts its input: reject what the volt maps would reject (negative, oversized, duplicate).
        coords = check_coords(coords)
        if torch.unique(coords, dim=0).shape[0] != coords.shape[0]:
            raise ValueError("grid_coord contains duplicate voxels within a scene; voxelize first")
        # Spatial shape as the reference sets it: the max coordinate + 96 (large enough for every map).
        shape = (coords[:, 1:].amax(dim=0) + 96).tolist()
        self.levels = {0: spconv.SparseConvTensor(feat, coords, shape, batch_size)}

    def _module(self, m: SparseConv):
        """The spconv module of m, built once and kept out of m's state_dict; it computes with m's tensors."""
        mod = m.__dict__.get("_spconv_module")
        if mod is None:
            sp, native = self.spconv, self.spconv.ConvAlgo.Native
            args = {"bias": m.bias is not None, "indice_key": m.indice_key, "algo": native}
            if m.kind == "subm":
                mod = sp.SubMConv3d(m.c_in, m.c_out, m.kernel, **args)
            elif m.kind == "down":
                mod = sp.SparseConv3d(m.c_in, m.c_out, m.kernel, stride=2, **args)
            else:
                mod = sp.SparseInverseConv3d(m.c_in, m.c_out, m.kernel, **args)
            m.__dict__["_spconv_module"] = mod
        # Rebind every call so .to()/.cuda()/load_state_dict on the parent are always seen.
        mod._parameters["weight"] = m.weight
        mod._parameters["bias"] = m.bias
        mod.training = m.training
        return mod

    def conv(self, m: SparseConv, x: SparseTensor) -> SparseTensor:
        out = self._module(m)(self.levels[x.level].replace_feature(x.feat))
        level = x.level + {"subm": 0, "down": 1, "inverse": -1}[m.kind]
        self.levels.setdefault(level, out)
        return SparseTensor(out.features, level, self)


def _check_spconv_use(model: nn.Module, feat: torch.Tensor) -> None:
    if feat.device.type == "cpu" and torch.is_grad_enabled() and (
            feat.requires_grad or any(p.requires_grad for p in model.parameters())):
        raise RuntimeError(
            "spconv's CPU backward is unusable (it crashes without CUDA): on the CPU run the spconv backend only "
            "for inference (torch.no_grad() or frozen parameters), or use backend='volt'")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """spconv 2.3.8's CPU kernels race with more than one torch thread (wrong rows); pin to one meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def convert_reference_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Reference teacher checkpoint (a state_dict or a dict holding 'state_dict') -> our key names.

    The reference names map 1:1; only the DDP `module.` and segmentor `backbone.` prefixes are stripped.
    Other keys are kept unchanged so that strict loading reports them.
    """
    sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state_dict mapping, got {type(checkpoint).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key.removeprefix("module.").removeprefix("backbone.")
        if name in out:
            raise ValueError(f"two checkpoint keys map to '{name}' after stripping prefixes")
        out[name] = value
    return out


def load_reference_state_dict(model: SparseUNet, checkpoint: Mapping[str, object],
                              source: str = "teacher checkpoint") -> None:
    """Strictly load a reference teacher checkpoint; DataError lists missing, unexpected and mis-shaped keys."""
    load_strict(model, convert_reference_state_dict(checkpoint), source)
