"""Class and instance colours: one (C, 3) uint8 palette per label space, and labels -> per-point RGB.

ScanNet-20 uses the ScanNet benchmark's customary colours and nuScenes-16 the nuscenes-devkit lidarseg
colours (the merged classes take the colour of their main fine class: bus <- bus.rigid, pedestrian <-
adult). Any other label space gets a deterministic palette of well-separated hues.
Inputs: a class count or class names (+ optional dataset name); outputs: uint8 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from volt.data.nuscenes import CLASS_NAMES_16
from volt.data.scannet_classes import CLASS_NAMES_20

IGNORE_COLOR = (128, 128, 128)

# In CLASS_NAMES_20 order (wall, floor, cabinet, ... otherfurniture).
SCANNET20_COLORS = (
    (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34), (140, 86, 75),
    (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189), (196, 156, 148), (23, 190, 207),
    (247, 182, 210), (219, 219, 141), (255, 127, 14), (158, 218, 229), (44, 160, 44), (112, 128, 144),
    (227, 119, 194), (82, 84, 163),
)  # fmt: skip
# In CLASS_NAMES_16 order (barrier, bicycle, bus, car, ... vegetation).
NUSCENES16_COLORS = (
    (112, 128, 144), (220, 20, 60), (255, 69, 0), (255, 158, 0), (233, 150, 70), (255, 61, 99), (0, 0, 230),
    (47, 79, 79), (255, 140, 0), (255, 99, 71), (0, 207, 191), (175, 0, 75), (75, 0, 75), (112, 180, 60),
    (222, 184, 135), (0, 175, 0),
)  # fmt: skip
DATASET_COLORS: dict[str, tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]] = {
    "scannet": (CLASS_NAMES_20, SCANNET20_COLORS),
    "nuscenes": (CLASS_NAMES_16, NUSCENES16_COLORS),
}


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (all in [0, 1]) -> RGB uint8, (K, 3)."""
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    rgb = table[i, np.arange(len(h))]  # (K, 3)
    return np.round(rgb * 255).astype(np.uint8)


def generic_palette(num: int) -> np.ndarray:
    """`num` deterministic, well-separated colours: golden-ratio hue steps, alternating saturation/value
    so that neighbouring indices also differ in brightness."""
    k = np.arange(num, dtype=np.float64)
    hue = (0.07 + k * 0.618033988749895) % 1.0
    sat = np.array([0.85, 0.55, 0.95])[np.arange(num) % 3]
    val = np.array([0.95, 0.80, 0.62])[(np.arange(num) // 3) % 3]
    return _hsv_to_rgb(hue, sat, val)


def palette(num_classes_or_names: int | Sequence[str], dataset: str | None = None) -> np.ndarray:
    """(C, 3) uint8 class colours.

    Customary colours when `dataset` is "scannet"/"nuscenes" and C matches that label space (or when the
    class names given are exactly that dataset's names); otherwise `generic_palette(C)`.
    """
    if isinstance(num_classes_or_names, (int, np.integer)):
        num, names = int(num_classes_or_names), None
    else:
        names = tuple(str(n) for n in num_classes_or_names)
        num = len(names)
    if num < 0:
        raise ValueError(f"palette: number of classes must be >= 0, got {num}")
    for key, (known_names, colors) in DATASET_COLORS.items():
        if (dataset == key and num == len(colors)) or (names is not None and names == known_names):
            return np.asarray(colors, dtype=np.uint8)
    return generic_palette(num)


def color_labels(
    labels: np.ndarray, palette: np.ndarray, ignore_color: tuple[int, int, int] = IGNORE_COLOR
) -> np.ndarray:
    """(N,) int labels -> (N, 3) uint8; labels < 0 or >= C (ignore / out of range) get `ignore_color`."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    table = np.concatenate([np.asarray(palette, dtype=np.uint8).reshape(-1, 3), np.asarray([ignore_color], np.uint8)])
    idx = np.where((labels >= 0) & (labels < len(table) - 1), labels, len(table) - 1)
    return table[idx]


def instance_colors(instance: np.ndarray, ignore_color: tuple[int, int, int] = IGNORE_COLOR) -> np.ndarray:
    """(N,) instance ids -> (N, 3) uint8. Each id keeps its colour whatever other ids are present (a
    97-colour generic palette is indexed by id mod 97, and consecutive ids are golden-ratio hue steps apart);
    ids < 0 (no instance) get `ignore_color`."""
    instance = np.asarray(instance).reshape(-1).astype(np.int64)
    table = generic_palette(97)
    out = table[instance % 97]
    out[instance < 0] = ignore_color
    return out
