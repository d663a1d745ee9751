"""Every format read_cloud supports, written then read back: real scans and edge-sized clouds keep their values.

tests/test_readers.py covers the per-format variants (aliases, separators, value rules, bad input); this file
checks that each suffix in SUPPORTED_FORMATS (and the processed scene folder) round-trips whatever a user's
cloud carries — real ScanNet colors, real nuScenes intensities, a single point — so a new format cannot be
added without a writer here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from volt.data.io import write_scene
from volt.data.ply_cloud import write_ply
from volt.data.readers import SUPPORTED_FORMATS, read_cloud
from volt.data.scene import Scene

SCANNET_PLY = "scannet/scene0000_00/scene0000_00_vh_clean_2.ply"
NUSCENES_SWEEP = "nuscenes/samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
# Column names read_cloud understands (volt.data.ply_cloud), in the order the text writer puts them.
TEXT_COLUMNS = {"coord": ("x", "y", "z"), "color": ("red", "green", "blue"), "normal": ("nx", "ny", "nz"),
                "strength": ("intensity",), "segment": ("label",), "instance": ("instance",)}


def _text(path: Path, s: Scene, sep: str) -> Path:
    fields = [f for f in TEXT_COLUMNS if f in s]
    header = sep.join(name for f in fields for name in TEXT_COLUMNS[f])
    mat = np.concatenate([s[f].reshape(s.num_points, -1).astype(np.float64) for f in fields], axis=1)
    np.savetxt(path, mat, fmt="%.9g", delimiter=sep, header=header, comments="")  # 9 digits: exact float32
    return path


def _npy(path: Path, s: Scene) -> Path:
    # The plain (N, C) layouts: xyz + intensity, or xyz + rgb (+ label).
    extra = ["strength"] if "strength" in s else ["color", "segment"] if "segment" in s else ["color"]
    np.save(path, np.concatenate([s[f].reshape(s.num_points, -1).astype(np.float64)
                                  for f in ("coord", *extra)], axis=1))
    return path


def _las(path: Path, s: Scene) -> Path:
    laspy = pytest.importorskip("laspy")
    if path.suffix == ".laz" and not laspy.LazBackend.detect_available():
        pytest.skip("no LAZ backend (lazrs) installed")
    # Point format 3 has RGB, 1 has none (read_cloud would read format 3's empty RGB as black).
    las = laspy.LasData(laspy.LasHeader(point_format=3 if "color" in s else 1, version="1.2"))
    las.header.scales, las.header.offsets = np.full(3, 1e-4), np.zeros(3)
    las.x, las.y, las.z = (s["coord"][:, i].astype(np.float64) for i in range(3))
    if "color" in s:
        c = s["color"].astype(np.uint16) * 257  # 8 -> 16 bit the usual way
        las.red, las.green, las.blue = c[:, 0], c[:, 1], c[:, 2]
    if "strength" in s:
        las.intensity = np.round(s["strength"][:, 0].astype(np.float64) * 65535).astype(np.uint16)
    if "segment" in s:
        las.classification = s["segment"].astype(np.uint8)
    las.write(str(path))
    return path


def _lidar_bin(columns: int) -> Callable[[Path, Scene], Path]:
    def write(path: Path, s: Scene) -> Path:
        raw = s["strength"] * (255.0 if columns == 5 else 1.0)  # nuScenes stores 0..255, KITTI 0..1
        cols = [s["coord"], raw] + ([np.zeros((s.num_points, 1))] if columns == 5 else [])
        np.concatenate(cols, axis=1).astype("<f4").tofile(path)
        return path

    return write


# suffix -> (writer, fields it can hold); every SUPPORTED_FORMATS entry must be here.
WRITERS: dict[str, tuple[Callable[[Path, Scene], Path], tuple[str, ...]]] = {
    ".ply": (write_ply, ("coord", "color", "normal", "strength", "segment", "instance")),
    ".npy": (_npy, ("coord", "color", "strength", "segment")),
    ".npz": (lambda p, s: np.savez(p, **s.arrays) or p, ("coord", "color", "normal", "strength", "segment", "instance")),
    ".txt": (lambda p, s: _text(p, s, " "), tuple(TEXT_COLUMNS)),
    ".csv": (lambda p, s: _text(p, s, ","), tuple(TEXT_COLUMNS)),
    ".xyz": (lambda p, s: _text(p, s, " "), tuple(TEXT_COLUMNS)),
    ".las": (_las, ("coord", "color", "strength", "segment")),
    ".laz": (_las, ("coord", "color", "strength", "segment")),
    ".pcd.bin": (_lidar_bin(5), ("coord", "strength")),
    ".bin": (_lidar_bin(4), ("coord", "strength")),
    "scene": (lambda p, s: write_scene(s, p), ("coord", "color", "normal", "strength", "segment", "instance")),
}


def test_every_supported_format_has_a_round_trip():
    assert set(WRITERS) == set(SUPPORTED_FORMATS) | {"scene"}


def _round_trip(scene: Scene, suffix: str, tmp_path: Path) -> tuple[Scene, Scene]:
    """(what was written: the scene's fields the format can hold, what read_cloud gave back)."""
    writer, holds = WRITERS[suffix]
    kept = Scene("cloud", {f: scene[f] for f in holds if f in scene}).validate()
    path = writer(tmp_path / ("cloud" if suffix == "scene" else f"cloud{suffix}"), kept)
    return kept, read_cloud(path, las_labels=suffix in (".las", ".laz"))


def _assert_same(kept: Scene, got: Scene, suffix: str) -> None:
    las = suffix in (".las", ".laz")
    # LAS always carries an intensity, and a classification (read as labels here: las_labels=True)
    expected = set(kept.arrays) | ({"strength", "segment"} if las else set())
    assert set(got.arrays) == expected, suffix
    assert got.num_points == kept.num_points
    for f in kept.arrays:
        assert got[f].dtype == kept[f].dtype, (suffix, f)
        if las and f == "coord":
            np.testing.assert_allclose(got[f], kept[f], atol=6e-5, err_msg=suffix)  # stored in 1e-4 steps
        elif las and f == "strength":
            np.testing.assert_allclose(got[f], kept[f], atol=1 / 65535, err_msg=suffix)  # 16-bit intensity
        elif suffix == ".pcd.bin" and f == "strength":
            np.testing.assert_allclose(got[f], kept[f], rtol=1e-6, err_msg=suffix)  # * 255 / 255 in float32
        else:
            np.testing.assert_array_equal(got[f], kept[f], err_msg=f"{suffix} {f}")


@pytest.fixture(scope="module")
def real_clouds(shared_data) -> dict[str, Scene]:
    """Every 7th point of the real ScanNet mesh (colors) and nuScenes sweep (intensities)."""
    out = {}
    for key, rel in (("scannet", SCANNET_PLY), ("nuscenes", NUSCENES_SWEEP)):
        s = read_cloud(shared_data / rel)
        out[key] = Scene(key, {f: v[::7] for f, v in s.arrays.items()}).validate()
    return out


# The real clouds' per-point fields besides coord; each is written to every format that can hold them.
REAL_FIELDS = {"scannet": {"color"}, "nuscenes": {"strength"}}
REAL_CASES = [(cloud, suffix) for cloud, fields in REAL_FIELDS.items() for suffix, (_, holds) in WRITERS.items()
              if fields & set(holds)]


@pytest.mark.parametrize("cloud, suffix", REAL_CASES)
def test_real_scans_round_trip(real_clouds, cloud, suffix, tmp_path):
    scene = real_clouds[cloud]
    assert set(scene.arrays) == {"coord"} | REAL_FIELDS[cloud]
    kept, got = _round_trip(scene, suffix, tmp_path)
    _assert_same(kept, got, suffix)


@pytest.mark.parametrize("suffix", list(WRITERS))
@pytest.mark.parametrize("n", [1, 2, 1000])
def test_edge_sizes_round_trip(suffix, n, tmp_path):
    rng = np.random.default_rng(n)
    normal = rng.normal(size=(n, 3))
    scene = Scene("cloud", {
        "coord": rng.uniform(-50, 50, (n, 3)),
        "color": rng.integers(0, 256, (n, 3)),
        "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True),
        "segment": rng.integers(0, 20, n),  # >= 0: LAS classification has no -1
        "instance": rng.integers(-1, 5, n),
    }).validate()
    if suffix in (".pcd.bin", ".bin"):
        scene = Scene("cloud", {"coord": scene["coord"], "strength": rng.uniform(0, 1, (n, 1))}).validate()
    kept, got = _round_trip(scene, suffix, tmp_path)
    _assert_same(kept, got, suffix)
