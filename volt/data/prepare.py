"""The shared preprocessing loop: one job per scene, atomic writes, skip-finished, keep going, summary.

Every `tools/prepare_*.py` builds a list of `Job`s (an output folder and a function that reads the raw
scene into a `Scene`) and hands it to `run_jobs`, so all preprocessors behave the same way:
finished scenes are skipped unless `overwrite`, a bad scene is reported and the loop continues, and
the return value says how many failed (the tools exit non-zero when any did).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from volt.data.io import is_scene_dir, write_scene
from volt.data.scene import Scene


@dataclass
class Job:
    name: str
    out_dir: Path
    read: Callable[[], Scene]


@dataclass
class Summary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def report(self, stream=None) -> None:
        stream = sys.stdout if stream is None else stream
        print(
            f"written {len(self.written)}, skipped (already done) {len(self.skipped)}, failed {len(self.failed)}",
            file=stream,
        )
        for name, why in self.failed.items():
            print(f"  FAILED {name}: {why}", file=stream)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def run_jobs(jobs: list[Job], overwrite: bool = False, desc: str = "scenes", progress: bool = True) -> Summary:
    summary = Summary()
    for job in tqdm(jobs, desc=desc, unit="scene", disable=not progress):
        if not overwrite and is_scene_dir(job.out_dir):
            summary.skipped.append(job.name)
            continue
        try:
            scene = job.read()
            write_scene(scene, job.out_dir, overwrite=True)
        except Exception as exc:  # noqa: BLE001 - a bad scene must not stop the others
            summary.failed[job.name] = f"{type(exc).__name__}: {exc}"
            continue
        summary.written.append(job.name)
    return summary
