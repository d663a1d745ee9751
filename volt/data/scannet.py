"""ScanNet v2: raw scene folders -> `Scene`, and the preprocessing run over the official splits.

Inputs per scene (`scans/<scene>/`, VOLT_SPEC.md section 3.1): `<scene>_vh_clean_2.ply` (the mesh; each
vertex is a point), and for annotated scenes `<scene>_vh_clean_2.0.010000.segs.json` (per-vertex
over-segment ids) and `<scene>.aggregation.json` (object groups of segments with a raw category).
Test scenes (`scans_test/`) have the mesh only. Labels go through `scannetv2-labels.combined.tsv`.

Output `Scene` fields: coord, color, normal, superpoint (contiguous 0..S-1: annotated scenes in sorted
segs.json segment-id order; test scenes computed from the mesh by `volt.ops.superpoint.mesh_superpoints`,
ScanNet's segmentator parameters, meta "superpoint_source": "mesh"); annotated scenes also instance (the
aggregation group `id`, every group including wall/floor; a later group wins where groups share segments;
-1 unannotated), segment20 and segment200 (-1 ignore).
`prepare_scannet` writes `<out>/<split>/<scene>/` folders through `volt.data.prepare.run_jobs`.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.ply_mesh import read_ply_mesh, vertex_normals
from volt.data.prepare import Job, Summary, run_jobs
from volt.data.scannet_classes import CLASS_NAMES_20, CLASS_NAMES_200, VALID_CLASS_IDS_20, VALID_CLASS_IDS_200
from volt.data.scene import Scene
from volt.errors import DataError

TSV_COLUMNS = ("id", "raw_category", "nyu40id")
LabelMap = dict[str, tuple[int, int]]


class UnmappedLabelWarning(UserWarning):
    """A scene's aggregation uses raw categories that the label tsv lacks (they become ignore)."""


def load_label_map(tsv_path: str | os.PathLike) -> LabelMap:
    """raw_category -> (ScanNet-20 index or -1, ScanNet200 index or -1) from `scannetv2-labels.combined.tsv`."""
    path = Path(tsv_path)
    if not path.is_file():
        raise DataError(path, "label map (.tsv) not found")
    index20 = {nyu: i for i, nyu in enumerate(VALID_CLASS_IDS_20)}
    index200 = {cid: i for i, cid in enumerate(VALID_CLASS_IDS_200)}
    out: LabelMap = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            missing = [c for c in TSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(path, f"not a ScanNet label tsv: missing column(s) {missing}")
            for line, row in enumerate(reader, start=2):
                try:
                    cid, nyu = int(row["id"]), int(row["nyu40id"])
                except (TypeError, ValueError):
                    raise DataError(path, f"line {line}: 'id'/'nyu40id' must be integers, got "
                                          f"{row.get('id')!r}/{row.get('nyu40id')!r}") from None
                out[row["raw_category"]] = (index20.get(nyu, -1), index200.get(cid, -1))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot be read as a tab-separated label map ({exc})") from exc
    if not out:
        raise DataError(path, "the label map has no rows")
    return out


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot be read as JSON ({exc})") from exc


def _seg_indices(path: Path, num_vertices: int) -> np.ndarray:
    data = _load_json(path)
    seg = data.get("segIndices") if isinstance(data, dict) else None
    if not isinstance(seg, list):
        raise DataError(path, "has no 'segIndices' list")
    try:
        seg = np.asarray(seg, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(path, "'segIndices' must hold integers") from None
    if seg.ndim != 1 or seg.shape[0] != num_vertices:
        raise DataError(path, f"'segIndices' has {seg.size} entries but the mesh has {num_vertices} vertices")
    return seg


def _seg_groups(path: Path) -> list[tuple[int, list[int], str]]:
    data = _load_json(path)
    groups = data.get("segGroups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise DataError(path, "has no 'segGroups' list")
    out = []
    for i, g in enumerate(groups):
        try:
            out.append((int(g["id"]), [int(s) for s in g["segments"]], str(g["label"])))
        except (KeyError, TypeError, ValueError):
            raise DataError(path, f"segGroups[{i}] needs an integer 'id', a 'segments' id list and a 'label'") from None
    return out


def read_scannet_scene(scene_dir: str | os.PathLike, label_map: Mapping[str, tuple[int, int]],
                       name: str | None = None) -> Scene:
    """Read one raw ScanNet scene folder (annotated or test-only) into a validated `Scene`."""
    folder = Path(scene_dir)
    name = name or folder.name
    if not folder.is_dir():
        raise DataError(folder, "scene folder not found")
    mesh_path = folder / f"{name}_vh_clean_2.ply"
    segs_path = folder / f"{name}_vh_clean_2.0.010000.segs.json"
    agg_path = folder / f"{name}.aggregation.json"
    mesh = read_ply_mesh(mesh_path)
    if mesh.color is None:
        raise DataError(mesh_path, "vertices have no red/green/blue colors")
    arrays = {"coord": mesh.coord, "color": mesh.color, "normal": vertex_normals(mesh.coord, mesh.faces)}

    has_segs, has_agg = segs_path.is_file(), agg_path.is_file()
    if has_segs != has_agg:  # half an annotation is a broken download, not a test scene
        present, absent = (segs_path, agg_path) if has_segs else (agg_path, segs_path)
        raise DataError(absent, f"not found, but {present.name} is (annotated scenes need both)")
    meta: dict[str, Any] = {
        "dataset": "scannet",
        "classes": {"segment20": list(CLASS_NAMES_20), "segment200": list(CLASS_NAMES_200)},
        "source": [mesh_path.name],
    }
    if has_segs:
        unmapped: list[str] = []
        seg = _seg_indices(segs_path, mesh.coord.shape[0])
        groups = _seg_groups(agg_path)
        arrays["superpoint"] = np.unique(seg, return_inverse=True)[1].reshape(-1)
        instance = np.full(seg.shape, -1, dtype=np.int32)
        segment20 = np.full(seg.shape, -1, dtype=np.int32)
        segment200 = np.full(seg.shape, -1, dtype=np.int32)
        for gid, segments, label in groups:  # in file order, so a later group overwrites shared vertices
            if label not in label_map and label not in unmapped:
                unmapped.append(label)
            mask = np.isin(seg, segments)
            instance[mask] = gid
            segment20[mask], segment200[mask] = label_map.get(label, (-1, -1))
        arrays.update(instance=instance, segment20=segment20, segment200=segment200)
        meta["source"] += [segs_path.name, agg_path.name]
        if unmapped:  # only an aggregation names raw categories
            warnings.warn(f"{name}: raw categories missing from the label map, mapped to ignore: {unmapped}",
                          UnmappedLabelWarning, stacklevel=2)
            meta["unmapped_labels"] = unmapped
    else:  # a test scene: superpoints from the mesh, as ScanNet's segmentator makes segs.json
        from volt.ops.superpoint import mesh_superpoints

        arrays["superpoint"] = mesh_superpoints(mesh.coord, mesh.faces).astype(np.int32)
        meta["superpoint_source"] = "mesh"  # not shipped: computed by volt.ops.superpoint
    scene = Scene(name=name, arrays=arrays, meta=meta)
    return scene.validate(source=str(mesh_path), num_classes={"segment20": 20, "segment200": 200})


def _check_scene_name(name: str, where: str | os.PathLike | None, context: str) -> str:
    # A scene name becomes an output folder name: keep it from pointing anywhere else.
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(where, f"{context}{name!r} is not a scene name")
    return name


def read_split_file(path: str | os.PathLike) -> list[str]:
    """Scene names from an official split list (one per line; blank lines and '#' comments skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"split file cannot be read ({exc})") from exc
    names = []
    for i, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        names.append(_check_scene_name(line, path, f"line {i}: "))
    return names


def prepare_scannet(
    raw_root: str | os.PathLike,
    out_root: str | os.PathLike,
    label_tsv: str | os.PathLike,
    splits: Mapping[str, Sequence[str] | str | os.PathLike] | None = None,
    test_root: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Preprocess raw ScanNet scenes into `<out_root>/<split>/<scene>/` folders.

    `splits` maps a split name to scene names or to a split file (`scannetv2_{train,val,test}.txt`);
    `None` sends every scene folder in `raw_root` to `train`. Scenes of the `test` split are read from
    `test_root` (ScanNet's `scans_test/`) when given. A scene that is missing or unreadable is a failure
    in the returned summary; the other scenes are still written.
    """
    raw_root, out_root = Path(raw_root), Path(out_root)
    label_map = load_label_map(label_tsv)  # a bad tsv would fail every scene: stop here instead
    if splits is None:
        if not raw_root.is_dir():
            raise DataError(raw_root, "raw ScanNet folder (scans/) not found")
        splits = {"train": sorted(p.name for p in raw_root.iterdir() if p.is_dir() and not p.name.startswith("."))}
    jobs = []
    for split, scenes in splits.items():
        if isinstance(scenes, (str, os.PathLike)):
            names = read_split_file(scenes)
        else:
            names = [_check_scene_name(str(n), None, f"split '{split}': ") for n in scenes]
        root = Path(test_root) if split == "test" and test_root is not None else raw_root
        for scene in dict.fromkeys(names):  # de-duplicated, order kept
            read = partial(read_scannet_scene, root / scene, label_map, scene)
            jobs.append(Job(name=f"{split}/{scene}", out_dir=out_root / split / scene, read=read))
    return run_jobs(jobs, overwrite=overwrite, desc="scannet", progress=progress)
