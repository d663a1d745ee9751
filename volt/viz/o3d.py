"""Optional native window: the scene in an open3d viewer, keys 1-9 switching the colouring.

Never required: `open3d_unavailable()` says why the window cannot open (open3d not installed, or no display),
and callers fall back to the HTML viewer. open3d is imported only inside `show_open3d`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping

import numpy as np

from volt.errors import require


def open3d_unavailable() -> str | None:
    """None when an open3d window can open here, else the reason it cannot."""
    if importlib.util.find_spec("open3d") is None:
        return "open3d is not installed (pip install open3d)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    return None


def show_open3d(
    coord: np.ndarray, layers: Mapping[str, np.ndarray], title: str = "volt", normal: np.ndarray | None = None
) -> None:
    """Open a window on the points coloured by the first layer; keys 1..9 pick layers in order. Blocks until
    the window is closed."""
    o3d = require("open3d", "viz", "The open3d viewer window")
    keys = list(layers)[:9]
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(coord, dtype=np.float64)))
    if normal is not None:
        cloud.normals = o3d.utility.Vector3dVector(np.asarray(normal, dtype=np.float64))

    def use(key: str) -> None:
        cloud.colors = o3d.utility.Vector3dVector(np.asarray(layers[key], dtype=np.float64) / 255.0)

    use(keys[0])
    vis = o3d.visualization.VisualizerWithKeyCallback()
    vis.create_window(window_name=title)
    vis.add_geometry(cloud)
    for i, key in enumerate(keys):
        def switch(v, key=key):  # open3d passes the visualizer; True asks for a redraw
            use(key)
            v.update_geometry(cloud)
            return True

        vis.register_key_callback(ord(str(i + 1)), switch)
    print("open3d window: " + ", ".join(f"{i + 1} = {k}" for i, k in enumerate(keys)) + "; close it to go on")
    vis.run()
    vis.destroy_window()
