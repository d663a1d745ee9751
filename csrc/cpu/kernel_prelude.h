// Shared first include of the CPU voxelize and patchify kernels (csrc/cpu/voxelize.cpp, csrc/cpu/patchify.cpp).
// It must come before any other header, in the .cpp itself: the pragma below then covers every function
// of that file, headers included (so inlining is not blocked by differing flags). Their hot loops select
// between floats (floor, min/max), which GCC vectorizes only when it may ignore floating-point exception
// flags; volt never reads them, and results are unchanged. Also brings in the headers and names both use.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common.h"
#include "cpu/radix_sort.h"

namespace volt {
namespace cpu {
using at::Tensor;
}  // namespace cpu
}  // namespace volt
