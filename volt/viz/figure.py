"""The matplotlib figure every PNG here is drawn on, and its saving: shared by `charts` and `render`.

`agg_figure(width, height, dpi, purpose)` -> a Figure (inches) on its own Agg canvas: no display and no global
pyplot state, so drawing works headless and from threads. `save_figure(fig, out_path, dpi)` writes it as a
PNG on white, creating the folder, and returns the path. matplotlib (the `viz` extra) is imported here, lazily;
`purpose` names what needed it when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from volt.errors import require


def agg_figure(width: float, height: float, dpi: int = 100, purpose: str = "Drawing charts") -> Any:
    """A matplotlib Figure of `width` x `height` inches at `dpi`, on an Agg canvas."""
    require("matplotlib", "viz", purpose)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    return fig


def save_figure(fig: Any, out_path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Write `fig` to `out_path` (white background; `dpi` defaults to the figure's) and return the path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor="white", **({"dpi": dpi} if dpi is not None else {}))
    return out
