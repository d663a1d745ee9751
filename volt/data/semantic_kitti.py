"""SemanticKITTI: scan and label readers, the learning map (raw id -> 19 classes), preprocessing.

Inputs (a SemanticKITTI download): `sequences/NN/velodyne/FFFFFF.bin` (float32 x 4 per point: x, y, z,
remission) and `sequences/NN/labels/FFFFFF.label` (uint32 per point: lower 16 bits the raw semantic id,
upper 16 bits the instance id). The learning map comes from the benchmark's `semantic-kitti.yaml`
(`learning_map`: raw id -> 0..19 with 0 = unlabeled); the standard map is also built in.
Output: `Scene`s with coord (N,3), strength = remission (N,1), segment (N,) in 0..18 (learning id - 1,
-1 = ignore) and instance (N,); `prepare_semantic_kitti` writes `out_root/<split>/<seq>_<frame>/`.

Instance choice: the raw upper-16-bit id is kept as is (it names the same object in every scan of a
sequence), and is -1 where it is 0 (stuff, or no object) or where the point's class is ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volt.data.io import checked_record_count
from volt.data.prepare import Job, Summary, run_jobs
from volt.data.scene import Scene
from volt.errors import DataError

# The standard benchmark map (semantic-kitti.yaml `learning_map`): raw id -> learning id 0..19.
_STANDARD_LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10, 48: 11,
    49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}  # fmt: skip
# Names of learning ids 1..19 (= train ids 0..18), from `labels` + `learning_map_inv`.
CLASS_NAMES_19: tuple[str, ...] = (
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist", "road",
    "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk", "terrain", "pole",
    "traffic-sign",
)  # fmt: skip
SPLIT_SEQUENCES: dict[str, tuple[int, ...]] = {
    "train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10),
    "val": (8,),
    "test": tuple(range(11, 22)),
}
_UNKNOWN = -2  # marks raw ids the map does not name (distinct from -1 = ignore)


@dataclass(frozen=True)
class LearningMap:
    """Raw semantic id -> train id (-1 = ignore) and the train classes' names; `source` says where from."""

    raw_to_train: dict[int, int]
    class_names: tuple[str, ...]
    source: str = "built-in"

    def apply(self, raw: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        """Map raw semantic ids to int32 train ids; ids the map lacks raise DataError naming `path`."""
        lut = np.full(1 << 16, _UNKNOWN, dtype=np.int32)  # raw ids are 16-bit
        for raw_id, train_id in self.raw_to_train.items():
            lut[raw_id] = train_id
        mapped = lut[raw]
        if (mapped == _UNKNOWN).any():
            bad = sorted(int(v) for v in np.unique(raw[mapped == _UNKNOWN]))
            raise DataError(path, f"raw semantic ids {bad} are not in the learning map ({self.source})")
        return mapped


STANDARD_LEARNING_MAP = LearningMap({k: v - 1 for k, v in _STANDARD_LEARNING_MAP.items()}, CLASS_NAMES_19)


def load_learning_map(yaml_path: str | os.PathLike | None = None) -> LearningMap:
    """Read `learning_map`, `learning_map_inv` and `labels` from a semantic-kitti.yaml (None: built-in)."""
    if yaml_path is None:
        return STANDARD_LEARNING_MAP
    import yaml  # a core dependency; imported here to keep module import light

    path = Path(yaml_path)
    if not path.is_file():
        raise DataError(path, "learning-map yaml not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(path, f"not valid YAML ({exc})") from exc
    missing = [k for k in ("labels", "learning_map", "learning_map_inv") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise DataError(path, f"missing section(s) {missing}")
    learning = {int(k): int(v) for k, v in doc["learning_map"].items()}
    inverse = {int(k): int(v) for k, v in doc["learning_map_inv"].items()}
    labels = {int(k): str(v) for k, v in doc["labels"].items()}
    num = max(inverse)  # learning ids 1..num are classes, 0 is unlabeled
    if sorted(inverse) != list(range(num + 1)):
        raise DataError(path, f"learning_map_inv keys must be 0..{num}, got {sorted(inverse)}")
    outside = sorted({v for v in learning.values() if not 0 <= v <= num})
    if outside:
        raise DataError(path, f"learning_map values {outside} are outside 0..{num}")
    unnamed = [inverse[i] for i in range(1, num + 1) if inverse[i] not in labels]
    if unnamed:
        raise DataError(path, f"raw ids {unnamed} in learning_map_inv have no entry in labels")
    names = tuple(labels[inverse[i]] for i in range(1, num + 1))
    return LearningMap({k: v - 1 for k, v in learning.items()}, names, str(path))


def read_kitti_bin(path: str | os.PathLike) -> np.ndarray:
    """A velodyne `.bin` scan -> (N, 4) float32: x, y, z, remission."""
    path = Path(path)
    checked_record_count(path, 16, "SemanticKITTI scan")
    points = np.fromfile(path, dtype="<f4").reshape(-1, 4).astype(np.float32, copy=False)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} of {len(points)} points have NaN or Inf values")
    return points


def read_kitti_label(path: str | os.PathLike, num_points: int) -> np.ndarray:
    """A `.label` file -> (N,) uint32 (lower 16 bits semantic, upper 16 instance), length-checked."""
    path = Path(path)
    count = checked_record_count(path, 4, "SemanticKITTI label")
    if count != num_points:
        raise DataError(path, f"holds {count} labels but the scan has {num_points} points")
    return np.fromfile(path, dtype="<u4").astype(np.uint32, copy=False)


def _default_name(bin_path: Path) -> str:
    # sequences/08/velodyne/000123.bin -> "08_000123"
    if bin_path.parent.name == "velodyne":
        return f"{bin_path.parent.parent.name}_{bin_path.stem}"
    return bin_path.stem


def read_kitti_scan(
    bin_path: str | os.PathLike,
    label_path: str | os.PathLike | None = None,
    learning_map: LearningMap | None = None,
    name: str | None = None,
) -> Scene:
    """One scan (+ optional labels) as a validated Scene with coord, strength, segment and instance."""
    bin_path = Path(bin_path)
    learning_map = learning_map or STANDARD_LEARNING_MAP
    points = read_kitti_bin(bin_path)
    arrays = {"coord": points[:, :3].copy(), "strength": points[:, 3:4].copy()}
    source = [str(bin_path)]
    if label_path is not None:
        label = read_kitti_label(label_path, len(points))
        segment = learning_map.apply(label & 0xFFFF, label_path)
        instance = (label >> 16).astype(np.int32)
        instance[(instance == 0) | (segment < 0)] = -1
        arrays.update(segment=segment, instance=instance)
        source.append(str(label_path))
    meta = {
        "dataset": "semantic_kitti",
        "classes": {"segment": list(learning_map.class_names)},
        "source": source,
        "learning_map": learning_map.source,
    }
    scene = Scene(name or _default_name(bin_path), arrays, meta)
    return scene.validate(str(bin_path), {"segment": len(learning_map.class_names)})


def split_of_sequence(sequence: int) -> str | None:
    """'train', 'val' or 'test' for a sequence number of the standard split, None for any other."""
    for split, sequences in SPLIT_SEQUENCES.items():
        if sequence in sequences:
            return split
    return None


def prepare_semantic_kitti(
    root: str | os.PathLike,
    out_root: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
    learning_map_yaml: str | os.PathLike | None = None,
) -> Summary:
    """Write every scan of `root/sequences/NN/velodyne/` to `out_root/<split>/<NN>_<frame>/`.

    The learning map is `learning_map_yaml`, else `root/semantic-kitti.yaml` when present, else the
    built-in standard map. Train and val scans need their `labels/*.label` (a missing one fails that
    scan); test scans are written unlabelled. Sequences outside 00-21 are reported as failures.
    """
    root, out_root = Path(root), Path(out_root)
    seq_root = root / "sequences"
    if not seq_root.is_dir():
        raise DataError(seq_root, "SemanticKITTI 'sequences' folder not found")
    if learning_map_yaml is None and (root / "semantic-kitti.yaml").is_file():
        learning_map_yaml = root / "semantic-kitti.yaml"
    learning_map = load_learning_map(learning_map_yaml)

    jobs: list[Job] = []
    unassigned: dict[str, str] = {}
    for seq_dir in sorted(p for p in seq_root.iterdir() if (p / "velodyne").is_dir()):
        split = split_of_sequence(int(seq_dir.name)) if seq_dir.name.isdigit() else None
        if split is None:
            unassigned[f"sequence {seq_dir.name}"] = "DataError: not a sequence of the standard split (00-21)"
            continue
        for bin_path in sorted((seq_dir / "velodyne").glob("*.bin")):
            name = f"{seq_dir.name}_{bin_path.stem}"
            label = seq_dir / "labels" / f"{bin_path.stem}.label"
            label_path = None if split == "test" and not label.is_file() else label

            # Default arguments bind this scan's values (a plain closure would see the loop's last ones).
            def read(bin_path=bin_path, label_path=label_path, name=name, split=split) -> Scene:
                scene = read_kitti_scan(bin_path, label_path, learning_map, name)
                scene.meta["split"] = split
                return scene

            jobs.append(Job(name, out_root / split / name, read))
    summary = run_jobs(jobs, overwrite=overwrite, desc="SemanticKITTI", progress=progress)
    summary.failed.update(unassigned)
    return summary
