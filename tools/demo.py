"""The main job on the embedded demo data: generate synthetic raw scans, preprocess them with the real tools.

Stages (each skipped when its output already exists, so a rerun is cheap):
1. `volt.data.synthetic.make_demo_data`: indoor rooms in ScanNet's raw format and LiDAR sweeps in
   nuScenes' raw format, under `<out>/raw/`.
2. The same preprocessors a user runs on real data (`prepare_scannet`, `prepare_nuscenes`) write
   processed scene folders under `<out>/processed/{scannet,nuscenes}/<split>/<scene>/`.
Training, evaluation and pictures join this script as their issues land.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.data.nuscenes import prepare_nuscenes  # noqa: E402
from volt.data.scannet import prepare_scannet  # noqa: E402
from volt.data.synthetic import make_demo_data  # noqa: E402
from volt.data.dataset import SceneDataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="regenerate and re-preprocess everything")
    args = ap.parse_args(argv)

    raw, processed = args.out / "raw", args.out / "processed"
    t0 = time.time()
    if args.overwrite or not (raw / "scannet").is_dir() or not (raw / "nuscenes").is_dir():
        print(f"[1/2] generating synthetic raw scans in {raw} (seed {args.seed})")
        make_demo_data(raw, seed=args.seed)
    else:
        print(f"[1/2] synthetic raw scans already in {raw}")

    print(f"[2/2] preprocessing with the real tools into {processed}")
    sn = raw / "scannet"
    splits = {s: sn / f"scannetv2_{s}.txt" for s in ("train", "val")}
    summary = prepare_scannet(sn / "scans", processed / "scannet", sn / "scannetv2-labels.combined.tsv",
                              splits=splits, overwrite=args.overwrite)
    summary.report()
    failed = summary.exit_code
    summary = prepare_nuscenes(raw / "nuscenes", processed / "nuscenes", "v1.0-mini", overwrite=args.overwrite)
    summary.report()
    failed |= summary.exit_code

    for ds in ("scannet", "nuscenes"):
        for split in ("train", "val"):
            data = SceneDataset(processed / ds, split, fields=["coord"])
            points = sum(len(data[i]["coord"]) for i in range(len(data)))
            print(f"  {ds:9s} {split:5s}: {len(data):3d} scenes, {points:,} points")
    print(f"demo data ready in {time.time() - t0:.1f} s.")
    print("Training, evaluation and pictures are not part of the demo yet: they arrive with the training issue.")
    return failed


if __name__ == "__main__":
    sys.exit(main())
