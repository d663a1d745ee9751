"""Label users' own scans with a trained checkpoint: files -> per-point classes, confidences, colored PLY.

  python tools/predict.py --ckpt outputs/run/best.pt scans/room.ply --out predictions
  python tools/predict.py --ckpt best.pt "scans/*.laz" scans/more/ --tta all --format npy,txt,ply --device cuda

Inputs are files of any format `volt.data.readers.read_cloud` reads (PLY, NPY/NPZ, TXT/CSV/XYZ, LAS/LAZ,
nuScenes .pcd.bin, SemanticKITTI .bin), processed scene folders, globs, or folders (their supported files
and scene sub-folders, not recursive). For each input, --out gets `<stem>_labels.npy` / `<stem>_confidence.npy`
(npy), `<stem>.txt` (txt), `<stem>.ply` colored by class (ply) and always `<stem>.json` (class counts and
settings); see volt/inference/outputs.py. A file that fails is reported with its name and the others go on.
Exit code: 0 all done, 1 some inputs failed, 2 the checkpoint or the options are unusable.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.data.io import is_scene_dir
from volt.data.readers import SUPPORTED_FORMATS
from volt.errors import DataError, MissingExtraError
from volt.inference import FORMATS, Predictor


def expand_inputs(items: list[str]) -> tuple[list[Path], list[str]]:
    """(input paths in order without repeats, items that matched nothing)."""
    found: list[Path] = []
    unmatched: list[str] = []
    for item in items:
        paths = [Path(p) for p in sorted(glob.glob(item))] if glob.has_magic(item) else [Path(item)]
        if not paths:
            unmatched.append(item)
        for path in paths:
            if path.is_dir() and not is_scene_dir(path):
                inside = [p for p in sorted(path.iterdir())
                          if is_scene_dir(p) or (p.is_file() and p.name.lower().endswith(SUPPORTED_FORMATS))]
                if not inside:
                    unmatched.append(f"{path} (no supported files inside)")
                found += inside
            else:
                found.append(path)  # a missing file is reported by the reader, with its name
    return list(dict.fromkeys(found)), unmatched


def _stem(path: Path, used: set[str]) -> str:
    name = path.name
    low = name.lower()
    suffix = next((s for s in SUPPORTED_FORMATS if low.endswith(s)), "")
    stem = name[: len(name) - len(suffix)] if suffix and not path.is_dir() else name
    unique, k = stem, 2
    while unique in used:  # the same file name in two folders must not overwrite the other's outputs
        unique, k = f"{stem}_{k}", k + 1
    used.add(unique)
    return unique


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="point-cloud files, processed scene folders, folders or globs")
    ap.add_argument("--ckpt", type=Path, required=True, help="checkpoint (our format), e.g. outputs/run/best.pt")
    ap.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    ap.add_argument("--tta", default="1", help="test-time views: 1 (none, default), N, or 'all' (precise test)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    ap.add_argument("--format", default="npy,ply", help=f"comma-separated outputs from {','.join(FORMATS)}")
    ap.add_argument("--dataset", default="0", help="which head of a joint checkpoint: condition name or index")
    ap.add_argument("--las-labels", action="store_true",
                    help="read LAS classification as labels (compared with the predictions in <stem>.json)")
    ap.add_argument("--estimate-normals", action="store_true", help="PCA normals for clouds without them")
    ap.add_argument("--max-points", type=int, help="cut larger clouds into xy tiles of about this many points")
    ap.add_argument("--tile-overlap", type=float, default=2.0, help="context around each tile, metres (default 2)")
    ap.add_argument("--fragment-batch", type=int, default=1, help="fragments per forward pass (default 1)")
    ap.add_argument("--amp", default="auto", choices=("auto", "off", "float16", "bfloat16"),
                    help="auto: the checkpoint's AMP setting on CUDA, off on CPU")
    ap.add_argument("--probs", action="store_true", help="also save the (N, C) mean class probabilities (npy)")
    ap.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    tta = True if args.tta == "all" else int(args.tta) if args.tta.isdigit() else None
    if bad or tta is None or not formats:
        print(f"error: --format takes {','.join(FORMATS)} (got {args.format!r}); --tta takes a number or 'all' "
              f"(got {args.tta!r})", file=sys.stderr)
        return 2
    inputs, unmatched = expand_inputs(args.inputs)
    for item in unmatched:
        print(f"error: {item}: matched no input", file=sys.stderr)
    try:
        predictor = Predictor(args.ckpt, args.device, tta, dataset=args.dataset, fragment_batch=args.fragment_batch,
                              max_points=args.max_points, tile_overlap=args.tile_overlap, amp=args.amp,
                              use_ema=not args.no_ema, estimate_normals=args.estimate_normals, keep_probs=args.probs,
                              progress=not args.no_progress)
    except (DataError, ValueError, MissingExtraError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ds = predictor.dataset
    print(f"{args.ckpt} ({predictor.weights} weights): {ds.condition}, {ds.num_classes} classes, pipeline "
          f"{ds.pipeline}, {predictor.num_views} view(s), device {predictor.device}; {len(inputs)} input(s) -> {args.out}")
    failed, used = len(unmatched), set()
    for i, path in enumerate(inputs, 1):
        stem = _stem(path, used)
        try:
            pred = predictor.predict(path, las_labels=args.las_labels)
            predictor.save(pred, args.out, stem, formats)
        except (DataError, MissingExtraError, OSError, RuntimeError) as exc:  # RuntimeError: e.g. out of memory
            failed += 1
            text = str(exc) if isinstance(exc, DataError) else f"{path}: {type(exc).__name__}: {exc}"
            print(f"[{i}/{len(inputs)}] error: {text}", file=sys.stderr)
            continue
        m = pred.meta
        rate = pred.num_points / max(m["seconds"], 1e-9)
        agree = f", {100 * m['file_labels']['accuracy']:.1f}% agree with the file's labels" if "file_labels" in m else ""
        what = f"{m['masks']} instance masks" if "masks" in m else f"{m['fragments']} fragments"
        print(f"[{i}/{len(inputs)}] {path}: {pred.num_points} points, {what}, "
              f"{m['seconds']:.1f} s ({rate:,.0f} points/s){agree} -> {args.out / stem}.*")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
