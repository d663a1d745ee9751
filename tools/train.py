"""Train a segmentor: a config file plus `key=value` overrides -> volt.engine.trainer.fit.

  python tools/train.py configs/demo_teacher.yaml
  python tools/train.py configs/scannet_volt_s_distill.yaml data.datasets.0.root=data/scannet train.lr=0.002
  torchrun --nproc_per_node=4 tools/train.py configs/scannet_volt_s_distill.yaml --out outputs/volt_s

The resolved config (defaults <- YAML <- overrides, seed included) is written to <out>/config.yaml; an
existing <out>/last.pt is resumed unless `train.resume=never`. `--print-config` shows the resolved config
and exits. Keys and defaults: volt/config.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.config import load_config, to_yaml
from volt.errors import DataError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, help="YAML config (only the keys that differ from volt/config.py)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=0.002 data.datasets.0.root=DIR")
    ap.add_argument("--out", help="run folder (same as train.out_dir=...)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--threads", type=int, help="torch threads per process on a CPU (default: the cores left after "
                                                "the loader workers, split over the ranks; or OMP_NUM_THREADS)")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after --out

    overrides = list(args.overrides) + ([f"train.out_dir={args.out}"] if args.out else [])
    try:
        cfg = load_config(args.config, overrides)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0

    import torch

    from volt.engine.dist import cleanup
    from volt.engine.threads import set_cpu_threads
    from volt.engine.trainer import fit

    on_cpu = cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())
    if on_cpu:
        threads = set_cpu_threads(cfg.data.num_workers, args.threads)
        if threads is not None:
            print(f"torch threads per process: {threads} (beside {cfg.data.num_workers} loader workers)")

    try:
        result = fit(cfg)
    finally:
        cleanup()
    metric = "AP50" if cfg.task == "instance" else "mIoU"
    best = f"{result.best} ({metric} {result.best_metric:.4f})" if result.best else "none (no validation ran)"
    print(f"done: {result.steps} steps in {result.run_dir}; last {result.last}; best {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
