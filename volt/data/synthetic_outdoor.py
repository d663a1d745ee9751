"""Synthetic LiDAR sweeps of procedural streets written in nuScenes' raw format (the input of `prepare_nuscenes`).

`make_outdoor_nuscenes(root, seed)` writes, under `root`:
  samples/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin   float32 x 5 per point: x, y, z, intensity 0-255, ring
  lidarseg/v1.0-mini/<sample_data_token>_lidarseg.bin      uint8 fine class id (0-31) per point
  v1.0-mini/{scene,sample,sample_data,calibrated_sensor,sensor,ego_pose,log,lidarseg,category}.json
Scenes carry the v1.0-mini scene names, so the standard mini split applies (8 train, 2 val scenes). Each
scene is one street (road, curbs and sidewalks, terrain strips, buildings, poles, trees and bushes, parked
and moving cars and trucks, pedestrians, barriers, traffic cones); its key frames are sweeps of a 32-beam
sensor 1.84 m above the road on a car driving along it, ray-cast with `synthetic_lidar`, with range noise,
dropout, a few noise returns and material-dependent intensities that overlap between classes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volt.data.synthetic_lidar import beam_directions, cast, rot_z
from volt.data.synthetic_street import INTENSITY, NOISE, ROAD, TERRAIN, Street, build_street

VERSION = "v1.0-mini"
SENSOR_HEIGHT = 1.84  # metres above the road; the real LIDAR_TOP calibration has z = 1.84
SENSOR_FORWARD = 0.943713  # sensor position ahead of the ego frame origin (real LIDAR_TOP calibration)
VAL_SCENES = ["scene-0103", "scene-0916"]  # v1.0-mini's val split; its other 8 scenes are train
# Scene order used when fewer scenes are asked for: the val scenes early, so any count >= 2 has both splits.
SCENE_ORDER = ["scene-0061", "scene-0103", "scene-0553", "scene-0655", "scene-0916", "scene-0757", "scene-0796",
               "scene-1077", "scene-1094", "scene-1100"]
# lidarseg fine classes in `category.json` index order.
FINE_NAMES = [
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle",
    "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck", "flat.driveable_surface",
    "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade", "static.other", "static.vegetation",
    "vehicle.ego",
]
MAX_RANGE = 80.0
_MEAN, _SPREAD = np.zeros(len(FINE_NAMES)), np.zeros(len(FINE_NAMES))  # intensity per fine class, as arrays
for _c, (_m, _s) in INTENSITY.items():
    _MEAN[_c], _SPREAD[_c] = _m, _s


@dataclass
class LidarSweep:
    """What was written for one key frame (used by tests and the demo report)."""

    token: str  # sample_data token = lidarseg token = the processed scene name
    scene: str
    split: str
    num_points: int
    filename: str


def simulate_sweep(rng: np.random.Generator, street: Street, x: float, yaw: float, azimuth_steps: int = 1084,
                   dropout: float = 0.03, noise_rate: float = 0.002) -> tuple[np.ndarray, np.ndarray]:
    """One revolution of the sensor at world (x, street.ego_y, SENSOR_HEIGHT) heading `yaw`.

    Returns points (N, 5) float32 [x, y, z, intensity, ring] in the sensor frame and fine labels (N,) uint8.
    """
    scan = beam_directions(rng, azimuth_steps)
    rot, origin = rot_z(yaw), np.array([x, street.ego_y, SENSOR_HEIGHT])
    prims = street.prims
    hits = cast(scan, prims.moved(rot, origin), -SENSOR_HEIGHT, MAX_RANGE)
    n = len(hits.t)
    hit_prim = np.maximum(hits.prim, 0)
    label = np.where(hits.prim == -1, ROAD, prims.label[hit_prim])
    # Raised blocks: the top is sidewalk within the sidewalk width of an edge, terrain further in.
    half = prims.half[hit_prim]
    on_top = hits.local[:, 2] > half[:, 2] - 1e-3
    inner = np.minimum(half[:, 0] - np.abs(hits.local[:, 0]), half[:, 1] - np.abs(hits.local[:, 1]))
    label = np.where((hits.prim >= 0) & (prims.sidewalk[hit_prim] > 0) & on_top & (inner > prims.sidewalk[hit_prim]),
                     TERRAIN, label)
    t = hits.t + rng.normal(0, 0.02, n)
    keep = (hits.prim != -2) & (rng.random(n) >= dropout)
    spurious = rng.random(n) < noise_rate  # returns from dust, rain or multipath: label 0
    t = np.where(spurious, rng.uniform(0.8, 25.0, n), t)
    label = np.where(spurious, NOISE, label)
    keep |= spurious
    # Intensity: class mean x primitive reflectivity x per-beam gain, plus noise; lane paint is bright.
    reflect = np.where(hits.prim >= 0, prims.reflect[hit_prim], 1.0)
    world = (scan.dirs * np.where(np.isfinite(t), t, 0.0)[:, None]) @ rot.T + origin
    paint = (hits.prim == -1) & (np.abs(world[:, 1]) < 0.08) & (np.mod(world[:, 0], 6.0) < 3.0)
    gain = rng.uniform(0.85, 1.2, scan.beams)[scan.ring]
    intensity = _MEAN[label] * reflect * gain + rng.normal(0, 1, n) * _SPREAD[label] + paint * 60
    intensity = np.clip(np.round(intensity), 0, 255)
    pts = np.concatenate([scan.dirs * t[:, None], intensity[:, None], scan.ring[:, None]], axis=1)
    return pts[keep].astype(np.float32), label[keep].astype(np.uint8)


def _token(seed: int, *parts) -> str:
    """A deterministic 32-hex token (nuScenes tokens are 32 hex characters)."""
    return hashlib.md5(":".join(["volt-synthetic", str(seed), *map(str, parts)]).encode()).hexdigest()


def _neighbour(tokens: list[str], i: int) -> str:
    """The prev/next link of a nuScenes record: the token at position i, or "" past either end."""
    return tokens[i] if 0 <= i < len(tokens) else ""


def _quaternion_z(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]  # w, x, y, z


def make_outdoor_nuscenes(root: str | os.PathLike, seed: int = 0, num_scenes: int = 10, samples_per_scene: int = 2,
                          azimuth_steps: int = 1084) -> list[LidarSweep]:
    """Write `num_scenes` (<= 10) streets with `samples_per_scene` key-frame sweeps each under `root`."""
    if not 1 <= num_scenes <= len(SCENE_ORDER):
        raise ValueError(f"num_scenes must be 1..{len(SCENE_ORDER)} (the v1.0-mini scenes), got {num_scenes}")
    root = Path(root)
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True, exist_ok=True)
    (root / "lidarseg" / VERSION).mkdir(parents=True, exist_ok=True)
    sensor_tok, calib_tok = _token(seed, "sensor"), _token(seed, "calibrated_sensor")
    tables: dict[str, list] = {name: [] for name in ("log", "scene", "sample", "sample_data", "ego_pose", "lidarseg")}
    tables["sensor"] = [{"token": sensor_tok, "channel": "LIDAR_TOP", "modality": "lidar"}]
    tables["calibrated_sensor"] = [{"token": calib_tok, "sensor_token": sensor_tok,
                                    "translation": [SENSOR_FORWARD, 0.0, SENSOR_HEIGHT],
                                    "rotation": [1.0, 0.0, 0.0, 0.0], "camera_intrinsic": []}]
    tables["category"] = [{"token": _token(seed, "category", i), "name": name, "description": f"lidarseg class {name}",
                           "index": i} for i, name in enumerate(FINE_NAMES)]
    sweeps = []
    for k, scene_name in enumerate(SCENE_ORDER[:num_scenes]):
        rng = np.random.default_rng([seed, 1, k])
        speed = rng.uniform(3.0, 7.0)  # metres between key frames (2 Hz)
        x0 = rng.uniform(-10.0, 0.0)
        xs = x0 + speed * np.arange(samples_per_scene)
        street = build_street(rng, (float(xs[0]), float(xs[-1])))
        log = f"n000-synthetic-{seed}-{scene_name}"
        scene_tok, log_tok = _token(seed, scene_name), _token(seed, scene_name, "log")
        tables["log"].append({"token": log_tok, "logfile": log, "vehicle": "synthetic", "date_captured": "2018-01-01",
                              "location": "synthetic-street"})
        samples = [_token(seed, scene_name, "sample", i) for i in range(samples_per_scene)]
        datas = [_token(seed, scene_name, "lidar", i) for i in range(samples_per_scene)]
        split = "val" if scene_name in VAL_SCENES else "train"
        for i, x in enumerate(xs):
            yaw = float(rng.normal(0, 0.02))
            points, labels = simulate_sweep(rng, street, float(x), yaw, azimuth_steps)
            stamp = 1531000000000000 + k * 10_000_000_000 + i * 500_000
            filename = f"samples/LIDAR_TOP/{log}__LIDAR_TOP__{stamp}.pcd.bin"
            seg_file = f"lidarseg/{VERSION}/{datas[i]}_lidarseg.bin"
            (root / filename).write_bytes(points.tobytes())
            (root / seg_file).write_bytes(labels.tobytes())
            pose_tok = _token(seed, scene_name, "ego_pose", i)
            tables["sample"].append({"token": samples[i], "timestamp": stamp, "prev": _neighbour(samples, i - 1),
                                     "next": _neighbour(samples, i + 1),
                                     "scene_token": scene_tok})
            ego_xy = np.array([x, street.ego_y]) - SENSOR_FORWARD * np.array([math.cos(yaw), math.sin(yaw)])
            tables["ego_pose"].append({"token": pose_tok, "timestamp": stamp, "rotation": _quaternion_z(yaw),
                                       "translation": [float(ego_xy[0]), float(ego_xy[1]), 0.0]})
            tables["sample_data"].append({
                "token": datas[i], "sample_token": samples[i], "ego_pose_token": pose_tok,
                "calibrated_sensor_token": calib_tok, "timestamp": stamp, "fileformat": "pcd", "is_key_frame": True,
                "height": 0, "width": 0, "filename": filename, "prev": _neighbour(datas, i - 1),
                "next": _neighbour(datas, i + 1)})
            tables["lidarseg"].append({"token": datas[i], "sample_data_token": datas[i], "filename": seg_file})
            sweeps.append(LidarSweep(datas[i], scene_name, split, len(points), filename))
        tables["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": samples_per_scene,
                                "first_sample_token": samples[0], "last_sample_token": samples[-1], "name": scene_name,
                                "description": "synthetic street, procedural (volt demo data)"})
    (root / VERSION).mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows, indent=1))
    return sweeps
