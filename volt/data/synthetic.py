"""The embedded demo data: procedural scans written in the real raw formats, so the demo runs the same
preprocessors (`prepare_scannet`, `prepare_nuscenes`) a user runs on downloaded data.

- `make_indoor_scannet(root, num_scenes, seed)`: furnished rooms as ScanNet v2 raw scenes (mesh `.ply`,
  `segs.json`, `aggregation.json`, the label tsv rows they need, train/val split files). See `synthetic_indoor`.
- `make_outdoor_nuscenes(root, seed, num_scenes, samples_per_scene)`: LiDAR sweeps of streets as a nuScenes
  `v1.0-mini` tree (`.pcd.bin`, lidarseg `.bin`, JSON tables). See `synthetic_outdoor`.
- `make_demo_data(out_root, seed)`: both, under `out_root/scannet` and `out_root/nuscenes`.

Everything is drawn from `numpy.random.Generator`s seeded by `seed` (one per scene), so the same seed
writes byte-identical files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from volt.data.synthetic_indoor import LABELS as INDOOR_LABELS
from volt.data.synthetic_indoor import IndoorScene, make_indoor_scannet
from volt.data.synthetic_outdoor import FINE_NAMES, LidarSweep, make_outdoor_nuscenes

__all__ = [
    "FINE_NAMES",
    "INDOOR_LABELS",
    "DemoData",
    "IndoorScene",
    "LidarSweep",
    "make_demo_data",
    "make_indoor_scannet",
    "make_outdoor_nuscenes",
]


@dataclass
class DemoData:
    """Where the demo data went and what each scene holds."""

    scannet_root: Path  # pass `scannet_root / "scans"` and the tsv/split files in it to prepare_scannet
    nuscenes_root: Path  # pass it with version "v1.0-mini" to prepare_nuscenes
    indoor: list[IndoorScene]
    outdoor: list[LidarSweep]


def make_demo_data(out_root: str | os.PathLike, seed: int = 0, indoor_scenes: int = 10, outdoor_scenes: int = 10,
                   samples_per_scene: int = 2) -> DemoData:
    """Write the default demo set: `indoor_scenes` rooms and `outdoor_scenes` x `samples_per_scene` sweeps."""
    out_root = Path(out_root)
    indoor = make_indoor_scannet(out_root / "scannet", indoor_scenes, seed)
    outdoor = make_outdoor_nuscenes(out_root / "nuscenes", seed, outdoor_scenes, samples_per_scene)
    return DemoData(out_root / "scannet", out_root / "nuscenes", indoor, outdoor)
