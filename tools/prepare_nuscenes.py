"""Raw nuScenes lidarseg -> processed scene folders (`out/<split>/<lidar token>/*.npy`).

Whole dataset:  python tools/prepare_nuscenes.py --root /data/nuscenes --version v1.0-trainval --out data/nuscenes
One sweep:      python tools/prepare_nuscenes.py --pcd sweep.pcd.bin [--lidarseg x_lidarseg.bin] --out scene_dir
Exit status: 0 when every sample was written or already done, 1 when any failed (listed at the end),
2 when the dataset cannot be read at all (e.g. a missing table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import volt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.data.nuscenes import prepare_nuscenes, prepare_sweep
from volt.data.nuscenes_splits import VERSIONS
from volt.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", help="nuScenes root (holds samples/, lidarseg/ and <version>/)")
    source.add_argument("--pcd", help="a single .pcd.bin sweep; --out is then the scene folder to write")
    parser.add_argument("--version", choices=VERSIONS, help="table version (with --root)")
    parser.add_argument("--lidarseg", help="the sweep's _lidarseg.bin (with --pcd)")
    parser.add_argument("--out", required=True, help="output root (with --root) or scene folder (with --pcd)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite folders that are already finished")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.root is not None and args.version is None:
        parser.error("--root needs --version")
    if args.pcd is None and args.lidarseg is not None:
        parser.error("--lidarseg goes with --pcd")

    try:
        if args.pcd is not None:
            summary = prepare_sweep(args.pcd, args.out, args.lidarseg, overwrite=args.overwrite)
        else:
            summary = prepare_nuscenes(args.root, args.out, args.version, args.overwrite, not args.no_progress)
    except DataError as exc:  # the dataset as a whole is unusable (e.g. a table is missing)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary.report()
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
