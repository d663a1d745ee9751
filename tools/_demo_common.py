"""What the demo tools (tools/demo.py, demo_joint.py, demo_instance.py) share: "train unless already finished"
and the precise test of a run's checkpoint.

`finished_run(cfg, overwrite)` -> the run's last.pt (a checkpoint dict) when `cfg.train.out_dir` holds a run
that finished (all `train.eval_epochs` epochs) with exactly these settings, else None. Before returning None
it clears the run folder, unless the folder holds an unfinished run with the same settings: `fit` then
resumes that run from last.pt (train.resume: auto). `overwrite` always clears the folder.

`train_or_reuse(cfg, overwrite, metric)` -> `Trained(best, steps, now)`: the finished run's numbers (announced
as "already trained: ...") or `fit(cfg)`'s.

`precise_tests(cfg, ckpt_path, views, datasets, out_dir, log)` -> [(TestResult, TTA views used)], one per
dataset: `volt.engine.evaluate.precise_test` of the checkpoint on each dataset's val split.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from volt.config import Config, DatasetCfg, to_dict
from volt.data.dataset import SceneDataset
from volt.engine.build import build_test_segmentor, class_names, test_views_for
from volt.engine.checkpoint import load_checkpoint
from volt.engine.dist import pick_device
from volt.engine.evaluate import TestResult, precise_test
from volt.engine.trainer import fit


def finished_run(cfg: Config, overwrite: bool) -> dict[str, Any] | None:
    """The finished run's last.pt, or None with the folder made ready for `fit` (see the module docstring)."""
    run_dir = Path(cfg.train.out_dir)
    last = run_dir / "last.pt"
    ckpt = load_checkpoint(last) if last.is_file() and not overwrite else None
    if ckpt is not None and ckpt.get("config") != to_dict(cfg):
        print(f"  {run_dir} holds a run with other settings: training afresh")
        ckpt = None
    if ckpt is not None and ckpt["epoch"] >= cfg.train.eval_epochs:
        return ckpt
    if ckpt is None and run_dir.exists():
        shutil.rmtree(run_dir)
    return None


class Trained(NamedTuple):
    best: float  # best validation metric of the run (FitResult.best_metric)
    steps: int  # optimizer steps in total
    now: bool  # whether the run (or part of it) was trained by this call


def train_or_reuse(cfg: Config, overwrite: bool, metric: str | None) -> Trained:
    """Train `cfg` unless the same run already finished (an interrupted one resumes, see `finished_run`). A
    reused run is announced with its best validation `metric` (the name of the config's metric, e.g. "mIoU"),
    or with its step count when `metric` is None."""
    ckpt = finished_run(cfg, overwrite)
    if ckpt is None:
        result = fit(cfg)
        return Trained(result.best_metric, result.steps, True)
    best, steps = float(ckpt["meta"]["best_metric"]), int(ckpt["step"])
    note = f"best val {metric} {100 * best:.1f}" if metric else f"{steps} steps"
    print(f"  already trained: {cfg.train.out_dir} ({note}); --overwrite retrains")
    return Trained(best, steps, False)


def precise_tests(
    cfg: Config,
    ckpt_path: Path,
    views: int | None,
    datasets: Sequence[DatasetCfg],
    out_dir: Callable[[DatasetCfg], Path] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[tuple[TestResult, int]]:
    """Precise test (test-mode fragments x the first `views` TTA views, all when None) of `ckpt_path` (its EMA
    weights when present, no teacher) on the val split of each of `datasets`: [(result, TTA views used)].
    The device: the CPU when cfg.train.device is "cpu", else CUDA when torch sees it. `out_dir(ds)`: where that
    dataset's per-scene predictions are cached, and reused when made with as many views (None: no cache)."""
    device = pick_device("cpu" if cfg.train.device == "cpu" else "auto")
    model, _ = build_test_segmentor(cfg, load_checkpoint(ckpt_path), device, source=ckpt_path)
    results = []
    for ds in datasets:
        fragments, num_views = test_views_for(ds, cfg.model, views)
        result = precise_test(model, SceneDataset(ds.root, ds.val_split), fragments, ds.num_classes, device=device,
                              condition=ds.condition, class_names=class_names(ds),
                              out_dir=out_dir(ds) if out_dir else None, num_views=num_views,
                              label_key=ds.segment_field, log=log)
        results.append((result, num_views))
    return results
