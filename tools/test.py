"""Precise test of a checkpoint (VOLT_SPEC.md §1.6 "test"): fragments x TTA views -> per-point labels, metrics.

Example (from the repository root):
    python tools/test.py --ckpt outputs/run/best.pt --split val --out outputs/run/test_val
    python tools/test.py --config configs/volt_s_scannet.yaml --ckpt best.pt --split test --submission

The config defaults to the one stored in the checkpoint; trailing `key=value` overrides apply on top
(e.g. data.datasets.0.root=/data/scannet). The EMA weights are used when the checkpoint has them (they are
what validation chose best.pt by); --no-ema takes the raw weights. Writes to --out: `{scene}_pred.npy`
per scene (reused on a rerun unless --no-cache), `metrics.json` (per-class rows + per-scene records) and,
with --submission, `submit/` (ScanNet: `<scene>.txt` with raw class ids; nuScenes: lidarseg .bin files and
submission.json). Prints the per-class table. Exit code 0 on success, 2 on unusable inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

try:
    import volt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from volt.config import Config, DistillCfg, apply_overrides, check_config, config_from_dict, load_config
from volt.data.dataset import SceneDataset
from volt.data.nuscenes import CLASS_NAMES_16
from volt.data.pipelines import build_pipeline, test_views
from volt.data.scannet_classes import CLASS_NAMES_20, CLASS_NAMES_200
from volt.engine import report, submission
from volt.engine.build import build_segmentor, class_names
from volt.engine.checkpoint import load_checkpoint, load_state_strict
from volt.engine.evaluate import precise_test
from volt.errors import DataError

AMP = {"off": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
KNOWN_NAMES = {("scannet", 20): CLASS_NAMES_20, ("scannet200", 200): CLASS_NAMES_200,
               ("scannet", 200): CLASS_NAMES_200, ("nuscenes", 16): CLASS_NAMES_16}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, required=True, help="checkpoint (our format)")
    ap.add_argument("--config", type=Path, help="config YAML (default: the config stored in the checkpoint)")
    ap.add_argument("--dataset", default="0", help="which configured dataset: condition name or index (default 0)")
    ap.add_argument("--split", help="split folder to test (default: the dataset's val_split)")
    ap.add_argument("--out", type=Path, help="output folder (default: <ckpt folder>/test_<split>)")
    ap.add_argument("--submission", action="store_true", help="also write benchmark submission files")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--amp", default="auto", choices=("auto", *AMP), help="auto: the config's AMP on CUDA, off on CPU")
    ap.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    ap.add_argument("--no-cache", action="store_true", help="recompute scenes that have a saved prediction")
    ap.add_argument("--fragment-batch", type=int, default=1, help="fragments per forward pass (default 1)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    try:
        ckpt = load_checkpoint(args.ckpt)
        cfg = _config(args, ckpt)
        datasets = cfg.data.datasets
        by_name = {d.condition: d for d in datasets}
        if args.dataset in by_name:
            ds = by_name[args.dataset]
        elif args.dataset.isdigit() and int(args.dataset) < len(datasets):
            ds = datasets[int(args.dataset)]
        else:
            raise DataError(None, f"--dataset {args.dataset!r} is neither an index nor one of {list(by_name)}")
        split = args.split or ds.val_split
        out = args.out or args.ckpt.parent / f"test_{split}"
        if args.device == "cuda" and not torch.cuda.is_available():
            raise DataError(None, "--device cuda was asked for but torch sees no CUDA device")
        device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
        amp = args.amp if args.amp != "auto" else (cfg.train.amp_dtype if cfg.train.amp and device.type == "cuda"
                                                    else "off")

        # No teacher at test time; a distilled checkpoint's distill heads are simply not used.
        model = build_segmentor(dataclasses.replace(cfg, distill=DistillCfg()), device)
        use_ema = "ema" in ckpt and not args.no_ema
        load_state_strict(model, ckpt["ema"] if use_ema else ckpt["model"], ignore_unexpected=("distill_heads.",),
                          source=args.ckpt)
        scenes = SceneDataset(ds.root, split)
        pipeline = build_pipeline(ds.pipeline, "test", label=ds.segment_field, condition=ds.condition,
                                  grid_size=ds.grid_size)
        on_scene = None
        if args.submission:
            on_scene = _submission_writer(ds.pipeline, ds.num_classes, split, out / "submit")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # Names from the processed data's meta.json, else the benchmark's own table.
    names = class_names(ds) or KNOWN_NAMES.get((ds.pipeline, ds.num_classes))
    print(f"testing {args.ckpt} ({'EMA' if use_ema else 'raw'} weights) on {ds.condition} {split}: "
          f"{len(scenes)} scenes, device {device}, amp {amp}, output {out}")
    result = precise_test(
        model, scenes, lambda scene: test_views(scene, pipeline), ds.num_classes, device=device, amp_dtype=AMP[amp],
        condition=ds.condition, class_names=names, out_dir=out, reuse_cached=not args.no_cache,
        fragment_batch=args.fragment_batch, label_key=ds.segment_field, on_scene=on_scene, log=print,
    )
    settings = {"checkpoint": str(args.ckpt), "weights": "ema" if use_ema else "model", "dataset": ds.condition,
                "split": split, "amp": amp, "device": str(device)}
    path = report.save_json(out / "metrics.json", result.metrics, **settings, scenes=result.scenes)
    if result.metrics is not None:
        print(report.format_table(result.metrics, title=f"{ds.condition} {split} (precise test)"))
    else:
        print("no ground-truth labels in this split: predictions only")
    print(f"wrote {path}" + (f" and {out / 'submit'}" if args.submission else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
