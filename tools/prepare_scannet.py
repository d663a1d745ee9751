"""Preprocess raw ScanNet v2 scenes into processed scene folders (`<out>/<split>/<scene>/*.npy`).

Example (from the repository root):
    python tools/prepare_scannet.py --raw scans --test-raw scans_test \\
        --labels scannetv2-labels.combined.tsv --split-dir <dir with scannetv2_{train,val,test}.txt> \\
        --out data/scannet

Without --split-dir every scene folder under --raw goes to the `train` split. Finished scenes are skipped
unless --overwrite; a bad or missing scene is reported and the others are still written. The exit code is
0 when every scene was written or skipped, 1 when any failed, 2 when the inputs themselves are unusable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import volt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.data.scannet import prepare_scannet
from volt.errors import DataError

SPLITS = ("train", "val", "test")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, required=True, help="ScanNet scans/ folder (one sub-folder per scene)")
    ap.add_argument("--labels", type=Path, required=True, help="scannetv2-labels.combined.tsv")
    ap.add_argument("--out", type=Path, required=True, help="output root, e.g. data/scannet")
    ap.add_argument("--split-dir", type=Path, help="folder with scannetv2_{train,val,test}.txt")
    ap.add_argument("--test-raw", type=Path, help="ScanNet scans_test/ folder, for the test split's scenes")
    ap.add_argument("--overwrite", action="store_true", help="rewrite scenes that are already done")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    splits = None
    if args.split_dir is not None:
        files = {s: args.split_dir / f"scannetv2_{s}.txt" for s in SPLITS}
        splits = {s: f for s, f in files.items() if f.is_file()}
        if not splits:
            print(f"error: {args.split_dir} holds none of {[f.name for f in files.values()]}", file=sys.stderr)
            return 2
        print(f"splits: {', '.join(f'{s} ({f.name})' for s, f in splits.items())}")
    try:
        summary = prepare_scannet(args.raw, args.out, args.labels, splits=splits, test_root=args.test_raw,
                                  overwrite=args.overwrite, progress=not args.no_progress)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary.report(sys.stdout)  # the current stdout (report's default was bound at import)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
