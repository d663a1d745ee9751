"""nuScenes lidarseg: raw sweep and label readers, the 32 -> 16 class map, the table reader, preprocessing.

Inputs (a nuScenes download, spec §3.2):
- `samples/LIDAR_TOP/*.pcd.bin`: float32 x 5 per point (x, y, z, intensity 0..255, ring index);
- `lidarseg/<version>/<token>_lidarseg.bin`: uint8 per point, a fine class id 0..31;
- `<version>/*.json`: the metadata tables, read directly as JSON (spec §5 item 8: no nuscenes-devkit).
Output: `Scene`s with coord (N,3), strength = intensity / 255 (N,1) and, when labelled, segment (N,)
in the 16 lidarseg training classes (-1 = ignore); `prepare_nuscenes` writes one processed folder per
key-frame LIDAR_TOP sample under `out_root/<split>/<lidar sample-data token>/`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.io import checked_record_count
from volt.data.nuscenes_splits import VERSIONS, split_of
from volt.data.prepare import Job, Summary, run_jobs
from volt.data.scene import Scene
from volt.errors import DataError

# Fine lidarseg id (category.json order) -> training id; -1 = ignore. Spec §3.2, which equals the
# devkit's LidarsegClassMapper coarse index minus one.
FINE_TO_TRAIN: tuple[int, ...] = (
    -1, -1, 6, 6,  # noise, animal, pedestrian.adult, pedestrian.child
    6, -1, 6, -1,  # pedestrian.construction_worker, pedestrian.personal_mobility, police_officer, stroller
    -1, 0, -1, -1,  # pedestrian.wheelchair, barrier, debris, pushable_pullable
    7, -1, 1, 2,  # trafficcone, static_object.bicycle_rack, vehicle.bicycle, bus.bendy
    2, 3, 4, -1,  # bus.rigid, car, vehicle.construction, emergency.ambulance
    -1, 5, 8, 9,  # emergency.police, motorcycle, trailer, truck
    10, 11, 12, 13,  # flat.driveable_surface, flat.other, flat.sidewalk, flat.terrain
    14, -1, 15, -1,  # static.manmade, static.other, static.vegetation, vehicle.ego
)  # fmt: skip
CLASS_NAMES_16: tuple[str, ...] = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian", "traffic_cone",
    "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade", "vegetation",
)  # fmt: skip
_FINE_TO_TRAIN = np.asarray(FINE_TO_TRAIN, dtype=np.int32)
_PCD_COLUMNS = 5  # x, y, z, intensity, ring
LIDAR_CHANNEL = "LIDAR_TOP"


def read_pcd_bin(path: str | os.PathLike) -> np.ndarray:
    """A nuScenes `.pcd.bin` sweep -> (N, 5) float32: x, y, z, intensity (0..255), ring index."""
    path = Path(path)
    checked_record_count(path, 4 * _PCD_COLUMNS, "nuScenes .pcd.bin")
    points = np.fromfile(path, dtype="<f4").reshape(-1, _PCD_COLUMNS).astype(np.float32, copy=False)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} of {len(points)} points have NaN or Inf values")
    return points


def read_lidarseg(path: str | os.PathLike, num_points: int, pcd_path: str | os.PathLike | None = None) -> np.ndarray:
    """A `_lidarseg.bin` label file -> (N,) uint8 fine ids 0..31, checked against the sweep's point count."""
    path = Path(path)
    count = checked_record_count(path, 1, "nuScenes lidarseg")
    if count != num_points:
        sweep = f" the sweep {pcd_path} has" if pcd_path is not None else " the sweep has"
        raise DataError(path, f"holds {count} labels but{sweep} {num_points} points")
    labels = np.fromfile(path, dtype=np.uint8)
    if labels.max() >= len(FINE_TO_TRAIN):
        bad = sorted(int(v) for v in np.unique(labels[labels >= len(FINE_TO_TRAIN)]))
        raise DataError(path, f"fine class ids {bad} are out of range 0..{len(FINE_TO_TRAIN) - 1}")
    return labels


def read_nuscenes_sweep(
    pcd_path: str | os.PathLike, lidarseg_path: str | os.PathLike | None = None, name: str | None = None
) -> Scene:
    """One sweep (+ optional lidarseg labels mapped to the 16 training classes) as a validated Scene."""
    pcd_path = Path(pcd_path)
    points = read_pcd_bin(pcd_path)
    arrays = {"coord": points[:, :3].copy(), "strength": points[:, 3:4] / np.float32(255.0)}
    source = [str(pcd_path)]
    if lidarseg_path is not None:
        fine = read_lidarseg(lidarseg_path, len(points), pcd_path)
        arrays["segment"] = _FINE_TO_TRAIN[fine]
        source.append(str(lidarseg_path))
    if name is None:
        name = pcd_path.name.removesuffix(".bin").removesuffix(".pcd")
    meta = {"dataset": "nuscenes", "classes": {"segment": list(CLASS_NAMES_16)}, "source": source}
    return Scene(name, arrays, meta).validate(str(pcd_path), {"segment": len(CLASS_NAMES_16)})


# ---------------------------------------------------------------------------------------------- tables


def _load_table(table_dir: Path, name: str, keys: tuple[str, ...], required: bool = True) -> list[dict] | None:
    """One metadata table as a list of records, each checked to hold `keys` (other fields are ignored)."""
    path = table_dir / f"{name}.json"
    if not path.is_file():
        if required:
            raise DataError(path, f"nuScenes table '{name}.json' not found")
        return None
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(records, list):
        raise DataError(path, f"expected a JSON list of records, got {type(records).__name__}")
    for i, record in enumerate(records):
        missing = [k for k in keys if not isinstance(record, dict) or k not in record]
        if missing:
            raise DataError(path, f"record {i} lacks field(s) {missing}")
    return records


def _lookup(index: dict[str, Any], token: str, table: Path, referrer: str) -> Any:
    if token not in index:
        raise DataError(table, f"token {token} (referenced by {referrer}) is not in this table")
    return index[token]


def key_frame_lidar(root: str | os.PathLike, version: str, check_files: bool = True) -> list[dict[str, Any]]:
    """Every key-frame LIDAR_TOP sample-data record of `root/version/`, sorted by scene and file name.

    Each item: {"token": lidar sample-data token, "scene": scene name, "pcd": Path,
    "lidarseg": Path or None}. `lidarseg` is None when `lidarseg.json` is absent (e.g. v1.0-test) or
    has no entry for the sample. With `check_files`, a referenced file that does not exist raises
    DataError naming it; `prepare_nuscenes` turns it off so a missing file fails only its sample.
    """
    root = Path(root)
    table_dir = root / version
    if not table_dir.is_dir():
        raise DataError(table_dir, f"nuScenes table folder for version '{version}' not found")
    scenes = _load_table(table_dir, "scene", ("token", "name"))
    samples = _load_table(table_dir, "sample", ("token", "scene_token"))
    sensors = _load_table(table_dir, "sensor", ("token", "channel"))
    calibrated = _load_table(table_dir, "calibrated_sensor", ("token", "sensor_token"))
    lidarseg = _load_table(table_dir, "lidarseg", ("token", "sample_data_token", "filename"), required=False)
    sd_keys = ("token", "sample_token", "filename", "is_key_frame", "calibrated_sensor_token")
    sample_data = _load_table(table_dir, "sample_data", sd_keys)

    scene_name = {r["token"]: r["name"] for r in scenes}
    scene_of_sample = {r["token"]: r["scene_token"] for r in samples}
    channel = {r["token"]: r["channel"] for r in sensors}
    sensor_of = {r["token"]: r["sensor_token"] for r in calibrated}
    label_of = {r["sample_data_token"]: r["filename"] for r in lidarseg or []}
    sample_table, scene_table = table_dir / "sample.json", table_dir / "scene.json"
    cal_table, sensor_table = table_dir / "calibrated_sensor.json", table_dir / "sensor.json"

    items = []
    for record in sample_data:
        if not record["is_key_frame"]:
            continue  # intermediate sweeps carry no lidarseg labels (spec §3.2)
        token = record["token"]
        calib = record["calibrated_sensor_token"]
        sensor = _lookup(sensor_of, calib, cal_table, f"sample_data {token}")
        if _lookup(channel, sensor, sensor_table, f"calibrated_sensor {calib}") != LIDAR_CHANNEL:
            continue
        scene_token = _lookup(scene_of_sample, record["sample_token"], sample_table, f"sample_data {token}")
        name = _lookup(scene_name, scene_token, scene_table, f"sample {record['sample_token']}")
        label = label_of.get(token)
        pcd, label_path = root / record["filename"], (root / label if label else None)
        items.append({"token": token, "scene": name, "pcd": pcd, "lidarseg": label_path})
    if check_files:
        for item in items:
            for path in (item["pcd"], item["lidarseg"]):
                if path is not None and not path.is_file():
                    raise DataError(path, f"file referenced by sample_data {item['token']} not found")
    items.sort(key=lambda item: (item["scene"], item["pcd"].name))
    return items


# ------------------------------------------------------------------------------------------ preprocessing


def _sweep_job(item: dict[str, Any], split: str, out_root: Path, version: str) -> Job:
    def read() -> Scene:
        scene = read_nuscenes_sweep(item["pcd"], item["lidarseg"], name=item["token"])
        scene.meta.update({"scene": item["scene"], "version": version, "split": split})
        return scene

    return Job(item["token"], out_root / split / item["token"], read)


def prepare_nuscenes(
    root: str | os.PathLike, out_root: str | os.PathLike, version: str, overwrite: bool = False, progress: bool = True
) -> Summary:
    """Write every key-frame LIDAR_TOP sample of `version` to `out_root/<split>/<token>/`.

    Finished folders are skipped unless `overwrite`; a bad sample (unreadable file, label mismatch, a
    scene that no split list of `version` names) is reported in the summary and the others go on.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown nuScenes version '{version}' (known: {', '.join(VERSIONS)})")
    out_root = Path(out_root)
    items = key_frame_lidar(root, version, check_files=False)
    if progress and version != "v1.0-test" and items and all(item["lidarseg"] is None for item in items):
        print(f"note: no lidarseg labels found for {version}; writing unlabelled sweeps", file=sys.stderr)
    jobs, unassigned = [], {}
    for item in items:
        split = split_of(version, item["scene"])
        if split is None:
            unassigned[item["token"]] = f"DataError: scene {item['scene']} is in no {version} split list"
        else:
            jobs.append(_sweep_job(item, split, out_root, version))
    summary = run_jobs(jobs, overwrite=overwrite, desc=f"nuScenes {version}", progress=progress)
    summary.failed.update(unassigned)
    return summary


def prepare_sweep(
    pcd_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    lidarseg_path: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Summary:
    """Write one sweep (+ optional lidarseg) as the processed folder `out_dir` (skipped if finished)."""
    out_dir = Path(out_dir)
    job = Job(out_dir.name, out_dir, lambda: read_nuscenes_sweep(pcd_path, lidarseg_path))
    return run_jobs([job], overwrite=overwrite, desc="nuScenes sweep", progress=False)
