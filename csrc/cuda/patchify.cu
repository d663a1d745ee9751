// CUDA kernel of volt::patchify (schema in csrc/volt.cpp; semantics = volt/ops/patchify.py reference,
// identical outputs to the CPU kernel). Input: grid_coord (V,3) int32/int64, scene (V,) int64 in
// [0, num_scenes), patch_size P >= 1. Output: patch_coord (T,3) int32, token_scene (T,), voxel2token (V,),
// slot (V,), cu_seqlens (num_scenes+1,) int32. Tokens = distinct (scene, px, py, pz), p = floor(g / P),
// in lexicographic order. Steps: field ranges (block reductions + atomics), bit-packed keys (one 64-bit
// word unless the ranges need more; then one stable cub sort per word, least significant first), token
// flags + scan, then per-voxel and per-scene kernels. Two small device->host copies synchronize.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <climits>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"
#include "cuda/device_utils.cuh"

namespace volt {
namespace cuda {
namespace {

using at::Tensor;
using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// r = [min scene, min gx, min gy, min gz, max scene, max gx, max gy, max gz] over all voxels.
template <typename I>
__global__ void ranges_kernel(const I* __restrict__ g, const int64_t* __restrict__ scene, int64_t V, long long* r) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t t0 = int64_t(blockIdx.x) * kTile, t1 = min(V, t0 + kTile);
  long long lo[4], hi[4];
  for (int f = 0; f < 4; ++f) lo[f] = LLONG_MAX, hi[f] = LLONG_MIN;
  for (int64_t i = t0 + threadIdx.x; i < t1; i += kThreads)
    for (int f = 0; f < 4; ++f) {
      const long long x = f == 0 ? (long long)scene[i] : (long long)g[3 * i + f - 1];
      lo[f] = x < lo[f] ? x : lo[f];
      hi[f] = x > hi[f] ? x : hi[f];
    }
  for (int f = 0; f < 4; ++f) {
    const long long mn = Reduce(tmp).Reduce(lo[f], MinOp());
    __syncthreads();
    const long long mx = Reduce(tmp).Reduce(hi[f], MaxOp());
    __syncthreads();
    if (threadIdx.x == 0) {
      atomicMin(r + f, mn);
      atomicMax(r + 4 + f, mx);
    }
  }
}

// Token fields of voxel i (scene, px, py, pz), each minus its minimum, and the slot.
struct Fields {
  long long lo[4];
  int bits[4];
  long long P;
};

template <typename I>
__device__ __forceinline__ void fields_of(const I* g, const int64_t* scene, int64_t i, const Fields& f, uint64_t out[4]) {
  out[0] = uint64_t(scene[i] - f.lo[0]);
  for (int a = 0; a < 3; ++a) out[a + 1] = uint64_t(floor_div(int64_t(g[3 * i + a]), f.P) - f.lo[a + 1]);
}

// Key of word [w0, w1] of the fields of voxel in[j] (or j), packed most significant first.
template <typename I>
__global__ void word_keys_kernel(const I* __restrict__ g, const int64_t* __restrict__ scene, int64_t V, Fields f,
                                 int w0, int w1, const int64_t* __restrict__ in, uint64_t* keys, int64_t* idx) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= V) return;
  const int64_t i = in ? in[j] : j;
  uint64_t fl[4];
  fields_of(g, scene, i, f, fl);
  uint64_t k = 0;
  for (int q = w0; q <= w1; ++q) k = f.bits[q] ? (k << f.bits[q]) | fl[q] : k;
  keys[j] = k;
  idx[j] = i;
}

template <typename I>
__global__ void slot_kernel(const I* __restrict__ g, int64_t V, long long P, int64_t* slot) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= V) return;
  int64_t o[3];
  for (int a = 0; a < 3; ++a) o[a] = floor_mod(int64_t(g[3 * i + a]), P);
  slot[i] = (o[0] * P + o[1]) * P + o[2];
}

// flag[j] = 1 where sorted position j starts a token (its fields differ from position j-1's).
template <typename I>
__global__ void token_flags_kernel(const I* __restrict__ g, const int64_t* __restrict__ scene, int64_t V, Fields f,
                                   const int64_t* __restrict__ order, int32_t* flags) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= V) return;
  if (j == 0) {
    flags[0] = 1;
    return;
  }
  uint64_t a[4], b[4];
  fields_of(g, scene, order[j], f, a);
  fields_of(g, scene, order[j - 1], f, b);
  flags[j] = a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || a[3] != b[3];
}

template <typename I>
__global__ void tokens_kernel(const I* __restrict__ g, const int64_t* __restrict__ scene, int64_t V, long long P,
                              const int64_t* __restrict__ order, const int32_t* __restrict__ flags,
                              const int32_t* __restrict__ tid, int64_t* voxel2token, int32_t* patch_coord,
                              int64_t* token_scene) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= V) return;
  const int64_t i = order[j], t = tid[j] - 1;
  voxel2token[i] = t;
  if (!flags[j]) return;
  token_scene[t] = scene[i];
  for (int a = 0; a < 3; ++a) patch_coord[3 * t + a] = int32_t(floor_div(int64_t(g[3 * i + a]), P));
}

// cu_seqlens[s] = number of tokens of scenes < s (token_scene is sorted).
__global__ void cu_seqlens_kernel(const int64_t* __restrict__ token_scene, int64_t T, int64_t num_scenes, int32_t* cu) {
  const int64_t s = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (s > num_scenes) return;
  int64_t lo = 0, hi = T;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (token_scene[mid] < s) lo = mid + 1; else hi = mid;
  }
  cu[s] = int32_t(lo);
}

template <typename I>
Outputs patchify_typed(const Tensor& grid_coord, const Tensor& scene_t, int64_t num_scenes, int64_t P) {
  const int64_t V = grid_coord.size(0);
  const auto lopt = scene_t.options().dtype(at::kLong), iopt = scene_t.options().dtype(at::kInt);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const I* g = grid_coord.const_data_ptr<I>();
  const int64_t* sc = scene_t.const_data_ptr<int64_t>();
  Tensor r_h = at::empty({8}, at::kLong);
  for (int f = 0; f < 4; ++f) r_h.data_ptr<int64_t>()[f] = LLONG_MAX, r_h.data_ptr<int64_t>()[4 + f] = LLONG_MIN;
  Tensor r = r_h.to(scene_t.device());
  if (V > 0) {
    ranges_kernel<I><<<blocks_for(V, kTile), kThreads, 0, stream>>>(g, sc, V,
                                                                     reinterpret_cast<long long*>(r.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  r_h = r.cpu();
  const int64_t* rh = r_h.const_data_ptr<int64_t>();
  Fields f{};
  f.P = P;
  Tensor slot = at::empty({V}, lopt), voxel2token = at::empty({V}, lopt);
  Tensor cu = at::zeros({num_scenes + 1}, iopt);
  if (V == 0)
    return {at::empty({0, 3}, iopt), at::empty({0}, lopt), voxel2token, slot, cu};
  TORCH_CHECK_VALUE(rh[0] >= 0 && rh[4] < num_scenes, "volt::patchify: scene ids must lie in [0, ", num_scenes,
                    "), got [", rh[0], ", ", rh[4], "]");
  f.lo[0] = rh[0];
  f.bits[0] = bits_for(uint64_t(rh[4] - rh[0]) + 1);
  for (int a = 1; a < 4; ++a) {
    const int64_t lo = floor_div(rh[a], P), hi = floor_div(rh[4 + a], P);  // floor division is monotonic
    TORCH_CHECK_VALUE(lo >= std::numeric_limits<int32_t>::min() && hi <= std::numeric_limits<int32_t>::max(),
                      "volt::patchify: patch coordinates must fit int32, got [", lo, ", ", hi, "]");
    f.lo[a] = lo;
    f.bits[a] = bits_for(uint64_t(hi - lo) + 1);
  }
  // Words of <= 64 bits from the least significant field (pz) upwards; stable sorts in that order.
  std::vector<std::pair<int, int>> words;
  for (int q = 3; q >= 0;) {
    int last = q, used = 0;
    while (q >= 0 && used + f.bits[q] <= 64) used += f.bits[q--];
    words.push_back({q + 1, last});
  }
  Tensor keys = at::empty({V}, lopt), keys_out = at::empty({V}, lopt), idx = at::empty({V}, lopt);
  Tensor order;
  auto* kp = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
  auto* kop = reinterpret_cast<uint64_t*>(keys_out.data_ptr<int64_t>());
  for (const auto& w : words) {
    int bits = 0;
    for (int q = w.first; q <= w.second; ++q) bits += f.bits[q];
    word_keys_kernel<I><<<blocks_for(V), kThreads, 0, stream>>>(
        g, sc, V, f, w.first, w.second, order.defined() ? order.const_data_ptr<int64_t>() : nullptr, kp,
        idx.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Tensor out = at::empty({V}, lopt);
    sort_pairs<uint64_t>(kp, kop, idx.const_data_ptr<int64_t>(), out.data_ptr<int64_t>(), V, bits > 0 ? bits : 1,
                         lopt, stream);
    order = out;
  }
  const int64_t* ord = order.const_data_ptr<int64_t>();
  slot_kernel<I><<<blocks_for(V), kThreads, 0, stream>>>(g, V, P, slot.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Tensor flags = at::empty({V}, iopt), tid = at::empty({V}, iopt);
  token_flags_kernel<I><<<blocks_for(V), kThreads, 0, stream>>>(g, sc, V, f, ord, flags.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  inclusive_sum(flags.const_data_ptr<int32_t>(), tid.data_ptr<int32_t>(), V, lopt, stream);
  const int64_t T = tid[V - 1].item<int32_t>();
  Tensor patch_coord = at::empty({T, 3}, iopt), token_scene = at::empty({T}, lopt);
  tokens_kernel<I><<<blocks_for(V), kThreads, 0, stream>>>(g, sc, V, P, ord, flags.const_data_ptr<int32_t>(),
                                                           tid.const_data_ptr<int32_t>(), voxel2token.data_ptr<int64_t>(),
                                                           patch_coord.data_ptr<int32_t>(),
                                                           token_scene.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cu_seqlens_kernel<<<blocks_for(num_scenes + 1), kThreads, 0, stream>>>(token_scene.const_data_ptr<int64_t>(), T,
                                                                         num_scenes, cu.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {patch_coord, token_scene, voxel2token, slot, cu};
}

Outputs patchify_cuda(const Tensor& grid_coord_in, const Tensor& scene_in, int64_t num_scenes, int64_t patch_size) {
  TORCH_CHECK_VALUE(grid_coord_in.dim() == 2 && grid_coord_in.size(1) == 3,
                    "volt::patchify: grid_coord must be (V, 3), got ", grid_coord_in.sizes());
  TORCH_CHECK_VALUE(grid_coord_in.scalar_type() == at::kInt || grid_coord_in.scalar_type() == at::kLong,
                    "volt::patchify: grid_coord must be int32 or int64, got ", grid_coord_in.scalar_type());
  TORCH_CHECK_VALUE(scene_in.dim() == 1 && scene_in.numel() == grid_coord_in.size(0) &&
                        scene_in.scalar_type() == at::kLong,
                    "volt::patchify: scene must be (V,) int64 scene ids");
  TORCH_CHECK_VALUE(patch_size >= 1 && patch_size < kPatchLimit, "volt::patchify: patch_size must be >= 1 and < ",
                    kPatchLimit, " (slots P^3 must fit int64), got ", patch_size);
  TORCH_CHECK_VALUE(num_scenes >= 0 && num_scenes < std::numeric_limits<int32_t>::max(),
                    "volt::patchify: bad num_scenes ", num_scenes);
  TORCH_CHECK_VALUE(grid_coord_in.size(0) < std::numeric_limits<int32_t>::max(),
                    "volt::patchify: at most 2^31 - 2 voxels per call");
  c10::cuda::CUDAGuard guard(grid_coord_in.device());
  const Tensor grid_coord = grid_coord_in.contiguous(), scene = scene_in.to(grid_coord.device()).contiguous();
  if (grid_coord.scalar_type() == at::kInt) return patchify_typed<int32_t>(grid_coord, scene, num_scenes, patch_size);
  return patchify_typed<int64_t>(grid_coord, scene, num_scenes, patch_size);
}

}  // namespace
}  // namespace cuda
}  // namespace volt

TORCH_LIBRARY_IMPL(volt, CUDA, m) { m.impl("patchify", &volt::cuda::patchify_cuda); }
