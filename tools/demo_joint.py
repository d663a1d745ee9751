"""Joint training on the demo data: one Volt-tiny on the indoor rooms AND the outdoor sweeps, against the same
model trained on each dataset alone for the same number of steps.

    python tools/demo_joint.py --out outputs/demo          # what `make demo-joint` runs (~4 min on 2 CPU cores)
    python tools/demo_joint.py --out /tmp/demo --quick     # a few steps of every stage (smoke run)

Stages (a finished run is reused on a rerun with the same settings, an interrupted one is resumed;
--overwrite redoes everything):
1. data: tools/demo.py's `prepare_data` (synthetic ScanNet-format rooms and nuScenes-format sweeps, run through
   the real preprocessors) -> <out>/processed/{scannet,nuscenes}.
2. joint: `fit(configs/demo_joint.yaml)`: both datasets, each with its own chain, grid (10 cm / 20 cm), label
   space and head, ratio sampling (mixed batches) -> <out>/runs/joint; validation reports one row per dataset.
3. single: the same config restricted to one dataset, with data.epoch_samples set so that every run takes the
   joint run's number of optimizer steps -> <out>/runs/single_<condition>.
4. scores: every run's final validation (after its last step, EMA weights = last.pt; best.pt would be chosen
   on this same split) on each dataset's held-out val split, with that dataset's head: voxel predictions
   mapped back to every original point. With --views N, also the precise test (test-mode fragments x the
   first N TTA views) of last.pt. Prints the per-dataset table and writes <out>/joint_summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _demo_common import precise_tests, train_or_reuse  # tools/_demo_common.py
from demo import prepare_data  # tools/demo.py

from volt.config import Config, load_config
from volt.data.samplers import joint_counts
from volt.engine.build import scene_dataset
from volt.engine.threads import set_cpu_threads
from volt.viz.charts import read_run_log

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_joint.yaml"
QUICK = ["train.epochs=2", "train.eval_epochs=2", "data.epoch_samples=2"]


def single_config(cfg: Config, k: int, out_dir: Path) -> Config:
    """`cfg` on dataset k alone, with as many samples per data pass as the joint run (so as many steps)."""
    d = cfg.data
    main = d.epoch_samples or len(scene_dataset(d.datasets[0], d.datasets[0].train_split))
    total = sum(joint_counts(main, [ds.ratio for ds in d.datasets]))
    data = dataclasses.replace(d, datasets=[d.datasets[k]], epoch_samples=total)
    return dataclasses.replace(cfg, data=data, train=dataclasses.replace(cfg.train, out_dir=str(out_dir)))


def final_validation(cfg: Config) -> dict[str, dict]:
    """{condition: scores} of the run's last validation record (metrics.jsonl; joint keys are prefixed)."""
    record = read_run_log(cfg.train.out_dir)["val"][-1]
    joint = len(cfg.data.datasets) > 1
    return {ds.condition: {k: record[f"{ds.condition}/{k}" if joint else k] for k in ("mIoU", "mIoU_present", "allAcc")}
            for ds in cfg.data.datasets}


def test_run(cfg: Config, views: int) -> dict[str, dict]:
    """Precise test of run/last.pt (EMA weights) on every dataset of the run: {condition: scores}."""
    tested = precise_tests(cfg, Path(cfg.train.out_dir) / "last.pt", views, cfg.data.datasets)
    scores = {}
    for ds, (result, _) in zip(cfg.data.datasets, tested):
        m = result.metrics
        scores[ds.condition] = {"mIoU": m.miou, "mIoU_present": m.miou_present, "allAcc": m.allacc,
                                "scenes": len(result.scenes)}
    return scores


def table(cfg: Config, joint: dict, single: dict, steps: int, how: str) -> str:
    lines = [f"held-out val split, {how}, last.pt EMA weights, {steps} steps per run",
             (f"{'dataset':<10} {'classes':>7} {'grid':>5} | {'mIoU joint':>10} {'single':>7} | "
              f"{'mIoU present joint':>18} {'single':>7} | {'allAcc joint':>12} {'single':>7}")]
    lines.append("-" * len(lines[-1]))
    for ds in cfg.data.datasets:
        j, s = joint[ds.condition], single[ds.condition]
        lines.append(f"{ds.condition:<10} {ds.num_classes:>7} {ds.grid_size:>5.2f} | {100 * j['mIoU']:>10.1f} "
                     f"{100 * s['mIoU']:>7.1f} | {100 * j['mIoU_present']:>18.1f} {100 * s['mIoU_present']:>7.1f} | "
                     f"{100 * j['allAcc']:>12.1f} {100 * s['allAcc']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--overwrite", action="store_true", help="regenerate the data and retrain every run")
    ap.add_argument("--quick", action="store_true", help="a few training steps (smoke run)")
    ap.add_argument("--views", type=int, default=0, help="also run the precise test with N TTA views (default: off)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: OMP_NUM_THREADS, else cores minus loader workers)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value for every run (e.g. train.epochs=32)")
    args = ap.parse_args(argv)

    # The demo configs use one loader worker: torch gets the other cores (volt/engine/threads.py says why).
    set_cpu_threads(num_workers=1, requested=args.threads)
    start, out = time.time(), args.out
    processed, runs = out / "processed", out / "runs"
    print(f"[1/4] data: synthetic raw scans -> real preprocessors -> {processed}")
    failed = prepare_data(out / "raw", processed, args.seed, args.overwrite)

    roots = [f"data.datasets.0.root={processed / 'scannet'}", f"data.datasets.1.root={processed / 'nuscenes'}"]
    cfg = load_config(CONFIG, [*roots, f"train.out_dir={runs / 'joint'}", *(QUICK if args.quick else []),
                               *args.overrides])
    print("[2/4] joint: one Volt-tiny on " + " + ".join(f"{d.condition} ({d.grid_size:g} m grid)"
                                                        for d in cfg.data.datasets))
    steps = train_or_reuse(cfg, args.overwrite, None).steps
    singles = [single_config(cfg, k, runs / f"single_{ds.condition}") for k, ds in enumerate(cfg.data.datasets)]
    for single in singles:
        print(f"[3/4] single: the same model on {single.data.datasets[0].condition} alone")
        single_steps = train_or_reuse(single, args.overwrite, None).steps
        if single_steps != steps:
            raise RuntimeError(f"unequal steps: joint {steps}, single {single_steps}")

    print("[4/4] scores: every run on each dataset's held-out val split")
    tables, summary = [], {"steps": steps, "joint": {"run": cfg.train.out_dir}, "single": {}}
    kinds = [("validation", "final validation (voxel predictions -> every point)", final_validation)]
    if args.views:
        kinds.append(("precise_test", f"precise test ({args.views} TTA view(s))",
                      lambda c: test_run(c, args.views)))
    for key, how, score in kinds:
        joint_scores = score(cfg)
        single_scores = {s.data.datasets[0].condition: score(s)[s.data.datasets[0].condition] for s in singles}
        summary["joint"][key] = joint_scores
        for s in singles:
            c = s.data.datasets[0].condition
            summary["single"].setdefault(c, {"run": s.train.out_dir})[key] = single_scores[c]
        tables.append(table(cfg, joint_scores, single_scores, steps, how))
    summary["seconds"] = round(time.time() - start, 1)
    (out / "joint_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + "\n\n".join(tables))
    print(f"\ndone in {summary['seconds']:.0f} s; summary {out / 'joint_summary.json'}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
