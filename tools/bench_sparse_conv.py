"""Benchmark of volt's sparse convolution: extension vs pure-PyTorch reference vs spconv (when installed).

Scene: 50,000 surface voxels at 2 cm (a floor, two walls, a sphere and a box, cut to exactly 50k voxels in key
order), 32 -> 32 channels, submanifold k3. Rows: kernel-map build, forward, forward+backward (feat and weight
grads) in milliseconds (median of repeats). spconv (CPU, ConvAlgo.Native, one thread) runs in child processes
because its CPU backward can fail or crash: it is tried as is, then with its CUDA-stream lookup patched (in the
child only). A missing or failing spconv is reported, never raised.

`run(device) -> list[dict]` is imported by tools/bench.py (ops section); `python tools/bench_sparse_conv.py
[--device cpu|cuda] [--threads N]` prints the table alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
TOOLS = os.path.join(ROOT, "tools")  # tools/bench.py loads this file by path, so tools/ may not be on sys.path
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from _bench_common import sync_fn, time_calls

NUM_VOXELS, CHANNELS, VOXEL = 50_000, 32, 0.02


def surface_scene(num_voxels: int = NUM_VOXELS, voxel: float = VOXEL, seed: int = 0) -> torch.Tensor:
    """Voxel coords (num_voxels, 4) int32 of a room-like surface scene (batch 0), sorted by key."""
    g = torch.Generator().manual_seed(seed)
    step = voxel / 2  # sample at half the voxel size so every surface voxel is hit

    def grid(a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
        u, v = torch.meshgrid(torch.arange(0, a, step), torch.arange(0, b, step), indexing="ij")
        return u.reshape(-1), v.reshape(-1)

    parts = []
    u, v = grid(4.0, 3.0)
    parts.append(torch.stack([u, v, torch.zeros_like(u)], 1))  # floor
    u, v = grid(4.0, 2.5)
    parts.append(torch.stack([u, torch.zeros_like(u), v], 1))  # wall along x
    u, v = grid(3.0, 2.5)
    parts.append(torch.stack([torch.zeros_like(u), u, v], 1))  # wall along y
    d = torch.randn(400_000, 3, generator=g)
    parts.append(d / d.norm(dim=1, keepdim=True) * 0.4 + torch.tensor([2.0, 1.5, 0.6]))  # sphere
    for axis in range(3):  # box 0.6 x 0.5 x 0.4 m resting on the floor
        size = torch.tensor([0.6, 0.5, 0.4])
        p = torch.rand(200_000, 3, generator=g) * size
        p[:, axis] = torch.randint(0, 2, (200_000,), generator=g).float() * size[axis]
        parts.append(p + torch.tensor([0.8, 1.8, 0.0]))
    vox = torch.unique(torch.floor(torch.cat(parts) / voxel).long() + 1, dim=0)  # +1 keeps coords >= 0
    if vox.shape[0] < num_voxels:
        raise ValueError(f"scene has only {vox.shape[0]} voxels, fewer than {num_voxels}")
    vox = vox[:num_voxels]  # sorted (x, y, z): the cut is one slab, not random holes
    return torch.cat([torch.zeros(num_voxels, 1, dtype=torch.long), vox], 1).to(torch.int32)


def row(base: dict, op: str, ms: float, note: str = "") -> dict:
    """One table row: the operation first (tools/bench.py prints columns in key order)."""
    return {"op": op, **base, "ms": ms, "note": note}


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    sync = sync_fn("cuda" if torch.cuda.is_available() else "cpu")
    return statistics.median(time_calls(fn, reps, sync)) * 1e3


def _inputs(device: str):
    coords = surface_scene().to(device)
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(coords.shape[0], CHANNELS, generator=g).to(device)
    weight = (torch.randn(CHANNELS, 3, 3, 3, CHANNELS, generator=g) / math.sqrt(27 * CHANNELS)).to(device)
    return coords, feat, weight


def _ours(device: str, backend: str, reps: int) -> list[dict]:
    from volt.ops.kernel_map import downsample_map, submanifold_map
    from volt.ops.sparse_conv import sparse_conv

    os.environ["VOLT_OPS"] = backend
    coords, feat, weight = _inputs(device)
    impl = {"ext": "volt ext", "torch": "volt reference"}[backend]
    kmap = submanifold_map(coords, 3)
    f = feat.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            sparse_conv(feat, weight, kmap)

    def fwd_bwd():
        sparse_conv(f, w, kmap).sum().backward()

    base = {"impl": impl, "device": device, "threads": torch.get_num_threads(), "voxels": coords.shape[0]}
    return [
        row(base, "kernel map subm k3", ms=_median_ms(lambda: submanifold_map(coords, 3), reps)),
        row(base, "kernel map down k2 s2", ms=_median_ms(lambda: downsample_map(coords, 2, 2), reps)),
        row(base, "sparse_conv subm k3 32->32 fwd", ms=_median_ms(fwd, reps)),
        row(base, "sparse_conv subm k3 32->32 fwd+bwd", ms=_median_ms(fwd_bwd, reps)),
    ]


def _spconv_worker(mode: str, reps: int) -> None:
    """Child process: time spconv on the same scene with one thread; print one JSON line.

    Modes: "fwd"; "bwd" (spconv's own backward); "bwd_patched": spconv 2.3.8's CPU backward asks
    torch.cuda for the current stream and fails without CUDA, so this child (only) answers 0 for it.
    """
    torch.set_num_threads(1)
    import spconv.pytorch as spconv  # lazily: optional and only on the child

    if mode == "bwd_patched":
        import spconv.pytorch.ops as spconv_ops

        spconv_ops.get_current_stream = lambda: 0
    os.environ["VOLT_OPS"] = "auto"
    from volt.ops.kernel_map import submanifold_map
    from volt.ops.sparse_conv import sparse_conv

    coords, feat, weight = _inputs("cpu")
    conv = spconv.SubMConv3d(CHANNELS, CHANNELS, 3, bias=False, indice_key="b", algo=spconv.ConvAlgo.Native)
    conv.weight.data.copy_(weight)
    shape = (coords[:, 1:].amax(0) + 2).tolist()

    def tensor(f):
        return spconv.SparseConvTensor(f, coords, shape, 1)

    out = {}
    if mode == "fwd":
        with torch.no_grad():
            out["map+fwd"] = _median_ms(lambda: conv(tensor(feat)), reps)
            y = conv(tensor(feat))
            x = y.replace_feature(feat)  # carries y.indice_dict: calls on x reuse the cached pairs
            out["fwd"] = _median_ms(lambda: conv(x), reps)
            out["maxdiff"] = float((y.features - sparse_conv(feat, weight, submanifold_map(coords, 3))).abs().max())
        print(json.dumps(out))
        return
    f = feat.clone().requires_grad_(True)
    with torch.no_grad():
        x = conv(tensor(feat)).replace_feature(f)  # cached pairs, as above

    def step():
        f.grad = conv.weight.grad = None
        conv(x).features.sum().backward()

    out["fwd+bwd"] = _median_ms(step, reps)
    f2, w2 = feat.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    sparse_conv(f2, w2, submanifold_map(coords, 3)).sum().backward()
    out["maxdiff"] = max(float((f.grad - f2.grad).abs().max()), float((conv.weight.grad - w2.grad).abs().max()))
    out["scale"] = float(w2.grad.abs().max())
    print(json.dumps(out))


def _spconv(reps: int) -> list[dict]:
    base = {"impl": "spconv 2.x Native", "device": "cpu", "threads": 1, "voxels": NUM_VOXELS}
    import importlib.util

    if importlib.util.find_spec("spconv") is None:
        return [row(base, "spconv", float("nan"), "not installed")]
    rows = []
    fwd_bwd = "sparse_conv subm k3 32->32 fwd+bwd"
    for mode in ("fwd", "bwd", "bwd_patched"):
        proc = subprocess.run(
            [sys.executable, __file__, "--spconv-worker", mode, "--reps", str(reps)],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
        op = "sparse_conv subm k3 32->32 fwd" if mode == "fwd" else fwd_bwd
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            why = f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else last
            rows.append(row(base, op, float("nan"), f"{mode} failed: {why[:120]}"))
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if mode == "fwd":
            rows.append(row(base, "kernel map subm k3 (+fwd)", res["map+fwd"], "first call: map + fwd"))
            rows.append(row(base, op, res["fwd"], f"max |spconv - volt| = {res['maxdiff']:.2e}"))
        else:
            note = f"max |grad diff| = {res['maxdiff']:.1e} of max |grad| {res['scale']:.0f}"
            rows.append(row(base, op, res["fwd+bwd"], ("stream lookup patched; " if mode != "bwd" else "") + note))
    return rows


def run(device: str, reps: int = 5) -> list[dict]:
    """All rows for one device: volt ext (if it has kernels), volt reference, spconv (CPU only)."""
    from volt.ops._ext import has_kernel

    saved = os.environ.get("VOLT_OPS")
    rows = []
    try:
        if has_kernel("sparse_conv_forward", device):
            rows += _ours(device, "ext", reps)
        rows += _ours(device, "torch", max(2, reps // 2))
    finally:
        os.environ.pop("VOLT_OPS", None) if saved is None else os.environ.__setitem__("VOLT_OPS", saved)
    if torch.device(device).type == "cpu":
        rows += _spconv(reps)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for volt (spconv always uses 1)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--spconv-worker", choices=("fwd", "bwd", "bwd_patched"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.spconv_worker:
        _spconv_worker(args.spconv_worker, args.reps)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.reps)
    print(
        f"# {NUM_VOXELS} surface voxels at {VOXEL} m, {CHANNELS}->{CHANNELS} channels; median of {args.reps} runs; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(f"{'op':38s} {'impl':20s} {'dev':5s} {'thr':>3s} {'ms':>10s}  note")
    for r in rows:
        print(f"{r['op']:38s} {r['impl']:20s} {r['device']:5s} {r['threads']:3d} {r['ms']:10.2f}  {r.get('note', '')}")


if __name__ == "__main__":
    main()
