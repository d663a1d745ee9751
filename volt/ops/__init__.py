"""Custom ops with a C++/CUDA extension and a pure-PyTorch reference that defines their result."""

from volt.ops._ext import ext_info

__all__ = ["ext_info"]
