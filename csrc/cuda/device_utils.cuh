// Helpers shared by the CUDA kernels of volt::voxelize and volt::patchify: launch sizes, the scene of a
// position, an order-preserving float -> integer map (atomic min/max of coordinates), min/max operators
// for block reductions, and stable cub radix sort / inclusive scan on the current stream with scratch
// memory from torch's caching allocator.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <cstdint>
#include <cstring>

namespace volt {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kTile = kThreads * 8;  // elements per block in the range/bounds kernels

inline unsigned blocks_for(int64_t n, int64_t per_block = kThreads) {
  return unsigned((n + per_block - 1) / per_block);
}

// Smallest s with off[s] > i: the scene of position i (offsets are cumulative ends).
__device__ __forceinline__ int64_t scene_of(const int64_t* off, int64_t num_scenes, int64_t i) {
  int64_t lo = 0, hi = num_scenes;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (off[mid] > i)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Order-preserving map of a non-NaN float/double to a signed integer (for atomicMin/atomicMax).
__device__ __forceinline__ long long ordered(float x) {
  const int i = __float_as_int(x);
  return (long long)(i >= 0 ? i : i ^ 0x7FFFFFFF);
}
__device__ __forceinline__ long long ordered(double x) {
  const long long i = __double_as_longlong(x);
  return i >= 0 ? i : i ^ 0x7FFFFFFFFFFFFFFFLL;
}
template <typename T>
T from_ordered(long long v);
template <>
inline float from_ordered<float>(long long v) {
  int i = int(v);
  i = i >= 0 ? i : i ^ 0x7FFFFFFF;
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
template <>
inline double from_ordered<double>(long long v) {
  v = v >= 0 ? v : v ^ 0x7FFFFFFFFFFFFFFFLL;
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}

struct MinOp {
  __device__ long long operator()(long long a, long long b) const { return b < a ? b : a; }
};
struct MaxOp {
  __device__ long long operator()(long long a, long long b) const { return b > a ? b : a; }
};

// Stable sort of (key, value) pairs by the key's bits [0, end_bit).
template <typename K>
void sort_pairs(const K* kin, K* kout, const int64_t* vin, int64_t* vout, int64_t n, int end_bit,
                const at::TensorOptions& opt, cudaStream_t stream) {
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, kin, kout, vin, vout, int(n), 0, end_bit, stream));
  at::Tensor tmp = at::empty({int64_t(bytes)}, opt.dtype(at::kByte));
  C10_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(tmp.data_ptr(), bytes, kin, kout, vin, vout, int(n), 0, end_bit, stream));
}

// out[j] = in[0] + ... + in[j].
inline void inclusive_sum(const int32_t* in, int32_t* out, int64_t n, const at::TensorOptions& opt,
                          cudaStream_t stream) {
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, bytes, in, out, int(n), stream));
  at::Tensor tmp = at::empty({int64_t(bytes)}, opt.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(tmp.data_ptr(), bytes, in, out, int(n), stream));
}

}  // namespace cuda
}  // namespace volt
