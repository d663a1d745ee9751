"""Raw SemanticKITTI -> processed scene folders (`out/<split>/<seq>_<frame>/*.npy`).

Usage: python tools/prepare_semantic_kitti.py --root /data/semantic_kitti --out data/semantic_kitti
`--root` holds sequences/NN/{velodyne,labels}/; the learning map is --yaml, else root/semantic-kitti.yaml,
else the built-in standard map. Exit status: 0 when every scan was written or already done, 1 when any
failed (listed at the end), 2 when the dataset cannot be read at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import volt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.data.semantic_kitti import prepare_semantic_kitti
from volt.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="SemanticKITTI root (holds sequences/)")
    parser.add_argument("--out", required=True, help="output root")
    parser.add_argument("--yaml", help="semantic-kitti.yaml with the learning map")
    parser.add_argument("--overwrite", action="store_true", help="rewrite folders that are already finished")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = prepare_semantic_kitti(args.root, args.out, args.overwrite, not args.no_progress, args.yaml)
    except DataError as exc:  # the dataset as a whole is unusable (no sequences/, bad yaml)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary.report()
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
