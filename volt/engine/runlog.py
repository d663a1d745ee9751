"""What a training run writes about itself: text log, JSON-lines metrics, optional TensorBoard, progress bar.

`RunLog(run_dir, enabled)` (only rank 0 is enabled; the others are silent no-ops):
- `info(msg)`: a timestamped line on stdout and in `run_dir/train.log`;
- `metrics(kind, record)`: one JSON object per line in `run_dir/metrics.jsonl`
  ({"kind": "train"|"val", "time": unix seconds, "step": ..., ...}; read it for plots), a compact text line
  (lists such as the per-class IoU only in the JSON),
  and TensorBoard scalars `<kind>/<name>` against `step` when the `tensorboard` package is installed
  (imported lazily; when missing, train.log says so once and training goes on);
- `progress(total, initial)`: a tqdm bar over optimizer steps with rate and ETA.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class RunLog:
    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._tb: Any = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Open for the whole run (line-buffered, appended across resumes); closed by close().
        self._text = open(self.run_dir / "train.log", "a", buffering=1)  # noqa: SIM115
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        else:
            self.info("TensorBoard logging is off: the 'tensorboard' package is not installed "
                      "(pip install tensorboard); every metric is also in metrics.jsonl")

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        self._text.write(line + "\n")
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)  # keeps the bar intact
        else:
            print(line, flush=True)

    def metrics(self, kind: str, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"kind": kind, "time": round(time.time(), 3), **record}) + "\n")
        self.info(f"{kind} " + " ".join(f"{k} {_fmt(v)}" for k, v in record.items() if not isinstance(v, list)))
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def progress(self, total: int, initial: int = 0) -> tqdm:
        """A bar over optimizer steps (disabled on ranks other than 0)."""
        # Redrawn often on a terminal; rarely when stderr goes to a file (a job log), to keep it readable.
        self._bar = tqdm(total=total, initial=initial, disable=not self.enabled, unit="step", dynamic_ncols=True,
                         file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 60.0)
        return self._bar

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
        self._text.close()
        self._jsonl.close()
