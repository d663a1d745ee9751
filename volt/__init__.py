"""volt: the Volume Transformer toolkit for 3D point-cloud segmentation.

The package is importable without any optional dependency; heavy extras (spconv, flash-attn,
open3d, laspy) are imported lazily by the functions that need them.
"""

__version__ = "0.1.0"
