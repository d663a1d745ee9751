"""Pictures of scenes and results, headless: nothing here needs a display, a GPU or OpenGL.

- `palette`: class/instance colours (ScanNet-20 and nuScenes-16 customary colours, else a generic palette);
- `render`: NumPy z-buffered rasterizer and the side-by-side panel PNG (gt | pred | errors | instances);
- `charts`: per-class IoU bars, normalized confusion heat map, training curves;
- `html` (+ `viewer_page`): one self-contained WebGL/2D-canvas viewer page per scene;
- `pictures`: scene folder / metrics.json / run folder -> all of the above (`demo_pictures`);
- `o3d`: an optional open3d window;
- `figure`: the Agg matplotlib figure and PNG saving that `render` and `charts` share.
Only NumPy is imported here; matplotlib (the `viz` extra) is imported inside the functions that draw.
"""

from volt.viz.palette import IGNORE_COLOR, color_labels, generic_palette, instance_colors, palette

__all__ = ["IGNORE_COLOR", "color_labels", "generic_palette", "instance_colors", "palette"]
