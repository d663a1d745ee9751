"""read_cloud / write_ply / atomic_write: round trips through every user format, value conversions, bad input,
real scans.

Two kinds of round trip: the per-format variants (aliases, separators, LAS color conventions) on one random
cloud, and one writer per SUPPORTED_FORMATS suffix (so a new format cannot be added without one) run on
1-, 2- and 1000-point clouds and on real ScanNet colors and nuScenes intensities.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import plyfile
import pytest
from conftest import NUSCENES_SWEEP, SCANNET_PLY

from volt.data.io import atomic_write, write_scene
from volt.data.ply_cloud import write_ply
from volt.data.readers import SUPPORTED_FORMATS, read_cloud
from volt.data.scene import Scene
from volt.errors import DataError, MissingExtraError

N = 200
ALL = ("coord", "color", "normal", "strength", "segment", "instance")


@pytest.fixture(scope="module")
def scene() -> Scene:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(N, 3))
    arrays = {
        "coord": rng.uniform(-5, 5, size=(N, 3)),
        "color": rng.integers(0, 256, size=(N, 3)),
        "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True),
        "strength": rng.uniform(0, 1, size=(N, 1)),
        "segment": rng.integers(-1, 20, size=N),
        "instance": rng.integers(-1, 10, size=N),
    }
    return Scene("random", arrays).validate()


def _matrix(s: Scene, fields: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([s[f].reshape(s.num_points, -1).astype(np.float64) for f in fields], axis=1)


def _text(path: Path, s: Scene, header: str | None, fields: tuple[str, ...], sep: str) -> Path:
    np.savetxt(path, _matrix(s, fields), fmt="%.9g", delimiter=sep, header=header or "", comments="")
    return path


def _las(path: Path, s: Scene, colors16: str = "x257", offset=(0.0, 0.0, 0.0)) -> Path:
    """The fields of `s` LAS can hold; 8-bit colors stored as 16 bit (x257), shifted (<< 8) or "as-is"."""
    laspy = pytest.importorskip("laspy")
    if path.suffix == ".laz" and not laspy.LazBackend.detect_available():
        pytest.skip("no LAZ backend (lazrs) installed")
    # Point format 3 has RGB, 1 has none (read_cloud would read format 3's empty RGB as black).
    las = laspy.LasData(laspy.LasHeader(point_format=3 if "color" in s else 1, version="1.2"))
    las.header.scales = np.array([1e-4, 1e-4, 1e-4])
    las.header.offsets = np.array(offset)
    xyz = s["coord"].astype(np.float64) + np.array(offset)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if "color" in s:
        c = s["color"].astype(np.uint16)
        c = c * 257 if colors16 == "x257" else c << 8 if colors16 == "shift" else c
        las.red, las.green, las.blue = c[:, 0], c[:, 1], c[:, 2]
    if "strength" in s:
        las.intensity = np.round(s["strength"][:, 0].astype(np.float64) * 65535).astype(np.uint16)
    if "segment" in s:
        las.classification = np.clip(s["segment"], 0, 31).astype(np.uint8)
    las.write(str(path))
    return path


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


XYZ_RGB = ("coord", "color")
XYZ_RGB_L = ("coord", "color", "segment")
HEADER = "x y z red green blue nx ny nz intensity label instance"  # the order of ALL

# id -> (writer(tmp_path, scene) -> file, fields that must come back, read kwargs)
ROUND_TRIPS = {
    "ply-binary": (lambda d, s: write_ply(d / "a.ply", s), ALL, {}),
    "ply-ascii": (lambda d, s: write_ply(d / "a.ply", s, text=True), ALL, {}),
    "npy-xyzrgbl": (lambda d, s: _npy(d / "a.npy", _matrix(s, XYZ_RGB_L)), XYZ_RGB_L, {}),
    "npy-xyzi": (lambda d, s: _npy(d / "a.npy", _matrix(s, ("coord", "strength"))), ("coord", "strength"), {}),
    "npy-xyz-f32": (lambda d, s: _npy(d / "a.npy", s["coord"]), ("coord",), {}),
    "npz": (lambda d, s: _npz(d / "a.npz", **s.arrays), ALL, {}),
    "npz-aliases": (lambda d, s: _npz(d / "a.npz", xyz=s["coord"], rgb=s["color"], label=s["segment"]), XYZ_RGB_L, {}),
    "txt": (lambda d, s: _text(d / "a.txt", s, None, XYZ_RGB_L, " "), XYZ_RGB_L, {}),
    "txt-header": (lambda d, s: _text(d / "a.txt", s, HEADER, ALL, " "), ALL, {}),
    "csv-header": (lambda d, s: _text(d / "a.csv", s, "X,Y,Z,R,G,B,Label", XYZ_RGB_L, ","), XYZ_RGB_L, {}),
    "csv-semicolon": (lambda d, s: _text(d / "a.csv", s, None, XYZ_RGB, ";"), XYZ_RGB, {}),
    "xyz-cloudcompare": (lambda d, s: _text(d / "a.xyz", s, "//X Y Z R G B", XYZ_RGB, " "), XYZ_RGB, {}),
    "las": (lambda d, s: _las(d / "a.las", s), ("coord", "color", "strength", "segment"), {"las_labels": True}),
    "laz": (lambda d, s: _las(d / "a.laz", s), ("coord", "color", "strength"), {}),
    "las-8bit-colors-kept": (lambda d, s: _las(d / "a.las", s, colors16="as-is"), XYZ_RGB, {}),
    "las-16bit-shifted": (lambda d, s: _las(d / "a.las", s, colors16="shift"), XYZ_RGB, {}),
}


def _assert_values(got: Scene, written: Scene, fields, kind: str) -> None:
    """`got` holds `written`'s `fields` with their dtypes, exactly or within what format `kind` stores."""
    las = kind in ("las", "laz")
    for f in fields:
        want = np.clip(written[f], 0, 31) if (las and f == "segment") else written[f]  # classification is uint8
        assert got[f].dtype == written[f].dtype, (kind, f)
        if f == "coord" and las:
            np.testing.assert_allclose(got[f], want, atol=6e-5, err_msg=kind)  # LAS stores 1e-4 steps
        elif f == "strength" and las:
            np.testing.assert_allclose(got[f], want, atol=1 / 65535, err_msg=kind)  # 16-bit intensity
        elif f == "strength" and kind == "pcd.bin":
            np.testing.assert_allclose(got[f], want, rtol=1e-6, err_msg=kind)  # * 255 / 255 in float32
        else:
            np.testing.assert_array_equal(got[f], want, err_msg=f"{kind} {f}")


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_round_trip(case, scene, tmp_path):
    writer, fields, kwargs = ROUND_TRIPS[case]
    path = writer(tmp_path, scene)
    got = read_cloud(path, **kwargs)
    assert got.name == "a" and got.meta["source"] == [str(path)]
    las = case.startswith("la")
    assert set(got.arrays) == set(fields) | ({"strength"} if las else set())  # LAS always carries intensity
    _assert_values(got, scene, fields, "las" if las else case)
    if case == "las":
        assert "segment" not in read_cloud(path)  # LAS classes only on request


# One writer per format read_cloud supports: suffix -> (writer(path, scene) -> file, fields the format holds).
# Column names read_cloud understands (volt.data.ply_cloud), in the order of ALL.
TEXT_COLUMNS = {"coord": ("x", "y", "z"), "color": ("red", "green", "blue"), "normal": ("nx", "ny", "nz"),
                "strength": ("intensity",), "segment": ("label",), "instance": ("instance",)}


def _text_all(path: Path, s: Scene, sep: str) -> Path:
    """Every field of `s`, under the column names read_cloud understands."""
    fields = tuple(f for f in ALL if f in s)
    return _text(path, s, sep.join(name for f in fields for name in TEXT_COLUMNS[f]), fields, sep)


def _npy_plain(path: Path, s: Scene) -> Path:
    """The plain (N, C) layouts: xyz + intensity, or xyz + rgb (+ label)."""
    columns = ("coord", "strength") if "strength" in s else XYZ_RGB_L if "segment" in s else XYZ_RGB
    return _npy(path, _matrix(s, columns))


def _lidar_bin(columns: int) -> Callable[[Path, Scene], Path]:
    def write(path: Path, s: Scene) -> Path:
        raw = s["strength"] * (255.0 if columns == 5 else 1.0)  # nuScenes stores 0..255, KITTI 0..1
        cols = [s["coord"], raw] + ([np.zeros((s.num_points, 1))] if columns == 5 else [])
        np.concatenate(cols, axis=1).astype("<f4").tofile(path)
        return path

    return write


LAS_FIELDS = ("coord", "color", "strength", "segment")
FORMAT_WRITERS: dict[str, tuple[Callable[[Path, Scene], Path], tuple[str, ...]]] = {
    ".ply": (write_ply, ALL),
    ".npy": (_npy_plain, ("coord", "color", "strength", "segment")),
    ".npz": (lambda p, s: _npz(p, **s.arrays), ALL),
    ".txt": (lambda p, s: _text_all(p, s, " "), ALL),
    ".csv": (lambda p, s: _text_all(p, s, ","), ALL),
    ".xyz": (lambda p, s: _text_all(p, s, " "), ALL),
    ".las": (_las, LAS_FIELDS),
    ".laz": (_las, LAS_FIELDS),
    ".pcd.bin": (_lidar_bin(5), ("coord", "strength")),
    ".bin": (_lidar_bin(4), ("coord", "strength")),
    "scene": (lambda p, s: write_scene(s, p), ALL),
}


def test_every_supported_format_has_a_round_trip():
    assert set(FORMAT_WRITERS) == set(SUPPORTED_FORMATS) | {"scene"}


def _format_round_trip(cloud: Scene, suffix: str, tmp_path: Path) -> None:
    """Write the fields of `cloud` the format holds, read them back (LAS classes as labels), compare."""
    writer, holds = FORMAT_WRITERS[suffix]
    kept = Scene("cloud", {f: cloud[f] for f in holds if f in cloud}).validate()
    path = writer(tmp_path / ("cloud" if suffix == "scene" else f"cloud{suffix}"), kept)
    las = suffix in (".las", ".laz")
    got = read_cloud(path, las_labels=las)
    # LAS always carries an intensity, and a classification (read as labels here: las_labels=True)
    assert set(got.arrays) == set(kept.arrays) | ({"strength", "segment"} if las else set()), suffix
    assert got.num_points == kept.num_points
    _assert_values(got, kept, kept.arrays, suffix.lstrip("."))


@pytest.mark.parametrize("suffix", list(FORMAT_WRITERS))
@pytest.mark.parametrize("n", [1, 2, 1000])
def test_edge_sizes_round_trip(suffix, n, tmp_path):
    rng = np.random.default_rng(n)
    normal = rng.normal(size=(n, 3))
    cloud = Scene("cloud", {
        "coord": rng.uniform(-50, 50, (n, 3)),
        "color": rng.integers(0, 256, (n, 3)),
        "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True),
        "segment": rng.integers(0, 20, n),  # >= 0: LAS classification has no -1
        "instance": rng.integers(-1, 5, n),
    }).validate()
    if suffix in (".pcd.bin", ".bin"):
        cloud = Scene("cloud", {"coord": cloud["coord"], "strength": rng.uniform(0, 1, (n, 1))}).validate()
    _format_round_trip(cloud, suffix, tmp_path)


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
REAL_CASES = [(cloud, suffix) for cloud, fields in REAL_FIELDS.items()
              for suffix, (_, holds) in FORMAT_WRITERS.items() if fields & set(holds)]


@pytest.mark.parametrize("cloud, suffix", REAL_CASES)
def test_real_scans_round_trip(real_clouds, cloud, suffix, tmp_path):
    assert set(real_clouds[cloud].arrays) == {"coord"} | REAL_FIELDS[cloud]
    _format_round_trip(real_clouds[cloud], suffix, tmp_path)


def test_scene_folder_and_fmt_override(scene, tmp_path):
    folder = write_scene(Scene("room", dict(scene.arrays), {"dataset": "mine"}), tmp_path / "room")
    got = read_cloud(folder)
    assert got.name == "room" and got.meta["dataset"] == "mine"
    for f in ALL:
        np.testing.assert_array_equal(got[f], scene[f])
    odd = _text(tmp_path / "scan.dat", scene, None, ("coord",), " ")
    np.testing.assert_array_equal(read_cloud(odd, fmt="txt", name="mine")["coord"], scene["coord"])
    assert read_cloud(odd, fmt=".TXT").name == "scan"


def _vertex_ply(
    path: Path, columns: dict[str, np.ndarray], faces: np.ndarray | None = None, text=False, order="="
) -> Path:
    vertex = np.empty(len(next(iter(columns.values()))), dtype=[(k, v.dtype) for k, v in columns.items()])
    for k, v in columns.items():
        vertex[k] = v
    elements = [plyfile.PlyElement.describe(vertex, "vertex")]
    if faces is not None:
        face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
        face["vertex_indices"] = faces
        elements.append(plyfile.PlyElement.describe(face, "face"))
    plyfile.PlyData(elements, text=text, byte_order=order).write(str(path))
    return path


def test_ply_variants(scene, tmp_path):
    xyz64 = scene["coord"].astype(np.float64) + 0.123456789
    cols = {"x": xyz64[:, 0], "y": xyz64[:, 1], "z": xyz64[:, 2]}
    # double coordinates, float 0..1 colors named r/g/b, alpha, a CloudCompare-style label, ushort intensity
    rgbf = scene["color"].astype(np.float32) / 255
    extra = {
        "r": rgbf[:, 0],
        "g": rgbf[:, 1],
        "b": rgbf[:, 2],
        "alpha": np.full(N, 255, np.uint8),
        "scalar_Label": scene["segment"].astype(np.float32),
        "scalar_Intensity": np.arange(N, dtype=np.uint16) * 300,
    }
    faces = np.random.default_rng(1).integers(0, N, size=(50, 3))
    got = read_cloud(_vertex_ply(tmp_path / "d.ply", {**cols, **extra}, faces))
    np.testing.assert_allclose(got["coord"], xyz64, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["color"], scene["color"])
    np.testing.assert_array_equal(got["segment"], scene["segment"])
    np.testing.assert_allclose(got["strength"][:, 0], np.arange(N) * 300 / 65535, rtol=1e-6)
    assert "intensity divided by 65535" in got.meta["conversions"]
    # ascii, big-endian binary and faces give the same points
    for text, order in ((True, "="), (False, ">")):
        again = read_cloud(_vertex_ply(tmp_path / f"t{text}.ply", {**cols, **extra}, faces, text, order))
        for f in got.arrays:
            np.testing.assert_array_equal(again[f], got[f])


def test_value_rules(scene, tmp_path):
    # float rgb in 0..1 (NPY and TXT) is scaled; float rgb already 0..255 is kept
    for cols in (scene["color"] / 255.0, scene["color"].astype(np.float64)):
        np.save(tmp_path / "c.npy", np.concatenate([scene["coord"], cols], axis=1))
        np.testing.assert_array_equal(read_cloud(tmp_path / "c.npy")["color"], scene["color"])
    # intensity: uchar /255, ushort /65535; floats and wide ints /255, /65535 or their max; 0..1 kept
    ramp = np.linspace(0, 1, N)
    for raw, divisor in (
        ((ramp * 255).astype(np.uint8), 255),
        ((ramp * 9000).astype(np.uint16), 65535),
        (ramp * 200, 255),
        ((ramp * 200).astype(np.int64), 255),  # a wide int dtype is judged by its values, not its range
        (ramp * 3000, 65535),
        (ramp * 1e5, 1e5),
        (ramp, 1),
    ):
        np.savez(tmp_path / "i.npz", coord=scene["coord"], intensity=raw)
        np.testing.assert_allclose(read_cloud(tmp_path / "i.npz")["strength"][:, 0], raw / divisor, rtol=1e-6)
    # georeferenced coordinates are shifted before the float32 cast and the shift is recorded
    path = _las(tmp_path / "utm.las", scene, offset=(500000.0, 4000000.0, 100.0))
    got = read_cloud(path)
    offset = np.array(got.meta["coord_offset"])
    np.testing.assert_allclose(got["coord"] + offset, scene["coord"] + [500000.0, 4000000.0, 100.0], atol=2e-4)


def test_write_ply_prediction_colors(scene, tmp_path):
    path = write_ply(tmp_path / "out" / "pred.ply", {"coord": scene["coord"], "color": scene["color"]})
    header = path.read_bytes()[:300]
    assert b"binary_little_endian" in header and b"property uchar red" in header and b"label" not in header
    got = read_cloud(path)
    assert set(got.arrays) == {"coord", "color"}
    assert not list(path.parent.glob(".*"))  # no temporary file left beside it


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "a.npy"
    # np.save appends ".npy" to other names: the temporary file keeps the suffix, so nothing else appears.
    assert atomic_write(target, lambda tmp: np.save(tmp, np.arange(3))) == target
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["a.npy"]
    # The writer creates the file: the usual permissions (umask), not mkstemp's owner-only 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    np.testing.assert_array_equal(np.load(target), np.arange(3))  # the old file is untouched, no debris
    assert [p.name for p in target.parent.iterdir()] == ["a.npy"]
    atomic_write(target, lambda tmp: np.save(tmp, np.ones(2)), durable=True)
    np.testing.assert_array_equal(np.load(target), np.ones(2))


def _truncated_ply(d: Path, s: Scene) -> Path:
    path = write_ply(d / "cut.ply", s)
    path.write_bytes(path.read_bytes()[:-10])
    return path


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# id -> (builder(tmp_path, scene) -> bad file, words the message must contain besides the file name)
BAD_INPUTS = {
    "truncated binary ply": (_truncated_ply, "shorter than its header says"),
    "garbage ply header": (
        lambda d, s: _write(d / "g.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex x\n"),
        "not a readable PLY",
    ),
    "not a ply at all": (lambda d, s: _write(d / "g.ply", b"\x00\xff\x13garbage"), "not a readable PLY"),
    "ply without x": (lambda d, s: _vertex_ply(d / "nox.ply", {"y": s["coord"][:, 1], "z": s["coord"][:, 2]}), "'x'"),
    "ply without vertices": (
        lambda d, s: _write(
            d / "nov.ply", "ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"
        ),
        "vertex",
    ),
    "npy with 5 columns": (lambda d, s: _npy(d / "five.npy", np.zeros((10, 5))), "(10, 5)"),
    "npy 1-D": (lambda d, s: _npy(d / "flat.npy", np.zeros(12)), "(12,)"),
    "txt non-numeric row": (lambda d, s: _write(d / "mid.txt", "1 2 3\n4 5 6\n7 oops 9\n1 1 1\n"), "line 3"),
    "txt ragged row": (lambda d, s: _write(d / "rag.txt", "x,y,z\n1,2,3\n4,5\n"), "line 3"),
    "txt header column count": (lambda d, s: _write(d / "hdr.txt", "x y z label\n1 2 3\n"), "header"),
    "nan coordinate": (lambda d, s: _write(d / "nan.txt", "1 2 3\nnan 1 1\n"), "NaN"),
    "inf coordinate npy": (lambda d, s: _npy(d / "inf.npy", np.array([[1, 2, np.inf]])), "Inf"),
    "empty txt": (lambda d, s: _write(d / "empty.txt", ""), "no points"),
    "only header txt": (lambda d, s: _write(d / "h.csv", "x,y,z\n"), "no points"),
    "empty npy file": (lambda d, s: _write(d / "empty.npy", b""), ".npy"),
    "empty ply file": (lambda d, s: _write(d / "empty.ply", b""), "PLY"),
    "empty cloud npy": (lambda d, s: _npy(d / "zero.npy", np.zeros((0, 3))), "empty"),
    "empty cloud ply": (lambda d, s: _vertex_ply(d / "zero.ply", {k: np.zeros(0, "f4") for k in "xyz"}), "empty"),
    "npz label length": (
        lambda d, s: _npz(d / "bad.npz", coord=s["coord"], segment=s["segment"][:-3]),
        "'segment' has 197 rows",
    ),
    "npz without coord": (lambda d, s: _npz(d / "bad.npz", color=s["color"]), "no coordinates"),
    "label below -1": (lambda d, s: _npz(d / "bad.npz", coord=s["coord"], label=np.full(N, -2)), "below -1"),
    "ply label below -1": (
        lambda d, s: _vertex_ply(
            d / "neg.ply", {**{k: s["coord"][:, i] for i, k in enumerate("xyz")}, "label": np.full(N, -5, np.int32)}
        ),
        "below -1",
    ),
    "non-integer labels": (lambda d, s: _write(d / "frac.txt", "1 2 3 0 0 0 1.5\n"), "non-integer"),
    "16-bit overflow colors": (
        lambda d, s: _npz(d / "bad.npz", coord=s["coord"], color=np.full((N, 3), 70000)),
        "16-bit",
    ),
    "unknown suffix": (lambda d, s: _write(d / "scan.e57", b"x"), ".laz"),
    "folder that is no scene": (lambda d, s: (d / "folder").mkdir() or d / "folder", "coord.npy"),
    "missing file": (lambda d, s: d / "nowhere.ply", "no such file"),
    "binary text file": (lambda d, s: _write(d / "bin.txt", b"\xff\xfe\x00\x81"), "not a text"),
    "corrupt las": (lambda d, s: _write(d / "bad.las", b"LASF" + bytes(50)), "LAS"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_file(case, scene, tmp_path):
    builder, words = BAD_INPUTS[case]
    path = builder(tmp_path, scene)
    with pytest.raises(DataError) as info:
        read_cloud(path)
    message = str(info.value)
    assert path.name in message and words in message, message


def test_bad_fmt_argument(tmp_path):
    path = _write(tmp_path / "a.txt", "1 2 3\n")
    with pytest.raises(DataError, match="unknown format 'e57'"):
        read_cloud(path, fmt="e57")


def test_supported_formats_listed():
    assert {".ply", ".npy", ".npz", ".txt", ".csv", ".las", ".laz", ".pcd.bin", ".bin"} <= set(SUPPORTED_FORMATS)


def test_missing_laspy_names_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "laspy", None)  # makes `import laspy` raise ImportError
    with pytest.raises(MissingExtraError, match=r"volt\[las\]"):
        read_cloud(_write(tmp_path / "a.laz", b""))


def test_laz_without_backend_names_extra(scene, tmp_path, monkeypatch):
    laspy = pytest.importorskip("laspy")
    path = _las(tmp_path / "a.laz", scene)
    monkeypatch.setattr(laspy.LazBackend, "detect_available", staticmethod(lambda: ()))
    with pytest.raises(MissingExtraError, match=r"lazrs.*volt\[las\]"):
        read_cloud(path)


# ---- real scans (skipped without ../shared/data) ------------------------------------------------


def test_real_scannet_mesh(shared_data):
    got = read_cloud(shared_data / SCANNET_PLY)
    assert got.num_points == 81369 and set(got.arrays) == {"coord", "color"}
    assert got.name == "scene0000_00_vh_clean_2"
    assert got["color"].std() > 10 and np.ptp(got["coord"], axis=0).min() > 1  # real colors, metre-sized room


def test_real_scannet_labels_ply(shared_data):
    got = read_cloud(shared_data / "scannet/scene0470_00/scene0470_00_vh_clean_2.labels.ply")
    assert got.num_points == 67465
    assert set(np.unique(got["segment"]).tolist()) == {0, 1, 2, 5, 7, 8, 9, 30, 37, 39}


@pytest.mark.parametrize(
    "relative, module, points",
    [
        (NUSCENES_SWEEP, "volt.data.nuscenes", 34688),
        ("semantic_kitti/sequences/00/velodyne/000000.bin", "volt.data.semantic_kitti", 124668),
    ],
)
def test_real_lidar_bins(shared_data, relative, module, points):
    pytest.importorskip(module, reason=f"{module} (written by another helper) is not there yet")
    got = read_cloud(shared_data / relative)
    assert got.num_points == points and "strength" in got
    assert 0 <= got["strength"].min() and got["strength"].max() <= 1
