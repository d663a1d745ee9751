"""Write the synthetic demo scans in the real raw formats (ScanNet v2 rooms, nuScenes v1.0-mini sweeps).

Example (from the repository root):
    python tools/make_demo_data.py --out outputs/demo/raw --seed 0
then preprocess them like downloaded data:
    python tools/prepare_scannet.py --raw outputs/demo/raw/scannet/scans \\
        --labels outputs/demo/raw/scannet/scannetv2-labels.combined.tsv \\
        --split-dir outputs/demo/raw/scannet --out outputs/demo/processed/scannet
    python tools/prepare_nuscenes.py --root outputs/demo/raw/nuscenes --version v1.0-mini \\
        --out outputs/demo/processed/nuscenes
The same seed always writes byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import volt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.data.synthetic import make_demo_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder (gets scannet/ and nuscenes/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--indoor-scenes", type=int, default=10, help="number of ScanNet-style rooms")
    ap.add_argument("--outdoor-scenes", type=int, default=10, help="number of nuScenes mini scenes (1-10)")
    ap.add_argument("--samples-per-scene", type=int, default=2, help="key-frame sweeps per outdoor scene")
    args = ap.parse_args(argv)
    if args.indoor_scenes < 1 or not 1 <= args.outdoor_scenes <= 10 or args.samples_per_scene < 1:
        ap.error("need --indoor-scenes >= 1, --outdoor-scenes in 1..10 and --samples-per-scene >= 1")

    t0 = time.time()
    data = make_demo_data(args.out, args.seed, args.indoor_scenes, args.outdoor_scenes, args.samples_per_scene)
    vertices = [s.num_vertices for s in data.indoor]
    points = [s.num_points for s in data.outdoor]
    print(f"ScanNet-style rooms in {data.scannet_root}: {len(vertices)} scenes, "
          f"{min(vertices):,}-{max(vertices):,} vertices each")
    print(f"nuScenes-style sweeps in {data.nuscenes_root}: {len(points)} sweeps, "
          f"{min(points):,}-{max(points):,} points each")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
