"""The main job on the embedded demo data: synthetic scans -> preprocessing -> teacher -> distilled Volt -> test.

    python tools/demo.py --out outputs/demo            # what `make demo` runs (about 5 minutes on 2 CPU cores)
    python tools/demo.py --out /tmp/demo --quick       # every stage with a few steps (tests, a smoke check)

Stages (a finished stage is skipped on a rerun; --overwrite redoes everything):
1. data: `make_demo_data` writes indoor rooms in ScanNet's raw format and LiDAR sweeps in nuScenes' raw
   format under <out>/raw; the real preprocessors (`prepare_scannet`, `prepare_nuscenes`) write
   <out>/processed/{scannet,nuscenes}/<split>/<scene>/.
2. teacher: `fit(configs/demo_teacher.yaml)`, a small SpUNet on the indoor train rooms -> <out>/runs/teacher.
3. volt: `fit(configs/demo_volt.yaml)`, Volt-tiny distilled from the teacher's best.pt -> <out>/runs/volt.
4. test: `precise_test` (test-mode fragments x TTA views, VOLT_SPEC.md §1.6) of Volt's best.pt on the held-out
   val rooms: per-class table, <out>/runs/volt/test_val/metrics.json (+ per-scene predictions, reused on a rerun),
   pictures and a 3D viewer page of the first val room, IoU/confusion/curve charts -> <out>/runs/volt/pictures/.
5. instance: tools/demo_instance.py fine-tunes Volt's best.pt with an SPFormer-style head on the train rooms
   (one instance per object) and scores held-out AP/AP50/AP25 -> <out>/runs/instance.
6. outdoor: `fit(configs/demo_nuscenes_volt.yaml)` (Volt-tiny on the nuScenes-format sweeps, no teacher) and
   its precise test -> <out>/runs/nuscenes_volt.
A summary of the scores and the folders goes to <out>/summary.json. Comparing with Volt trained without the
teacher: `python tools/train.py configs/demo_volt_nodistill.yaml` then `python tools/test.py --ckpt ...`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: the tests load this file by path

from _demo_common import precise_tests, train_or_reuse  # tools/_demo_common.py
from demo_instance import instance_stage  # tools/demo_instance.py

from volt.config import Config, load_config
from volt.data.dataset import SceneDataset
from volt.data.nuscenes import prepare_nuscenes
from volt.data.scannet import prepare_scannet
from volt.data.synthetic import make_demo_data
from volt.engine.report import format_table, save_json
from volt.engine.threads import set_cpu_threads
from volt.viz.pictures import demo_pictures

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# --quick: 2 short epochs (one pass over the data each) and one TTA view; every stage still runs.
QUICK = ["train.epochs=2", "train.eval_epochs=2"]


def prepare_data(raw: Path, processed: Path, seed: int, overwrite: bool) -> int:
    if overwrite or not (raw / "scannet").is_dir() or not (raw / "nuscenes").is_dir():
        print(f"  generating synthetic raw scans in {raw} (seed {seed})")
        make_demo_data(raw, seed=seed)
    sn = raw / "scannet"
    splits = {s: sn / f"scannetv2_{s}.txt" for s in ("train", "val")}
    summaries = [prepare_scannet(sn / "scans", processed / "scannet", sn / "scannetv2-labels.combined.tsv",
                                 splits=splits, overwrite=overwrite, progress=False),
                 prepare_nuscenes(raw / "nuscenes", processed / "nuscenes", "v1.0-mini", overwrite=overwrite,
                                  progress=False)]
    for name, summary in zip(("scannet", "nuscenes"), summaries):
        print(f"  {name}: ", end="")
        summary.report()
        for split in ("train", "val"):
            print(f"    {split}: {len(SceneDataset(processed / name, split, fields=['coord']))} scenes")
    return max(s.exit_code for s in summaries)


def train(name: str, overrides: list[str], overwrite: bool) -> tuple[Config, Path, float, bool]:
    """Train configs/<name>.yaml unless the same run already finished: (config, run folder, best val mIoU,
    whether it trained now). A run folder left by other settings (e.g. --quick) is started afresh, an
    interrupted run with the same settings is resumed (tools/_demo_common.train_or_reuse)."""
    cfg = load_config(CONFIGS / f"{name}.yaml", overrides)
    run_dir = Path(cfg.train.out_dir)
    best, _, now = train_or_reuse(cfg, overwrite, "mIoU")
    if now:  # predictions cached by an earlier test are stale
        shutil.rmtree(run_dir / f"test_{cfg.data.datasets[0].val_split}", ignore_errors=True)
    return cfg, run_dir, best, now


def run_test(cfg: Config, run_dir: Path, views: int | None) -> dict:
    """Precise test of run_dir/best.pt (EMA weights when present) on the first dataset's val split."""
    ds = cfg.data.datasets[0]
    ckpt_path = run_dir / "best.pt"
    out = run_dir / f"test_{ds.val_split}"
    [(result, num_views)] = precise_tests(cfg, ckpt_path, views, [ds], out_dir=lambda _: out,
                                          log=lambda line: print("  " + line))
    path = save_json(out / "metrics.json", result.metrics, checkpoint=str(ckpt_path), views=num_views,
                     scenes=result.scenes)
    print(format_table(result.metrics, title=f"{ds.condition} {ds.val_split}: precise test of {ckpt_path} "
                                             f"({num_views} TTA views)"))
    print(f"  metrics: {path}")
    first = result.scenes[0]["name"]
    pictures = demo_pictures(run_dir, Path(ds.root) / ds.val_split / first, out / f"{first}_pred.npy", path,
                             run_dir / "pictures")
    for picture in pictures:
        print(f"  picture: {picture}")
    m = result.metrics
    return {"mIoU": m.miou, "mIoU_present": m.miou_present, "allAcc": m.allacc, "metrics": str(path),
            "pictures": [str(p) for p in pictures]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--overwrite", action="store_true", help="regenerate, re-preprocess and retrain everything")
    ap.add_argument("--quick", action="store_true", help="a few training steps and one TTA view (smoke run)")
    ap.add_argument("--no-outdoor", action="store_true", help="skip the nuScenes-format training and test")
    ap.add_argument("--views", type=int, help="use the first N TTA views (default: all; 1 with --quick)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: OMP_NUM_THREADS, else cores minus loader workers)")
    args = ap.parse_args(argv)

    # The demo configs use one loader worker: torch gets the other cores (volt/engine/threads.py says why).
    set_cpu_threads(num_workers=1, requested=args.threads)
    out = args.out
    raw, processed, runs = out / "raw", out / "processed", out / "runs"
    views = args.views or (1 if args.quick else None)
    quick = QUICK if args.quick else []
    start, summary = time.time(), {}

    print(f"[1/6] data: synthetic raw scans -> real preprocessors -> {processed}")
    failed = prepare_data(raw, processed, args.seed, args.overwrite)

    print("[2/6] teacher: SpUNet on the indoor train rooms")
    indoor = [f"data.datasets.0.root={processed / 'scannet'}", *quick]
    _, teacher_dir, best, retrained = train("demo_teacher", [*indoor, f"train.out_dir={runs / 'teacher'}"],
                                            args.overwrite)
    summary["teacher"] = {"run": str(teacher_dir), "best_val_mIoU": best}

    print("[3/6] volt: Volt-tiny distilled from the teacher")
    volt_cfg, volt_dir, best, volt_retrained = train("demo_volt", [*indoor, f"train.out_dir={runs / 'volt'}",
                                                      f"distill.checkpoint={teacher_dir / 'best.pt'}"],
                                        args.overwrite or retrained)  # a new teacher means a new student
    summary["volt"] = {"run": str(volt_dir), "best_val_mIoU": best}

    print("[4/6] test: Volt on the held-out rooms (fragments x TTA views)")
    summary["volt"]["precise_test"] = run_test(volt_cfg, volt_dir, views)

    print("[5/6] instance: the distilled Volt fine-tuned as an instance segmenter (SPFormer-style head)")
    summary["instance"] = instance_stage(processed, runs, volt_dir / "best.pt", args.quick,
                                         args.overwrite or volt_retrained)

    if args.no_outdoor:
        print("[6/6] outdoor: skipped (--no-outdoor); its data is preprocessed in", processed / "nuscenes")
    else:
        print("[6/6] outdoor: Volt-tiny on the nuScenes-format sweeps, then its precise test")
        outdoor = [f"data.datasets.0.root={processed / 'nuscenes'}", f"train.out_dir={runs / 'nuscenes_volt'}",
                   *quick]
        cfg, run_dir, best, _ = train("demo_nuscenes_volt", outdoor, args.overwrite)
        summary["nuscenes_volt"] = {"run": str(run_dir), "best_val_mIoU": best,
                                    "precise_test": run_test(cfg, run_dir, views)}

    summary["seconds"] = round(time.time() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ndone in {summary['seconds']:.0f} s. Written under {out}:")
    print(f"  raw scans {raw}, processed scenes {processed}, summary {out / 'summary.json'}")
    for name, rec in summary.items():
        if isinstance(rec, dict) and "best_val_mIoU" in rec:  # scores in percent, as in the tables
            score = rec.get("precise_test")
            tested = (f"; precise test mIoU {100 * score['mIoU']:.1f} (present classes "
                      f"{100 * score['mIoU_present']:.1f}), allAcc {100 * score['allAcc']:.1f}" if score else "")
            print(f"  {name:13s} {rec['run']}: best val mIoU {100 * rec['best_val_mIoU']:.1f}{tested}")
    inst = summary["instance"]
    print(f"  {'instance':13s} {inst['run']}: held-out AP {100 * inst['AP']:.1f}, AP50 {100 * inst['AP50']:.1f}, "
          f"AP25 {100 * inst['AP25']:.1f}")
    for picture in summary["volt"]["precise_test"]["pictures"]:
        print(f"  picture: {picture}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
