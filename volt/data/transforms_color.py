"""Colour transforms of the training pipelines (spec §1.6): auto-contrast, translation, jitter and the final
scaling to [0, 1]. Re-exported by volt.data.transforms.

Inputs/outputs: a sample dict with `color` (N,3) (uint8 from the scene files, or float32 after an earlier
colour transform); colours become float32 in [0, 255] at the first colour transform and [0, 1] after
`NormalizeColor`. Each transform is `t(data, rng) -> data`, draws only from `rng` and writes new arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volt.data.transforms_base import RandomApply, Sample, bounds
from volt.errors import DataError


def color_of(data: Sample) -> np.ndarray:
    """A new float32 copy of data["color"] in [0, 255], or DataError when the sample has no colour."""
    if "color" not in data:
        raise DataError(data.get("name"), "a colour transform needs a 'color' field")
    return data["color"].astype(np.float32)


@dataclass
class ChromaticAutoContrast(RandomApply):
    """With prob p stretch each channel's [min, max] to [0, 255] and blend with the original by U(0,1)."""

    p: float = 0.2
    blend_factor: float | None = None

    def apply(self, data: Sample, rng: np.random.Generator) -> Sample:
        color = color_of(data)
        lo, hi = bounds(color)
        span = hi - lo
        scale = np.where(span > 0, 255 / np.maximum(span, 1e-6), 1).astype(np.float32)  # flat channel: unchanged
        contrast = np.where(span > 0, (color - lo) * scale, color)
        blend = rng.random() if self.blend_factor is None else self.blend_factor
        data["color"] = np.clip((1 - blend) * color + blend * contrast, 0, 255).astype(np.float32)
        return data


@dataclass
class ChromaticTranslation(RandomApply):
    """With prob p add one RGB offset U(-0.5, 0.5)·255·2·ratio to every point, clipped to [0, 255]."""

    p: float = 0.95
    ratio: float = 0.05

    def apply(self, data: Sample, rng: np.random.Generator) -> Sample:
        shift = (rng.random(3, dtype=np.float32) - 0.5) * 255 * 2 * self.ratio
        data["color"] = np.clip(color_of(data) + shift, 0, 255)
        return data


@dataclass
class ChromaticJitter(RandomApply):
    """With prob p add per-point Gaussian RGB noise with σ = std·255, clipped to [0, 255]."""

    p: float = 0.95
    std: float = 0.05

    def apply(self, data: Sample, rng: np.random.Generator) -> Sample:
        color = color_of(data)
        noise = rng.standard_normal(color.shape, dtype=np.float32) * np.float32(self.std * 255)
        data["color"] = np.clip(color + noise, 0, 255)
        return data


@dataclass
class NormalizeColor:
    """color / 255 as float32."""

    def __call__(self, data: Sample, rng: np.random.Generator) -> Sample:
        if "color" in data:
            data["color"] = color_of(data) / np.float32(255)
        return data
