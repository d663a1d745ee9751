"""Precise test of a checkpoint (VOLT_SPEC.md §1.6 "test"): fragments x TTA views -> per-point labels, metrics.

Example (from the repository root):
    python tools/test.py --ckpt outputs/run/best.pt --split val --out outputs/run/test_val
    python tools/test.py --config configs/volt_s_scannet.yaml --ckpt best.pt --split test --submission
    python tools/test.py --ckpt outputs/joint_indoor/best.pt --dataset all     # a joint run: every dataset

The config defaults to the one stored in the checkpoint; trailing `key=value` overrides apply on top
(e.g. data.datasets.0.root=/data/scannet). The EMA weights are used when the checkpoint has them (they are
what validation chose best.pt by); --no-ema takes the raw weights. Writes to --out: `{scene}_pred.npy`
per scene (reused on a rerun with as many --views unless --no-cache; `{scene}_pred.json` records the number),
`metrics.json` (per-class rows + per-scene records) and, with --submission, `submit/` (ScanNet: `<scene>.txt`
with raw class ids; nuScenes: lidarseg .bin files and submission.json). Prints the per-class table.
A joint checkpoint has one head per dataset: --dataset picks one (condition name or index) or `all`, each
tested with its own head, chain, grid and class names, into <out>/<condition>/, followed by a table with one
row per dataset (also in <out>/datasets.json, or without --out in <ckpt folder>/test_datasets_<split>.json).
An instance checkpoint (config task: instance) is scored with the ScanNet instance AP (AP, AP50, AP25, per
class) into <out>/metrics.json (+ submit/ with --submission).
Exit code 0 on success, 2 on unusable inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import volt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from volt.config import Config, DatasetCfg, apply_overrides, check_config, config_from_dict, load_config
from volt.data.dataset import SceneDataset
from volt.engine import report, submission
from volt.engine.build import build_test_segmentor, dataset_class_names, pick_dataset, test_views_for
from volt.engine.checkpoint import load_checkpoint
from volt.engine.dist import pick_device
from volt.engine.evaluate import precise_test
from volt.engine.trainer import AMP_DTYPES, resolve_amp
from volt.errors import DataError


def _config(args: argparse.Namespace, ckpt: dict) -> Config:
    if args.config is not None:
        return load_config(args.config, args.overrides)
    cfg = apply_overrides(config_from_dict(ckpt.get("config") or {}, args.ckpt), args.overrides)
    check_config(cfg, args.ckpt)
    return cfg


def _submission_writer(pipeline: str, num_classes: int, split: str, root: Path):
    if pipeline in ("scannet", "scannet200"):
        ids = submission.scannet_class_ids(num_classes)
        return lambda name, pred: submission.write_scannet_txt(root / f"{name}.txt", pred, ids)
    if pipeline == "nuscenes":
        submission.write_nuscenes_meta(root, split)
        return lambda name, pred: submission.write_nuscenes_bin(root, name, pred, split, num_classes)
    raise DataError(None, f"no submission format for pipeline {pipeline!r} (scannet, scannet200, nuscenes)")


def _datasets(cfg: Config, choice: str) -> list[DatasetCfg]:
    if choice == "all":
        return list(cfg.data.datasets)
    try:
        return [pick_dataset(cfg.data.datasets, choice)]
    except DataError as exc:
        raise DataError(None, f"--dataset: {exc.problem}, nor 'all'") from exc


def _test_dataset(args: argparse.Namespace, cfg: Config, ds: DatasetCfg, model, out: Path, split: str,
                  device: torch.device, amp_dtype: torch.dtype | None, use_ema: bool) -> dict | None:
    """Precise test of one dataset with its own head; its summary scores (None without labels)."""
    scenes = SceneDataset(ds.root, split)
    on_scene = _submission_writer(ds.pipeline, ds.num_classes, split, out / "submit") if args.submission else None
    names = dataset_class_names(ds)
    amp = "off" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")
    print(f"testing {args.ckpt} ({'EMA' if use_ema else 'raw'} weights) on {ds.condition} {split}: "
          f"{len(scenes)} scenes, device {device}, amp {amp}, output {out}")
    views, num_views = test_views_for(ds, cfg.model, args.views)
    result = precise_test(
        model, scenes, views, ds.num_classes, device=device, amp_dtype=amp_dtype, condition=ds.condition,
        class_names=names, out_dir=out, reuse_cached=not args.no_cache, num_views=num_views,
        fragment_batch=args.fragment_batch, label_key=ds.segment_field, on_scene=on_scene, log=print,
    )
    settings = {"checkpoint": str(args.ckpt), "weights": "ema" if use_ema else "model", "dataset": ds.condition,
                "split": split, "amp": amp, "device": str(device), "views": num_views}
    path = report.save_json(out / "metrics.json", result.metrics, **settings, scenes=result.scenes)
    if result.metrics is not None:
        print(report.format_table(result.metrics, title=f"{ds.condition} {split} (precise test)"))
    else:
        print("no ground-truth labels in this split: predictions only")
    print(f"wrote {path}" + (f" and {out / 'submit'}" if args.submission else ""))
    m = result.metrics
    return None if m is None else {**m.summary(), "classes": ds.num_classes, "split": split}


def dataset_table(rows: dict[str, dict | None]) -> str:
    """One row per dataset (percentages)."""
    lines = [f"{'dataset':<16} {'split':<8} {'classes':>7} {'mIoU':>7} {'mIoU present':>12} {'mAcc':>7} {'allAcc':>7}"]
    lines.append("-" * len(lines[0]))
    for name, r in rows.items():
        if r is None:
            lines.append(f"{name:<16} (no labels)")
            continue
        lines.append(f"{name:<16} {r['split']:<8} {r['classes']:>7} {100 * r['mIoU']:>7.2f} "
                     f"{100 * r['mIoU_present']:>12.2f} {100 * r['mAcc']:>7.2f} {100 * r['allAcc']:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, required=True, help="checkpoint (our format)")
    ap.add_argument("--config", type=Path, help="config YAML (default: the config stored in the checkpoint)")
    ap.add_argument("--dataset", default="0", help="which configured dataset: condition name, index or 'all' "
                                                   "(default 0)")
    ap.add_argument("--split", help="split folder to test (default: each dataset's val_split)")
    ap.add_argument("--out", type=Path, help="output folder (default: <ckpt folder>/test_<split>)")
    ap.add_argument("--submission", action="store_true", help="also write benchmark submission files")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--amp", default="auto", choices=("auto", "off", *AMP_DTYPES),
                    help="auto: the config's AMP on CUDA, off on CPU")
    ap.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    ap.add_argument("--no-cache", action="store_true", help="recompute scenes that have a saved prediction")
    ap.add_argument("--fragment-batch", type=int, default=1, help="fragments per forward pass (default 1)")
    ap.add_argument("--views", type=int, help="use the first N TTA views (default: all)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    try:
        ckpt = load_checkpoint(args.ckpt)
        cfg = _config(args, ckpt)
        if cfg.task == "instance":  # masks scored with the ScanNet instance AP at point level
            from volt.engine.instance_test import run_instance_test

            split = args.split or cfg.data.datasets[0].val_split
            result = run_instance_test(cfg, ckpt, args.out or args.ckpt.parent / f"test_{split}", split=split,
                                       device=args.device, submission=args.submission, use_ema=not args.no_ema,
                                       source=args.ckpt)
            print(f"AP {100 * result['AP']:.1f}  AP50 {100 * result['AP50']:.1f}  AP25 {100 * result['AP25']:.1f}; "
                  f"wrote {result['metrics']}")
            return 0
        chosen = _datasets(cfg, args.dataset)
        device = pick_device(args.device)
        amp_dtype = resolve_amp(args.amp, cfg, device)
        # No teacher at test time; a distilled checkpoint's distill heads are simply not used.
        model, weights = build_test_segmentor(cfg, ckpt, device, use_ema=not args.no_ema, source=args.ckpt)
        use_ema = weights == "ema"
        rows: dict[str, dict | None] = {}
        for ds in chosen:
            split = args.split or ds.val_split
            out = args.out or args.ckpt.parent / f"test_{split}"
            out = out / ds.condition if len(chosen) > 1 else out
            rows[ds.condition] = _test_dataset(args, cfg, ds, model, out, split, device, amp_dtype, use_ema)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(chosen) > 1:
        path = args.out / "datasets.json" if args.out else args.ckpt.parent / f"test_datasets_{args.split or 'val'}.json"
        path.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"\n{args.ckpt}: precise test per dataset (each with its own head)\n" + dataset_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
