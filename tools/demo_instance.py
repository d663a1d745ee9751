"""The demo's instance-segmentation stage: the demo's semantic Volt fine-tuned as an instance segmenter.

    python tools/demo_instance.py --out outputs/demo          # after tools/demo.py (needs its data and Volt)
    python tools/demo_instance.py --out /tmp/demo --quick     # a few steps (smoke run)

`instance_stage(processed, runs, semantic_ckpt, quick, overwrite)` trains configs/demo_instance.yaml
(volt.engine.instance_train: the backbone of `semantic_ckpt` loaded strictly, an SPFormer-style head, one
instance per object of the synthetic rooms; wall and floor have none) on <processed>/scannet train rooms into
<runs>/instance, then tests best.pt on the held-out val rooms at point level with the ScanNet instance
evaluator (volt.engine.instance_test.run_instance_test) and returns {"run", "AP", "AP50", "AP25",
"best_val_AP50", "metrics", "seconds"} (fractions). A finished run with the same settings is reused unless
`overwrite`; an interrupted one is resumed (tools/_demo_common.train_or_reuse).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: the tests load this file by path

from _demo_common import train_or_reuse  # tools/_demo_common.py

from volt.config import load_config
from volt.engine.instance_test import run_instance_test
from volt.engine.threads import set_cpu_threads

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = ["train.epochs=2", "train.eval_epochs=1"]  # two passes over the 8 rooms: every step of the stage runs


def instance_stage(processed: Path, runs: Path, semantic_ckpt: Path, quick: bool, overwrite: bool) -> dict:
    """Fine-tune and test (see the module docstring)."""
    start = time.time()
    overrides = [f"data.datasets.0.root={Path(processed) / 'scannet'}", f"train.out_dir={Path(runs) / 'instance'}",
                 f"instance.init_checkpoint={semantic_ckpt}", *(QUICK if quick else [])]
    cfg = load_config(CONFIGS / "demo_instance.yaml", overrides)
    run_dir = Path(cfg.train.out_dir)
    best_val = train_or_reuse(cfg, overwrite, "AP50").best
    best = run_dir / "best.pt"
    tested = run_instance_test(cfg, best if best.is_file() else run_dir / "last.pt", run_dir / "test_val",
                               log=lambda line: print("  " + line.replace("\n", "\n  ")))
    return {"run": str(run_dir), "AP": tested["AP"], "AP50": tested["AP50"], "AP25": tested["AP25"],
            "best_val_AP50": best_val, "metrics": tested["metrics"], "seconds": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"), help="the demo folder (tools/demo.py --out)")
    ap.add_argument("--semantic", type=Path, help="semantic checkpoint (default: <out>/runs/volt/best.pt)")
    ap.add_argument("--quick", action="store_true", help="a few training steps (smoke run)")
    ap.add_argument("--overwrite", action="store_true", help="retrain even if a finished run exists")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: OMP_NUM_THREADS, else cores minus loader workers)")
    args = ap.parse_args(argv)
    # The demo configs use one loader worker: torch gets the other cores (volt/engine/threads.py says why).
    set_cpu_threads(num_workers=1, requested=args.threads)
    semantic = args.semantic or args.out / "runs" / "volt" / "best.pt"
    if not semantic.is_file():
        print(f"error: no semantic checkpoint at {semantic}; run tools/demo.py --out {args.out} first",
              file=sys.stderr)
        return 2
    result = instance_stage(args.out / "processed", args.out / "runs", semantic, args.quick, args.overwrite)
    print(json.dumps(result, indent=2))
    print(f"held-out rooms: AP {100 * result['AP']:.1f}, AP50 {100 * result['AP50']:.1f}, "
          f"AP25 {100 * result['AP25']:.1f} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
