"""Training-step throughput: the demo config's iterations/s on the CPU, and a Volt-S bf16 run on CUDA.

`run(device="cpu", quick=False) -> list[dict]` gives rows of the table "train":
- "demo_volt" (CPU): configs/demo_volt.yaml (Volt-tiny, 8 cm voxels, batch 2, distilled from a SpUNet
  teacher) built by volt.engine.build over demo rooms generated into a temporary folder
  (`make_indoor_scannet` + `prepare_scannet`, as tools/demo.py does). The teacher has the architecture of
  configs/demo_teacher.yaml and untrained weights, which cost the same per step as trained ones. A step is
  what volt.engine.trainer does: forward, backward, loss and accuracy read-out, optimizer + schedule + EMA.
  Row "preloaded batches" times steps on batches taken from the loader beforehand; row "with loader"
  iterates the DataLoader (its workers, augmentation, collate) as training does. Torch runs on
  cores - 1 threads beside the loader workers, as tools/demo.py sets it.
- "volt-s synthetic" (CUDA; on the CPU only with --quick, as Volt-tiny on small rooms): Segmentor(Volt-S),
  20 classes, AdamW (lr 1e-3, wd 0.05) in bf16 autocast on one fixed batch of 4 synthetic rooms of ~100k
  voxels (bench_model.make_scene), 20 timed steps after 3 warm-up steps: it/s, peak memory (weights,
  gradients and optimizer state included), MFU = 3 x bench_model.volt_flops (with the head) / time / the
  card's bf16 peak (bench_model.bf16_peak).

    python tools/bench_train_step.py [--device cuda] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

import bench_model as bm  # tools/bench_model.py: scenes, FLOP model, memory and table helpers
from _bench_common import add_device_args, parse_device_args, sync_fn, time_calls

from volt.engine.optim import build_optimizer
from volt.models import Segmentor, build_volt
from volt.ops.patchify import patchify

COLUMNS = {"train": [("run", "run", "s"), ("mode", "mode", "s"), ("threads", "threads", "d"),
                     ("voxels", "voxels/batch", ".0f"), ("steps", "steps", "d"), ("ms", "ms/step", ".1f"),
                     ("it_per_s", "it/s", ".2f"), ("peak_mb", "peak MB", ".0f"), ("tflops", "TFLOP/s", ".2f"),
                     ("mfu", "MFU", ".1%")]}
TITLES = {"train": "training steps (forward + backward + optimizer; ms = median per step unless noted)"}


def _demo_data(tmp: Path, scenes: int) -> Path:
    """Demo rooms in ScanNet's raw format -> the real preprocessor; returns the processed scannet root."""
    from volt.data.scannet import prepare_scannet  # reads PLY meshes (plyfile): CPU demo path only
    from volt.data.synthetic import make_indoor_scannet

    raw = tmp / "raw" / "scannet"
    make_indoor_scannet(raw, scenes, seed=0)
    splits = {s: raw / f"scannetv2_{s}.txt" for s in ("train", "val")}
    prepare_scannet(raw / "scans", tmp / "processed" / "scannet", raw / "scannetv2-labels.combined.tsv",
                    splits=splits, progress=False)
    return tmp / "processed" / "scannet"


def demo_rows(quick: bool = False) -> list[dict]:
    """The two demo_volt rows (CPU); see the module docstring."""
    from volt.config import load_config, to_dict
    from volt.engine.build import build_loaders, build_segmentor
    from volt.engine.checkpoint import save_checkpoint
    from volt.engine.dist import DistInfo
    from volt.engine.ema import EMA
    from volt.engine.optim import build_scheduler
    from volt.engine.trainer import AMP_DTYPES, apply_step, seed_everything, to_device, train_accuracy

    configs = TOOLS.parent / "configs"
    steps, warm = (3, 1) if quick else (20, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))  # one core for the loader workers (tools/demo.py)
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            root = _demo_data(tmp, 3 if quick else 10)
            teacher_cfg = load_config(configs / "demo_teacher.yaml", [f"data.datasets.0.root={root}"])
            save_checkpoint(tmp / "teacher.pt", build_segmentor(teacher_cfg), to_dict(teacher_cfg))
            overrides = [f"data.datasets.0.root={root}", f"train.out_dir={tmp / 'run'}",
                         f"distill.checkpoint={tmp / 'teacher.pt'}"]
            cfg = load_config(configs / "demo_volt.yaml", overrides)
            t, device = cfg.train, torch.device("cpu")
            seed_everything(t.seed)
            model = build_segmentor(cfg, device).train()
            loader, _ = build_loaders(cfg, DistInfo(0, 0, 1, device))
            optimizer = build_optimizer(model, t.lr, t.weight_decay, t.betas)
            scheduler = build_scheduler(optimizer, t.lr, 2 * (steps + warm) + 4, t.pct_start, t.div_factor,
                                        t.final_div_factor, t.base_momentum, t.max_momentum)
            amp = AMP_DTYPES[t.amp_dtype] if t.amp else None
            scaler = torch.amp.GradScaler("cpu", enabled=amp == torch.float16)
            ema = EMA(model, t.ema_decay) if t.ema else None

            def step(batch: dict) -> int:
                batch = to_device(batch, device)
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    out = model(batch)
                scaler.scale(out.loss).backward()
                float(out.loss.detach())  # the trainer logs these every step
                train_accuracy(out, batch["segment"])
                apply_step(optimizer, scaler, scheduler, ema, model, t.clip_grad)
                return batch["feat"].shape[0]

            def batches():  # the trainer's epochs: set_epoch, then iterate (workers restart every epoch)
                epoch = 0
                while True:
                    loader.set_epoch(epoch)
                    yield from loader
                    epoch += 1

            stream = batches()
            preloaded = [next(stream) for _ in range(min(steps, len(loader)))]
            for i in range(warm):
                step(preloaded[i % len(preloaded)])
            times, voxels = [], []
            for i in range(steps):
                start = time.perf_counter()
                voxels.append(step(preloaded[i % len(preloaded)]))
                times.append(time.perf_counter() - start)
            rows = [_row("demo_volt", "preloaded batches", steps, statistics.median(times), voxels)]
            stream.close()  # stops the half-read epoch's workers
            stream = batches()  # a fresh epoch: worker start-up is part of training's cost
            start, voxels = time.perf_counter(), []
            for _ in range(steps):
                voxels.append(step(next(stream)))
            rows.append(_row("demo_volt", "with loader (mean)", steps, (time.perf_counter() - start) / steps, voxels))
            stream.close()  # its workers would otherwise keep prefetching beside whatever runs next
            return rows
    finally:
        torch.set_num_threads(threads)


def _row(run_name: str, mode: str, steps: int, seconds: float, voxels: list[int], **extra) -> dict:
    return {"table": "train", "run": run_name, "mode": mode, "threads": torch.get_num_threads(),
            "voxels": sum(voxels) / len(voxels), "steps": steps, "ms": seconds * 1e3, "it_per_s": 1.0 / seconds,
            **extra}


def synthetic_rows(device: str, quick: bool = False) -> list[dict]:
    """Volt-S (Volt-tiny with quick) bf16 training on a fixed batch of synthetic rooms; see the module docstring."""
    preset, rooms, size, warm, steps = ("volt-tiny", 2, 3000, 1, 2) if quick else ("volt-s", 4, 100_000, 3, 20)
    scenes = [bm.make_scene("indoor", size, seed=i, device=device) for i in range(rooms)]
    counts = torch.tensor([s["feat"].shape[0] for s in scenes], device=device)
    batch = {k: torch.cat([s[k] for s in scenes]) for k in ("grid_coord", "feat", "segment")}
    batch["offset"] = torch.cumsum(counts, 0)
    torch.manual_seed(0)
    backbone = build_volt(preset, in_channels=6)
    model = Segmentor(backbone, {"ScanNet": 20}).to(device).train()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    sync, mem = sync_fn(device), bm.Memory(device)
    cuda = torch.device(device).type == "cuda"

    def step() -> None:
        with bm.autocast(device):
            out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    time_calls(step, warm, sync)
    mem.start()
    if cuda:
        mem.base = 0.0  # report the whole training footprint: weights, gradients, optimizer state, activations
    times = time_calls(step, steps, sync)
    layout = patchify(batch["grid_coord"], batch["offset"], backbone.patch)
    tokens = (layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]).tolist()
    flops = 3 * bm.volt_flops(backbone, tokens, batch["feat"].shape[0], num_classes=20)
    med = statistics.median(times)
    peak = bm.bf16_peak(torch.cuda.get_device_name()) if cuda else None
    return [_row(f"{preset} synthetic", f"{rooms} rooms, {'bf16' if cuda else 'fp32'}", steps, med,
                 [batch["feat"].shape[0]], peak_mb=mem.peak() if cuda else None, tflops=flops / med / 1e12,
                 mfu=flops / med / peak if peak else None)]


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Demo rows on the CPU, the synthetic Volt-S row on CUDA (on the CPU only with quick); see the docstring."""
    cuda = torch.device(device).type == "cuda"
    rows = [] if cuda else demo_rows(quick)
    if cuda or quick:
        rows += synthetic_rows(device, quick)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(ap, threads_help="torch CPU threads (1 on a shared machine: see bench_model)")
    ap.add_argument("--quick", action="store_true", help="a few steps on small data (smoke test)")
    args = parse_device_args(ap, argv)
    print(bm.describe(args.device))
    start = time.perf_counter()
    bm.print_rows(run(args.device, args.quick), COLUMNS, TITLES)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
