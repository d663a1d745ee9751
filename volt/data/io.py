"""Processed scene folders: one `.npy` per field plus `meta.json`, written atomically; `atomic_write` does
the same for any single file.

Layout (see data/README.md): `<root>/<split>/<scene>/{coord,color,normal,segment20,...}.npy` and
`meta.json` = {"name", "dataset", "classes": {field: [names]}, "source": [files], ...}.
A scene folder is first written to a hidden temporary sibling and then renamed into place, so an
interrupted run never leaves a half-written scene behind and never damages a finished one.
`atomic_write(path, write_fn)` gives one file the same guarantee: `write_fn` writes a hidden temporary
sibling, which then replaces `path` in one rename.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from volt.data.scene import Scene
from volt.errors import DataError

META_FILE = "meta.json"


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], object], durable: bool = False) -> Path:
    """Write one file so that readers see the old file or the complete new one, never a half-written one.

    `write_fn(tmp)` writes a hidden sibling `.<name>.<random>.tmp<suffix>` (same folder, so the rename cannot
    cross file systems; same suffix, so writers that append one, like `np.save`, keep the name), which then
    replaces `path`. On any error the temporary file is removed and `path` is left untouched. `durable`
    also flushes the data to disk before the rename (for files a crash must not lose, e.g. checkpoints).
    The parent folder is created. Returns `path` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name rather than mkstemp: the writer creates the file, so it gets the usual (umask) permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        write_fn(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when something failed
    return path


def checked_record_count(path: str | os.PathLike, record_bytes: int, what: str) -> int:
    """Records in a flat binary file (e.g. LiDAR points), or DataError for a missing, empty or ragged file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(path, f"{what} file is empty (0 bytes)")
    if size % record_bytes:
        raise DataError(path, f"size {size} bytes is not a multiple of {record_bytes} bytes per point (truncated?)")
    return size // record_bytes


def is_scene_dir(path: str | os.PathLike) -> bool:
    """A finished scene folder has coord.npy and meta.json."""
    p = Path(path)
    return (p / "coord.npy").is_file() and (p / META_FILE).is_file()


def write_scene(scene: Scene, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `scene` to `out_dir` atomically. Raises FileExistsError if it exists and not `overwrite`."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: scene folder already exists (use overwrite=True / --overwrite)")
    scene.validate()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, arr in scene.arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        meta = {"name": scene.name, **scene.meta, "fields": sorted(scene.arrays), "num_points": scene.num_points}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if out.exists():
            # Swap: move the old folder aside first so the new one appears in one rename.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_scene(scene_dir: str | os.PathLike, fields: Iterable[str] | None = None) -> Scene:
    """Read a processed scene folder (all fields, or only `fields`; missing requested fields error)."""
    d = Path(scene_dir)
    if not d.is_dir():
        raise DataError(d, "not a folder")
    meta_path = d / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    available = sorted(p.stem for p in d.glob("*.npy"))
    wanted = list(fields) if fields is not None else available
    missing = [f for f in wanted if f not in available]
    if missing:
        raise DataError(d, f"missing field(s) {missing}; the folder has {available}")
    arrays = {}
    for name in wanted:
        try:
            arrays[name] = np.load(d / f"{name}.npy", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(d / f"{name}.npy", f"cannot be read as a .npy array ({exc})") from exc
    name = meta.pop("name", d.name)
    for key in ("fields", "num_points"):
        meta.pop(key, None)
    return Scene(name=name, arrays=arrays, meta=meta).validate(source=str(d))
