"""Builds the C++/CUDA extension `volt._C` from csrc/ (metadata lives in pyproject.toml).

Switches: VOLT_BUILD_EXT=0 skips the extension; VOLT_FORCE_CUDA=1 compiles the CUDA kernels even
when no GPU is visible (nvcc must be present). Without a C++ compiler the package installs without
the extension and `volt.ops` uses its pure-PyTorch reference (reported by `volt.ops.ext_info()`).
Use `pip install --no-build-isolation -e .` so the build uses the torch you already have.
"""

import glob
import os
import shutil
import sys

from setuptools import setup


def _extensions():
    if os.environ.get("VOLT_BUILD_EXT", "1") == "0":
        print("volt: VOLT_BUILD_EXT=0, not building the C++ extension", file=sys.stderr)
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        print("volt: no C++ compiler found, not building the C++ extension", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    root = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    force_cuda = os.environ.get("VOLT_FORCE_CUDA", "0") == "1"
    with_cuda = bool(cuda_sources) and CUDA_HOME is not None and torch.version.cuda is not None and (
        torch.cuda.is_available() or force_cuda
    )
    cxx = ["-O3", "-std=c++17"]
    openmp = sys.platform.startswith("linux")
    if openmp:
        cxx.append("-fopenmp")
    args = {"cxx": cxx}
    ext_cls = CppExtension
    define_macros = []
    if with_cuda:
        ext_cls = CUDAExtension
        sources += cuda_sources
        args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-std=c++17"]
        define_macros.append(("WITH_CUDA", None))
    ext = ext_cls(
        "volt._C",
        sources,
        include_dirs=[os.path.join(root, "csrc")],
        extra_compile_args=args,
        extra_link_args=["-fopenmp"] if openmp else [],
        define_macros=define_macros,
    )
    print(f"volt: building the extension ({'CPU+CUDA' if with_cuda else 'CPU'})", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
