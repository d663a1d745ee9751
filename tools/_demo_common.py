"""What the demo tools (tools/demo.py, demo_joint.py, demo_instance.py) share: "train unless already finished".

`finished_run(cfg, overwrite)` -> the run's last.pt (a checkpoint dict) when `cfg.train.out_dir` holds a run
that finished (all `train.eval_epochs` epochs) with exactly these settings, else None. Before returning None
it clears the run folder, unless the folder holds an unfinished run with the same settings: `fit` then
resumes that run from last.pt (train.resume: auto). `overwrite` always clears the folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from volt.config import Config, to_dict
from volt.engine.checkpoint import load_checkpoint


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
