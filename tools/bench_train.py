"""Data-pipeline throughput: scenes per second of one DataLoader worker for the named training chains.

`run_pipeline_bench(data=None, scenes=8, repeats=3, seed=0) -> list[dict]`: one row per chain (ScanNet
train, the headline; ScanNet val; nuScenes train) with load and transform times per scene, scenes/s,
and points in/out. Timed in one process with torch limited to one thread, as inside a DataLoader worker.
`data` is a processed root holding scannet/ and nuscenes/ (tools/demo.py writes one under
<out>/processed); by default the demo data are generated into a temporary folder first (about 4 s).

    python tools/bench_train.py [--data outputs/demo/processed] [--scenes 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from volt.data import SceneDataset
from volt.data.pipelines import build_pipeline

CHAINS = (("scannet", "train"), ("scannet", "val"), ("nuscenes", "train"))


def _bench_chain(root: Path, dataset: str, split: str, scenes: int, repeats: int, seed: int) -> dict:
    data = SceneDataset(root / dataset, "train")  # the demo's train scenes feed every chain
    pipeline = build_pipeline(dataset, split, seed=seed)
    count = min(scenes, len(data))
    load_s = transform_s = 0.0
    points_in = points_out = 0
    for _ in range(repeats):
        for i in range(count):
            t0 = time.perf_counter()
            item = data[i]
            t1 = time.perf_counter()
            out = pipeline(item)
            t2 = time.perf_counter()
            load_s, transform_s = load_s + t1 - t0, transform_s + t2 - t1
            points_in, points_out = points_in + len(item["coord"]), points_out + len(out["coord"])
    n = count * repeats
    return {"chain": f"{dataset}_{split}", "scenes": n, "load_ms": 1e3 * load_s / n,
            "transform_ms": 1e3 * transform_s / n, "scenes_per_s": n / (load_s + transform_s),
            "points_in": points_in // n, "points_out": points_out // n}


def run_pipeline_bench(data: str | Path | None = None, scenes: int = 8, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Scenes/s per worker for each chain in CHAINS (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # DataLoader workers run with one torch thread
    try:
        if data is not None:
            return [_bench_chain(Path(data), d, s, scenes, repeats, seed) for d, s in CHAINS]
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", tmp], check=True,
                           capture_output=True)
            return [_bench_chain(Path(tmp) / "processed", d, s, scenes, repeats, seed) for d, s in CHAINS]
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="processed root with scannet/ and nuscenes/")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rows = run_pipeline_bench(args.data, args.scenes, args.repeats)
    print(f"{'chain':16s} {'scenes':>6s} {'load ms':>8s} {'transform ms':>12s} {'scenes/s':>9s} "
          f"{'points in':>10s} {'points out':>10s}")
    for r in rows:
        print(f"{r['chain']:16s} {r['scenes']:6d} {r['load_ms']:8.1f} {r['transform_ms']:12.1f} "
              f"{r['scenes_per_s']:9.1f} {r['points_in']:10,d} {r['points_out']:10,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
