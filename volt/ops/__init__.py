"""Custom ops with a C++/CUDA extension and a pure-PyTorch reference that defines their result."""

from volt.ops._ext import ext_info
from volt.ops.kernel_map import KernelMap, downsample_map, inverse_map, submanifold_map
from volt.ops.patchify import TokenLayout, patchify
from volt.ops.sparse_conv import sparse_conv
from volt.ops.voxelize import Voxels, voxelize

__all__ = ["KernelMap", "TokenLayout", "Voxels", "downsample_map", "ext_info", "inverse_map", "patchify", "sparse_conv",
           "submanifold_map", "voxelize"]
