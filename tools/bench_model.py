"""Volt-S forward / forward+backward benchmark against a re-implementation of the reference's tokenizer.

`run(device="cpu", quick=False, scale=None, reps=None) -> list[dict]` measures, in one run, on two synthetic
scenes from `make_scene`: "indoor", a room (floor, four walls, boxes) of ~120k voxels at 2 cm with 6 input
channels (colour, normal), and "outdoor", a 32-beam LiDAR sweep of 35k points at 5 cm
(volt.data.synthetic_outdoor) with 4 channels (xyz, strength). Rows (dicts), by their "table" key:
- "model": forward (eval, inference mode) and forward+backward (train mode) of our backbone ("volt") and of
  `ReferenceTokenizerVolt` ("reference tok"), the same weights with the reference toolkit's tokenizer
  (torch.unique(dim=0) over (scene, patch), dense [T, 125, C] buffer + Linear) and detokenizer (dense
  Linear(U -> 125U) over all tokens, then a gather). Columns: median ms, tokens/s, achieved TFLOP/s
  (`volt_flops`; x3 for fwd+bwd), peak memory above weights and inputs, share of the forward spent in
  volt.models.attention.attention, our speed-up over the reference, and on CUDA the MFU (`bf16_peak`).
- "tokenize": the tokenize + detokenize step alone (ours: volt.ops.patchify + the Tokenizer and Detokenizer of
  volt.models.tokenizer in their "auto" modes: on the CPU in float32 the fused slot kernels of
  volt.ops.slot_matmul, on CUDA the dense products), forward and forward+backward, with the speed-up over
  the reference (target >= 5x).
On CUDA both tables add "volt grouped detok": ours with the detokenizer forced to the grouped GEMM (its
mode="auto" takes the dense full product there, which measured faster; see volt.models.tokenizer).
The two implementations' calls alternate in one process (load changes on a shared machine hit both alike);
speed-ups compare the fastest repetitions (noise only adds time).
CPU: fp32; memory = the rise of the peak resident set during one extra call (VmHWM, reset before it, with
glibc's free heap released), as the CPU allocator keeps no statistics. One Volt-S training step on a full-size scene takes a minute on
2 cores, so the "model" table shrinks the scenes by CPU_SCALE (indoor 0.5 of the voxels, outdoor 0.1 of the
points; `scale` overrides both); the "tokenize" table stays full size. CUDA: bf16 autocast,
torch.cuda.max_memory_allocated, synchronized timings, full size. --quick: Volt-tiny on small scenes.
On a CPU shared with other jobs use --threads 1: with 2 OpenMP threads and one core taken, every parallel
region waits for a descheduled thread (Volt-tiny steps measured 10-200x slower).
On a virtual machine with slow page faults, every fresh CPU tensor above glibc's 32 MB mmap threshold pays its
page faults again (a 64 MB index_select: 84 ms fresh vs 4 ms into a reused buffer, one thread on our loaded
2-core VM). PyTorch's THP_MEM_ALLOC_ENABLE=1 (2 MB transparent huge pages for large CPU tensors) removes most
of that cost for both implementations; set it in the shell (tools/bench.py imports torch before this file).

    python tools/bench_model.py [--device cuda] [--quick] [--scale S] [--reps N] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: bench.py loads this file by path

from _bench_common import add_device_args, parse_device_args, sync_fn, time_calls

import volt.models.attention as attention_module
from volt.models import VolumeTransformer, build_volt
from volt.ops import _ext
from volt.ops.patchify import patchify
from volt.ops.voxelize import voxelize

SCENES = {"indoor": (120_000, 0.02, 6), "outdoor": (35_000, 0.05, 4)}  # size (voxels | points), grid, C_in
CPU_SCALE = {"indoor": 0.5, "outdoor": 0.1}  # model table on the CPU: ~2.9k and ~2.7k tokens
QUICK_SCALE = 0.03
# Dense bf16 tensor-core peaks without sparsity, from NVIDIA's data sheets (SXM parts unless named); first match.
BF16_PEAK = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


# --- scenes -------------------------------------------------------------------------------------------------
def _room_points(area: float, rng: np.random.Generator, grid: float) -> tuple[np.ndarray, ...]:
    """Points (3 per voxel face) on a 6 x 5 x 2.6 m room with 8 open-bottom boxes, scaled to `area` m^2."""
    lay = np.random.default_rng(12345)  # fixed layout: only the scale follows `area`
    faces = [((0, 0, 0), (6, 0, 0), (0, 5, 0), (0, 0, 1), 1)]  # origin, u, v, normal, label
    for o, u, n in (((0, 0, 0), (6, 0, 0), (0, 1, 0)), ((0, 5, 0), (6, 0, 0), (0, -1, 0)),
                    ((0, 0, 0), (0, 5, 0), (1, 0, 0)), ((6, 0, 0), (0, 5, 0), (-1, 0, 0))):
        faces.append((o, u, (0, 0, 2.6), n, 0))
    for k in range(8):
        w, d, h = lay.uniform(0.4, 1.6), lay.uniform(0.4, 1.2), lay.uniform(0.4, 2.0)
        x, y = lay.uniform(0.1, 5.9 - w), lay.uniform(0.1, 4.9 - d)
        lab = 2 + k
        faces += [((x, y, h), (w, 0, 0), (0, d, 0), (0, 0, 1), lab),
                  ((x, y, 0), (w, 0, 0), (0, 0, h), (0, -1, 0), lab),
                  ((x, y + d, 0), (w, 0, 0), (0, 0, h), (0, 1, 0), lab),
                  ((x, y, 0), (0, d, 0), (0, 0, h), (-1, 0, 0), lab),
                  ((x + w, y, 0), (0, d, 0), (0, 0, h), (1, 0, 0), lab)]
    o, u, v, nrm = (np.array([f[i] for f in faces], dtype=np.float64) for i in range(4))
    label = np.array([f[4] for f in faces])
    face_area = np.linalg.norm(np.cross(u, v), axis=1)
    s = np.sqrt(area / face_area.sum())  # uniform scale of the whole room
    n = int(3 * area / grid**2)
    f = rng.choice(len(faces), n, p=face_area / face_area.sum())
    a, b = rng.random((2, n, 1))
    coord = s * (o[f] + a * u[f] + b * v[f]) + rng.normal(0, 0.003, (n, 3))
    color = np.clip(lay.uniform(30, 225, (len(faces), 3))[f] + rng.normal(0, 8, (n, 3)), 0, 255)
    feat = np.concatenate([color / 127.5 - 1, nrm[f]], 1)  # NormalizeColor + normal, as the ScanNet pipeline
    return coord.astype(np.float32), feat.astype(np.float32), label[f]


def make_scene(kind: str, size: int | None = None, seed: int = 0, device: str = "cpu") -> dict:
    """One voxelized scene: grid_coord (V,3) int32, feat (V,C), segment (V,) int64, offset (1,), on `device`.
    indoor: `size` = target voxel count at 2 cm (hit to a few %); outdoor: `size` = points before voxelizing."""
    target, grid, _ = SCENES[kind]
    size = size or target
    rng = np.random.default_rng(seed)
    if kind == "indoor":
        area = size * grid**2
        for _ in range(2):  # surface noise thickens walls: calibrate the area on the voxel count
            coord, _, _ = _room_points(area, np.random.default_rng(seed), grid)
            count = voxelize(torch.from_numpy(coord), [len(coord)], grid, mode="test", return_order=False).num_voxels
            area *= size / count
        coord, feat, label = _room_points(area, rng, grid)
    else:
        from volt.data.synthetic_outdoor import simulate_sweep  # numpy only (no plyfile)
        from volt.data.synthetic_street import build_street

        pts, fine = simulate_sweep(rng, build_street(rng, (0.0, 0.0)), 0.0, 0.0, azimuth_steps=max(16, size // 20))
        keep = np.sort(rng.choice(len(pts), min(size, len(pts)), replace=False))
        coord, label = pts[keep, :3], fine[keep].astype(np.int64) % 16
        feat = np.concatenate([coord, pts[keep, 3:4] / 255.0], 1)  # xyz + strength, as the nuScenes pipeline
    vox = voxelize(torch.from_numpy(coord), [len(coord)], grid, generator=torch.Generator().manual_seed(seed))
    pick = vox.pick
    return {"grid_coord": vox.grid_coord.to(device), "feat": torch.from_numpy(feat)[pick].to(device),
            "segment": torch.from_numpy(label)[pick].to(device), "offset": vox.voxel_offset.to(device)}


# --- the reference toolkit's tokenizer and detokenizer on our weights -------------------------------------
def reference_tokenize(grid_coord, offset, feat, proj: nn.Linear, patch: int = 5):
    """torch.unique(dim=0) over (scene, patch) -> dense [T, p^3, C] buffer (last write wins) -> Linear.
    Returns tokens (T, D), unique rows (T, 4) = (scene, px, py, pz), voxel->token (V,), slot (V,)."""
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    scene = torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)
    g = grid_coord.long()
    p = torch.div(g, patch, rounding_mode="floor")
    rows, inverse = torch.unique(torch.cat([scene[:, None], p], 1), dim=0, sorted=True, return_inverse=True)
    o = g - p * patch
    slot = (o[:, 0] * patch + o[:, 1]) * patch + o[:, 2]
    buf = feat.new_zeros(rows.shape[0], patch**3, feat.shape[1])
    buf[inverse, slot] = feat
    return proj(buf.flatten(1)), rows, inverse, slot


def reference_detokenize(z, inverse, slot, unembed: nn.Module):
    """Dense Linear(U -> p^3 U) over every token, then each voxel gathers (its token, its slot) + bias."""
    full = F.linear(z, unembed.proj.weight).view(z.shape[0], -1, z.shape[1])  # (T, p^3, U)
    return full[inverse, slot] + unembed.bias


class ReferenceTokenizerVolt(nn.Module):
    """`model`'s blocks, RoPE and decoder behind the reference toolkit's tokenizer and detokenizer."""

    def __init__(self, model: VolumeTransformer):
        super().__init__()
        self.model = model

    def forward(self, grid_coord: torch.Tensor, feat: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        m = self.model
        x, rows, inverse, slot = reference_tokenize(grid_coord, offset, feat, m.tokenizer.proj, m.patch)
        cu = torch.zeros(len(offset) + 1, dtype=torch.int32, device=x.device)
        cu[1:] = torch.cumsum(torch.bincount(rows[:, 0], minlength=len(offset)), 0)
        max_seqlen = int((cu[1:] - cu[:-1]).max())
        rope = m.rope(rows[:, 1:])
        for block in m.blocks:
            x = block(x, rope, cu, max_seqlen)
        z = m.decoder.pre(x)
        return m.decoder.post(reference_detokenize(z, inverse, slot, m.decoder.unembed))


# --- FLOPs, timing, memory ------------------------------------------------------------------------------
def volt_flops(model: VolumeTransformer, tokens_per_scene: list[int], voxels: int, num_classes: int = 0) -> float:
    """Forward FLOPs (a multiply-add = 2) of `model`: per token 2·(4D² + 2·D·hidden) per block (qkv, proj, MLP) and
    2·D·U (decoder pre); per scene of L tokens 4·L²·D per block (q·kᵀ and a·v); per voxel 2·C·D (its tokenizer
    slot), 2·U² (its detokenizer row) and 2·U·K (a K-class head). The tokenizer and detokenizer count the occupied
    slots only, the work the layers need (a dense formulation does more: the reference's p³·C·D per token). Norms,
    RoPE, GELU and softmax are left out. A training step is counted as 3x the forward."""
    d, u, c = model.tokenizer.proj.out_features, model.out_channels, model.in_channels
    hidden = model.blocks[0].mlp.fc1.out_features
    depth = len(model.blocks)
    tokens = sum(tokens_per_scene)
    attn = depth * sum(4.0 * n * n * d for n in tokens_per_scene)
    per_token = 2.0 * depth * (4 * d * d + 2 * d * hidden) + 2.0 * d * u
    return tokens * per_token + voxels * 2.0 * (c * d + u * u + u * num_classes) + attn


def bf16_peak(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a card by name (BF16_PEAK), None when unknown."""
    return next((peak for key, peak in BF16_PEAK if key in device_name), None)


@contextlib.contextmanager
def attention_timer(sync):
    """Accumulate the seconds spent in volt.models.attention.attention (Attention.forward looks it up at call)."""
    total, original = [0.0], attention_module.attention

    def timed(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        total[0] += time.perf_counter() - t
        return out

    attention_module.attention = timed
    try:
        yield total
    finally:
        attention_module.attention = original


def _release_free_heap() -> None:
    """Hand glibc's free heap memory back to the system, so that a following peak RSS counts what the next
    call allocates, whichever call ran before (freed memory stays resident and would be reused unseen)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class Memory:
    """Peak memory (MB) above the level at `start()`. CUDA: the allocator's statistics. CPU: the peak resident
    set (VmHWM), which start() resets through /proc/self/clear_refs (Linux >= 4.0) after releasing the free
    heap; None where that fails."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"

    @staticmethod
    def _status_mb(field: str) -> float:
        with open("/proc/self/status") as fh:
            line = next(x for x in fh if x.startswith(field + ":"))
        return int(line.split()[1]) / 1024  # kB

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
            return
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak RSS to the current RSS
            self.base = self._status_mb("VmRSS")
        except OSError:
            self.base = None

    def peak(self) -> float | None:
        if self.cuda:
            return max(torch.cuda.max_memory_allocated() / 2**20 - self.base, 0.0)
        return None if self.base is None else max(self._status_mb("VmHWM") - self.base, 0.0)


def autocast(device: str):
    """bf16 autocast on CUDA; the CPU runs in float32."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- measurements -------------------------------------------------------------------------------------------
def _setup(kind: str, device: str, size: int, preset: str) -> tuple[dict, VolumeTransformer]:
    """The scene and a Volt model with fresh weights from seed 0 (both implementations share it)."""
    scene = make_scene(kind, size, device=device)
    torch.manual_seed(0)
    return scene, build_volt(preset, in_channels=SCENES[kind][2]).to(device)


def _steps(net: nn.Module, scene: dict, device: str):
    """forward(n) (inference mode) and train(n) (forward, backward, zero grads) on the first n voxels."""
    g, f, off = scene["grid_coord"], scene["feat"], scene["offset"]

    def forward(n=None):
        with torch.inference_mode(), autocast(device):
            net(g[:n], f[:n], off if n is None else off.new_tensor([n]))

    def train(n=None):
        with autocast(device):
            out = net(g[:n], f[:n], off if n is None else off.new_tensor([n]))
        out.float().square().mean().backward()
        net.zero_grad(set_to_none=True)

    return forward, train


@contextlib.contextmanager
def detokenizer_mode(model: VolumeTransformer, mode: str):
    """Runs `model`'s detokenizer in `mode` ("auto" | "kernel" | "grouped" | "dense") inside the block."""
    unembed = model.decoder.unembed
    saved, unembed.mode = unembed.mode, mode
    try:
        yield
    finally:
        unembed.mode = saved


class DetokenizerModeVolt(nn.Module):
    """`model` with its detokenizer forced to `mode` (the CUDA rows: which path pays there)."""

    def __init__(self, model: VolumeTransformer, mode: str):
        super().__init__()
        self.model, self.mode = model, mode

    def forward(self, *args):
        with detokenizer_mode(self.model, self.mode):
            return self.model(*args)


def _nets(model: VolumeTransformer, device: str) -> dict[str, nn.Module]:
    """Ours (detokenizer mode "auto": the dense product on CUDA) and the reference's tokenizer; on CUDA also
    ours with the grouped-GEMM detokenizer, so the table shows whether auto's choice there is the faster one."""
    nets = {"volt": model, "reference tok": ReferenceTokenizerVolt(model)}
    if torch.device(device).type == "cuda":
        nets["volt grouped detok"] = DetokenizerModeVolt(model, "grouped")
    return nets


def measure_scene(kind: str, device: str, size: int, preset: str, reps: int) -> list[dict]:
    """Forward and forward+backward rows of both implementations on one scene. Their timed calls alternate, so
    load changes on a shared machine hit both alike; peak memory gets one extra call per implementation."""
    scene, model = _setup(kind, device, size, preset)
    g, off = scene["grid_coord"], scene["offset"]
    steps = {impl: _steps(net, scene, device) for impl, net in _nets(model, device).items()}
    sync, cuda = sync_fn(device), torch.device(device).type == "cuda"
    layout = patchify(g, off, model.patch)
    tokens = (layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]).tolist()
    flops = volt_flops(model, tokens, g.shape[0])
    peak = bf16_peak(torch.cuda.get_device_name()) if cuda else None
    # Warm-up: the full scene on CUDA (kernels, cuBLAS); on the CPU a 10% slice, which warms the same code cheaply.
    warm = None if cuda else max(1, g.shape[0] // 10)
    times = {(impl, phase): [] for impl in steps for phase in ("forward", "fwd+bwd")}
    attn = dict.fromkeys(steps, 0.0)  # seconds spent in attention during the timed CPU forwards
    share, peaks, mem = {}, {}, Memory(device)
    for phase, index in (("forward", 0), ("fwd+bwd", 1)):
        model.train(phase == "fwd+bwd")
        for fns in steps.values():
            fns[index](warm)
        count = phase == "forward" and not cuda  # nothing to sync on the CPU: the timed passes give the share
        for r in range(reps):  # alternate which implementation goes first (it meets a cold heap and caches)
            for impl, fns in list(steps.items())[:: 1 if r % 2 == 0 else -1]:
                with attention_timer(sync) if count else contextlib.nullcontext([0.0]) as spent:
                    times[impl, phase] += time_calls(fns[index], 1, sync)
                attn[impl] += spent[0]
        # One more call each for the peak memory, and on CUDA for the attention share (syncing around every
        # attention call would distort the timed passes).
        for impl, fns in steps.items():
            mem.start()
            with attention_timer(sync) as spent:
                whole = time_calls(fns[index], 1, sync)[0]
            peaks[impl, phase] = mem.peak()
            if phase == "forward":
                share[impl] = spent[0] / whole if cuda else attn[impl] / sum(times[impl, phase])
    rows = []
    for (impl, phase), ts in times.items():
        med, mult = statistics.median(ts), 1 if phase == "forward" else 3
        rows.append({"table": "model", "scene": kind, "impl": impl, "phase": phase, "voxels": g.shape[0],
                     "tokens": sum(tokens), "ms": med * 1e3, "best_ms": min(ts) * 1e3, "tok_per_s": sum(tokens) / med,
                     "tflops": mult * flops / med / 1e12, "peak_mb": peaks[impl, phase],
                     "attn_share": share[impl] if phase == "forward" else None,
                     "mfu": mult * flops / med / peak if peak and phase == "fwd+bwd" else None,
                     "speedup": min(times["reference tok", phase]) / min(ts) if impl != "reference tok" else None})
    return rows


def tokenize_rows(kind: str, scene: dict, device: str, preset: str, reps: int) -> list[dict]:
    """The tokenize + detokenize step alone, ours vs the reference's, forward and forward+backward."""
    torch.manual_seed(0)
    model = build_volt(preset, in_channels=SCENES[kind][2]).to(device)
    tok, detok, p = model.tokenizer, model.decoder.unembed, model.patch
    g, f, off = scene["grid_coord"], scene["feat"], scene["offset"]
    t = patchify(g, off, p).num_tokens
    z = torch.randn(t, model.out_channels, device=device, requires_grad=True)  # what the decoder's pre-MLP gives
    grads = (torch.randn(t, tok.proj.out_features, device=device),
             torch.randn(g.shape[0], model.out_channels, device=device))

    def ours():
        layout = patchify(g, off, p)
        return (tok(f, layout.voxel2token, layout.slot, layout.num_tokens),
                detok(z, layout.voxel2token, layout.slot))

    def reference():
        x, _, inverse, slot = reference_tokenize(g, off, f, tok.proj, p)
        return x, reference_detokenize(z, inverse, slot, detok)

    def ours_grouped():
        with detokenizer_mode(model, "grouped"):
            return ours()

    def forward(fn):
        def call():
            with torch.inference_mode(), autocast(device):
                fn()
        return call

    def train(fn):
        def call():
            with autocast(device):
                outs = fn()
            torch.autograd.backward(outs, [gr.to(o.dtype) for gr, o in zip(grads, outs)])
            model.zero_grad(set_to_none=True)
            z.grad = None
        return call

    rows, sync = [], sync_fn(device)
    for phase, wrap in (("forward", forward), ("fwd+bwd", train)):
        fns = {"volt": wrap(ours), "reference tok": wrap(reference)}
        if torch.device(device).type == "cuda":  # which detokenizer path pays on this card
            fns["volt grouped detok"] = wrap(ours_grouped)
        for fn in fns.values():  # warm-up
            fn()
        times = {impl: [] for impl in fns}
        for r in range(reps):  # interleaved rounds, alternating the order: load changes hit both alike
            for impl, fn in list(fns.items())[:: 1 if r % 2 == 0 else -1]:
                times[impl] += time_calls(fn, 1, sync)
        for impl, ts in times.items():
            rows.append({"table": "tokenize", "scene": kind, "impl": impl, "phase": phase, "voxels": g.shape[0],
                         "tokens": t, "ms": statistics.median(ts) * 1e3, "best_ms": min(ts) * 1e3,
                         "speedup": min(times["reference tok"]) / min(ts) if impl != "reference tok" else None})
    return rows


def run(device: str = "cpu", quick: bool = False, scale: float | None = None, reps: int | None = None) -> list[dict]:
    """All rows of both tables (see the module docstring)."""
    cuda = torch.device(device).type == "cuda"
    preset = "volt-tiny" if quick else "volt-s"
    rows = []
    for kind, (size, _, _) in SCENES.items():
        factor = scale if scale is not None else QUICK_SCALE if quick else 1.0 if cuda else CPU_SCALE[kind]
        rows += measure_scene(kind, device, int(size * factor), preset, reps or (1 if quick else 5 if cuda else 2))
    for kind, (size, _, _) in SCENES.items():
        scene = make_scene(kind, int(size * (QUICK_SCALE if quick else 1.0)), device=device)
        rows += tokenize_rows(kind, scene, device, preset, reps or (10 if cuda else 3))
    return rows


COLUMNS = {
    "model": [("scene", "scene", "s"), ("impl", "impl", "s"), ("phase", "phase", "s"), ("voxels", "voxels", "d"),
              ("tokens", "tokens", "d"), ("ms", "ms", ".1f"), ("best_ms", "best", ".1f"),
              ("tok_per_s", "tokens/s", ".0f"), ("tflops", "TFLOP/s", ".3f"), ("mfu", "MFU", ".1%"),
              ("peak_mb", "peak MB", ".0f"), ("attn_share", "attn share", ".0%"), ("speedup", "speed-up", ".2f")],
    "tokenize": [("scene", "scene", "s"), ("impl", "impl", "s"), ("phase", "phase", "s"), ("voxels", "voxels", "d"),
                 ("tokens", "tokens", "d"), ("ms", "ms", ".2f"), ("best_ms", "best", ".2f"),
                 ("speedup", "speed-up", ".1f")],
}
TITLES = {"model": "Volt backbone, ours vs the reference toolkit's tokenizer/detokenizer on the same weights "
                   "(ms = median; speed-up = best reference / best ours)",
          "tokenize": "tokenize + detokenize step alone (speed-up = best reference / best ours; target >= 5x)"}


def print_rows(rows: list[dict], columns: dict = COLUMNS, titles: dict = TITLES) -> None:
    """One aligned table per row["table"]; missing values print as '-'."""
    for table, cols in columns.items():
        part = [r for r in rows if r.get("table") == table]
        if not part:
            continue
        cells = [[h for _, h, _ in cols]]
        cells += [[format(r[k], fmt) if r.get(k) is not None else "-" for k, _, fmt in cols] for r in part]
        widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
        print(titles.get(table, table))
        for c in cells:
            print("  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))).rstrip())
        print()


def describe(device: str) -> str:
    """One header line: device, torch, threads, patchify and attention backends, bf16 peak assumption."""
    dev = torch.device(device)
    q = torch.empty(1, 1, 64, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    line = (f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
            f"patchify={'volt ext' if _ext.use_ext('patchify', dev) else 'torch reference'} "
            f"attention={attention_module.resolve_backend('auto', q)}")
    if dev.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = bf16_peak(name)
        assumed = "unknown (no MFU)" if peak is None else f"{peak / 1e12:.0f} TFLOP/s dense (assumed, BF16_PEAK)"
        line += f" gpu={name!r} bf16 peak={assumed}"
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(ap)
    ap.add_argument("--quick", action="store_true", help="Volt-tiny on small scenes (smoke test)")
    ap.add_argument("--scale", type=float, help="scene size factor of the model table (default: CPU_SCALE, CUDA 1)")
    ap.add_argument("--reps", type=int, help="timed repetitions (model / tokenize: CPU 2 / 3, CUDA 5 / 10)")
    args = parse_device_args(ap, argv)
    print(describe(args.device))
    start = time.perf_counter()
    print_rows(run(args.device, args.quick, args.scale, args.reps))
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
