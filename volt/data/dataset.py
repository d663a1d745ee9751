"""SceneDataset: the scenes of one split of a processed dataset, as dicts of numpy arrays."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volt.data.io import is_scene_dir, read_scene
from volt.errors import DataError


class SceneDataset:
    """`root/split/<scene>/` folders written by the preprocessors.

    Each item is a dict with the requested fields (numpy arrays) plus `name`; `transform`, when given,
    is applied to that dict. `rename` maps a stored field to the key the pipeline expects, e.g.
    {"segment200": "segment"} for ScanNet200.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | Sequence[str],
        fields: Sequence[str] | None = None,
        rename: dict[str, str] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ):
        self.root = Path(root)
        splits = [split] if isinstance(split, str) else list(split)
        self.scene_dirs: list[Path] = []
        for s in splits:
            d = self.root / s
            if not d.is_dir():
                raise DataError(d, f"split folder '{s}' does not exist under {self.root}")
            self.scene_dirs += sorted(p for p in d.iterdir() if is_scene_dir(p))
        if not self.scene_dirs:
            raise DataError(self.root, f"no processed scenes found in split(s) {splits}")
        self.fields = list(fields) if fields is not None else None
        self.rename = dict(rename or {})
        self.transform = transform

    def __len__(self) -> int:
        return len(self.scene_dirs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = read_scene(self.scene_dirs[index], self.fields)
        item: dict[str, Any] = {self.rename.get(k, k): v for k, v in scene.arrays.items()}
        item["name"] = scene.name
        return self.transform(item) if self.transform is not None else item

    def names(self) -> list[str]:
        return [p.name for p in self.scene_dirs]

    @staticmethod
    def class_names(scene_dir: str | os.PathLike, field: str) -> list[str]:
        """Class names of a label field, from a scene's meta.json."""
        meta = read_scene(scene_dir, ["coord"]).meta
        return list(meta.get("classes", {}).get(field, []))


def as_float_features(item: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    """Concatenate per-point fields into one float32 feature matrix (colors scaled to [0, 1])."""
    parts = []
    for k in keys:
        a = item[k]
        parts.append(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32).reshape(len(a), -1))
    return np.concatenate(parts, axis=1)
