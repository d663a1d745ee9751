// CUDA kernel of volt::voxelize (schema in csrc/volt.cpp; semantics = volt/ops/voxelize.py reference,
// identical outputs to the CPU kernel). Input: coord (N,3) float32/float64, offset (B,) int64 cumulative
// ends, grid_size (B,), seed or None. Output: grid_coord (V,3) int32, inverse (N,), count (V,),
// voxel_offset (B,), order (N,), pick (V,) or (0,), all int64 but grid_coord.
// Steps: per-scene coordinate bounds (block reductions + atomics on order-preserving integers), the
// host builds the key plan (csrc/common.h), keys, stable cub radix sort (by batch-wide key; or by local
// key then scene when the batch needs more than 64 bits), run flags + scan, then per-position and
// per-voxel kernels. Two small device->host copies (bounds, voxel count) synchronize the stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <climits>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"
#include "cuda/device_utils.cuh"

namespace volt {
namespace cuda {
namespace {

using at::Tensor;
using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// bnd = [lo (B*3) | hi (B*3) | bad]: per-scene min/max of each coordinate, flag for NaN/Inf.
template <typename T>
__global__ void bounds_kernel(const T* __restrict__ c, const int64_t* __restrict__ off, int64_t num_scenes,
                              int64_t n, long long* bnd) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t t0 = int64_t(blockIdx.x) * kTile, t1 = min(n, t0 + kTile);
  bool bad = false;
  // Every thread walks the same scenes (the block's tile may cross scene boundaries).
  for (int64_t s = scene_of(off, num_scenes, t0); s < num_scenes; ++s) {
    const int64_t a = max(t0, s ? off[s - 1] : int64_t(0)), e = min(t1, off[s]);
    if (a >= t1) break;
    if (a >= e) continue;
    long long lo[3], hi[3];
    for (int k = 0; k < 3; ++k) lo[k] = LLONG_MAX, hi[k] = LLONG_MIN;
    for (int64_t i = a + threadIdx.x; i < e; i += kThreads)
      for (int k = 0; k < 3; ++k) {
        const T x = c[3 * i + k];
        if (!isfinite(x)) {
          bad = true;
          continue;
        }
        const long long o = ordered(x);
        lo[k] = o < lo[k] ? o : lo[k];
        hi[k] = o > hi[k] ? o : hi[k];
      }
    for (int k = 0; k < 3; ++k) {
      const long long mn = Reduce(tmp).Reduce(lo[k], MinOp());
      __syncthreads();
      const long long mx = Reduce(tmp).Reduce(hi[k], MaxOp());
      __syncthreads();
      if (threadIdx.x == 0) {
        atomicMin(bnd + 3 * s + k, mn);
        atomicMax(bnd + 3 * (num_scenes + s) + k, mx);
      }
    }
  }
  if (bad) atomicExch(reinterpret_cast<unsigned long long*>(bnd + 6 * num_scenes), 1ull);
}

// Per-scene packing on the device: key base, axis shifts, min cell and grid size.
template <typename T>
struct DevPack {
  unsigned long long base;
  int sx, sy;  // x << sx | y << sy | z
  T lo[3];
  T g;
};

// (scene, local key) of point i; the batch-wide key is base + local (single-word plans).
template <typename T>
__device__ __forceinline__ uint64_t local_key(const T* c, const DevPack<T>& p, int64_t i, int32_t cell[3]) {
  for (int k = 0; k < 3; ++k) cell[k] = int32_t(floor(c[3 * i + k] / p.g) - p.lo[k]);  // exact (< 2^21)
  return (uint64_t(cell[0]) << p.sx) | (uint64_t(cell[1]) << p.sy) | uint64_t(cell[2]);
}

template <typename T>
__global__ void keys_kernel(const T* __restrict__ c, const int64_t* __restrict__ off, int64_t num_scenes, int64_t n,
                            const DevPack<T>* __restrict__ packs, bool single_word, uint64_t* keys, int64_t* idx) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const int64_t s = scene_of(off, num_scenes, i);
  int32_t cell[3];
  const uint64_t local = local_key(c, packs[s], i, cell);
  keys[i] = single_word ? packs[s].base + local : local;
  idx[i] = i;
}

// Two-word plans: after sorting by local key, the scene of each sorted point is the next sort key.
__global__ void scene_keys_kernel(const int64_t* __restrict__ order, const int64_t* __restrict__ off,
                                  int64_t num_scenes, int64_t n, uint32_t* keys) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j < n) keys[j] = uint32_t(scene_of(off, num_scenes, order[j]));
}

// flag[j] = 1 where sorted position j starts a voxel: (scene, cell) differs from position j-1.
template <typename T>
__global__ void flags_kernel(const T* __restrict__ c, const int64_t* __restrict__ off, int64_t num_scenes, int64_t n,
                             const DevPack<T>* __restrict__ packs, const int64_t* __restrict__ order, int32_t* flags) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= n) return;
  if (j == 0) {
    flags[0] = 1;
    return;
  }
  const int64_t a = order[j], b = order[j - 1];
  const int64_t sa = scene_of(off, num_scenes, a), sb = scene_of(off, num_scenes, b);
  int32_t ca[3], cb[3];
  flags[j] = sa != sb || local_key(c, packs[sa], a, ca) != local_key(c, packs[sb], b, cb);
}

// Sorted position j -> its point's voxel (vid = inclusive scan of flags, 1-based); voxel starts.
__global__ void inverse_kernel(const int64_t* __restrict__ order, const int32_t* __restrict__ flags,
                               const int32_t* __restrict__ vid, int64_t n, int64_t* inverse, int64_t* start) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= n) return;
  const int64_t v = vid[j] - 1;
  inverse[order[j]] = v;
  if (flags[j]) start[v] = j;
}

template <typename T>
__global__ void voxel_kernel(const T* __restrict__ c, const int64_t* __restrict__ off, int64_t num_scenes, int64_t n,
                             const DevPack<T>* __restrict__ packs, const int64_t* __restrict__ order,
                             const int64_t* __restrict__ start, int64_t num_voxels, bool has_seed, uint64_t seed,
                             int32_t* grid, int64_t* count, int64_t* pick) {
  const int64_t v = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (v >= num_voxels) return;
  const int64_t st = start[v], end = v + 1 < num_voxels ? start[v + 1] : n, first = order[st];
  int32_t cell[3];
  local_key(c, packs[scene_of(off, num_scenes, first)], first, cell);
  for (int k = 0; k < 3; ++k) grid[3 * v + k] = cell[k];
  count[v] = end - st;
  if (has_seed) pick[v] = order[st + pick_offset(seed, uint64_t(v), end - st)];
}

// voxel_offset[s] = number of voxels of scenes <= s = vid at the scene's last sorted position.
__global__ void voxel_offset_kernel(const int64_t* __restrict__ off, int64_t num_scenes,
                                    const int32_t* __restrict__ vid, int64_t* voxel_offset) {
  const int64_t s = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (s < num_scenes) voxel_offset[s] = off[s] > 0 ? int64_t(vid[off[s] - 1]) : 0;
}

template <typename T>
Outputs voxelize_typed(const Tensor& coord, const Tensor& offset, const std::vector<int64_t>& off_h,
                       const std::vector<T>& gs_h, std::optional<int64_t> seed, bool with_order) {
  const int64_t n = coord.size(0), B = int64_t(off_h.size());
  const auto dev = coord.options();
  const auto lopt = dev.dtype(at::kLong);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* c = coord.const_data_ptr<T>();
  const int64_t* off = offset.const_data_ptr<int64_t>();
  // 1. Per-scene coordinate bounds; floor(x / g) is monotonic, so cell bounds follow on the host.
  Tensor bnd_h = at::empty({6 * B + 1}, at::kLong);
  int64_t* bh = bnd_h.data_ptr<int64_t>();
  for (int64_t k = 0; k < 3 * B; ++k) bh[k] = LLONG_MAX, bh[3 * B + k] = LLONG_MIN;
  bh[6 * B] = 0;
  Tensor bnd = bnd_h.to(coord.device());
  if (n > 0) {
    bounds_kernel<T><<<blocks_for(n, kTile), kThreads, 0, stream>>>(c, off, B, n,
                                                                     reinterpret_cast<long long*>(bnd.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  bnd_h = bnd.cpu();
  bh = bnd_h.data_ptr<int64_t>();
  if (bh[6 * B]) {
    const int64_t i = (~at::isfinite(coord)).any(1).nonzero().select(1, 0)[0].item<int64_t>();
    const int64_t s = std::upper_bound(off_h.begin(), off_h.end(), i) - off_h.begin();
    TORCH_CHECK_VALUE(false, "volt: coord contains NaN or Inf (first at point ", i, ", scene ", s, ")");
  }
  std::vector<T> lo(3 * B), hi(3 * B);
  for (int64_t k = 0; k < 3 * B; ++k) {
    lo[k] = std::floor(from_ordered<T>(bh[k]) / gs_h[k / 3]);
    hi[k] = std::floor(from_ordered<T>(bh[3 * B + k]) / gs_h[k / 3]);
  }
  const VoxelPlan plan = make_voxel_plan<T>(lo.data(), hi.data(), off_h.data(), B, gs_h.data());
  // 2. Keys and the stable sort of (key, point index).
  std::vector<DevPack<T>> packs_h(std::max<int64_t>(B, 1));
  for (int64_t s = 0; s < B; ++s) {
    const ScenePack& p = plan.scenes[s];
    packs_h[s].base = plan.single_word ? p.base : 0;
    packs_h[s].sx = p.by + p.bz;
    packs_h[s].sy = p.bz;
    for (int k = 0; k < 3; ++k) packs_h[s].lo[k] = lo[3 * s + k];
    packs_h[s].g = gs_h[s];
  }
  Tensor packs_t = at::empty({int64_t(packs_h.size() * sizeof(DevPack<T>))}, at::kByte);
  std::memcpy(packs_t.data_ptr(), packs_h.data(), packs_h.size() * sizeof(DevPack<T>));
  packs_t = packs_t.to(coord.device());
  const auto* packs = reinterpret_cast<const DevPack<T>*>(packs_t.const_data_ptr());
  Tensor order = at::empty({n}, lopt), inverse = at::empty({n}, lopt);
  Tensor voxel_offset = at::zeros({B}, lopt);
  if (n == 0) {
    Tensor e = at::empty({0}, lopt);
    return {at::empty({0, 3}, dev.dtype(at::kInt)), inverse, e, voxel_offset, e.clone(), e.clone()};
  }
  {
    Tensor keys = at::empty({n}, lopt), keys_out = at::empty({n}, lopt), idx = at::empty({n}, lopt);
    auto* kp = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
    auto* kop = reinterpret_cast<uint64_t*>(keys_out.data_ptr<int64_t>());
    keys_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(c, off, B, n, packs, plan.single_word, kp,
                                                            idx.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (plan.single_word) {
      sort_pairs<uint64_t>(kp, kop, idx.data_ptr<int64_t>(), order.data_ptr<int64_t>(), n, std::max(plan.key_bits, 1),
                           dev, stream);
    } else {
      // Local key first, then (stable) scene: the order of (scene, local key, index).
      Tensor order1 = at::empty({n}, lopt);
      sort_pairs<uint64_t>(kp, kop, idx.data_ptr<int64_t>(), order1.data_ptr<int64_t>(), n,
                           std::max(plan.key_bits, 1), dev, stream);
      Tensor sk = at::empty({n}, dev.dtype(at::kInt)), sk_out = at::empty({n}, dev.dtype(at::kInt));
      auto* skp = reinterpret_cast<uint32_t*>(sk.data_ptr<int32_t>());
      scene_keys_kernel<<<blocks_for(n), kThreads, 0, stream>>>(order1.const_data_ptr<int64_t>(), off, B, n, skp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sort_pairs<uint32_t>(skp, reinterpret_cast<uint32_t*>(sk_out.data_ptr<int32_t>()), order1.const_data_ptr<int64_t>(),
                           order.data_ptr<int64_t>(), n, std::max(plan.scene_bits, 1), dev, stream);
    }
  }
  // 3. Voxel boundaries, ids (inclusive scan), then per-position and per-voxel outputs.
  Tensor flags = at::empty({n}, dev.dtype(at::kInt)), vid = at::empty({n}, dev.dtype(at::kInt));
  const int64_t* ord = order.const_data_ptr<int64_t>();
  flags_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(c, off, B, n, packs, ord, flags.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  inclusive_sum(flags.const_data_ptr<int32_t>(), vid.data_ptr<int32_t>(), n, dev, stream);
  const int64_t V = vid[n - 1].item<int32_t>();
  Tensor start = at::empty({V}, lopt), count = at::empty({V}, lopt), pick = at::empty({seed ? V : 0}, lopt);
  Tensor grid = at::empty({V, 3}, dev.dtype(at::kInt));
  inverse_kernel<<<blocks_for(n), kThreads, 0, stream>>>(ord, flags.const_data_ptr<int32_t>(),
                                                          vid.const_data_ptr<int32_t>(), n,
                                                          inverse.data_ptr<int64_t>(), start.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  voxel_kernel<T><<<blocks_for(V), kThreads, 0, stream>>>(c, off, B, n, packs, ord, start.const_data_ptr<int64_t>(), V,
                                                          seed.has_value(), seed ? uint64_t(*seed) : 0,
                                                          grid.data_ptr<int32_t>(), count.data_ptr<int64_t>(),
                                                          seed ? pick.data_ptr<int64_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (B > 0) {
    voxel_offset_kernel<<<blocks_for(B), kThreads, 0, stream>>>(off, B, vid.const_data_ptr<int32_t>(),
                                                                voxel_offset.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grid, inverse, count, voxel_offset, with_order ? order : at::empty({0}, lopt), pick};
}

Outputs voxelize_cuda(const Tensor& coord_in, const Tensor& offset_in, const Tensor& grid_size_in,
                      std::optional<int64_t> seed, bool with_order) {
  TORCH_CHECK_VALUE(coord_in.dim() == 2 && coord_in.size(1) == 3, "volt::voxelize: coord must be (N, 3), got ",
                    coord_in.sizes());
  TORCH_CHECK_VALUE(coord_in.scalar_type() == at::kFloat || coord_in.scalar_type() == at::kDouble,
                    "volt::voxelize: coord must be float32 or float64, got ", coord_in.scalar_type());
  TORCH_CHECK_VALUE(offset_in.dim() == 1 && offset_in.scalar_type() == at::kLong,
                    "volt::voxelize: offset must be a 1-D int64 tensor");
  TORCH_CHECK_VALUE(grid_size_in.dim() == 1 && grid_size_in.numel() == offset_in.numel(),
                    "volt::voxelize: grid_size must hold one value per scene (", offset_in.numel(), "), got ",
                    grid_size_in.sizes());
  TORCH_CHECK_VALUE(coord_in.size(0) < std::numeric_limits<int32_t>::max(),
                    "volt::voxelize: at most 2^31 - 2 points per call, got ", coord_in.size(0));
  c10::cuda::CUDAGuard guard(coord_in.device());
  const Tensor coord = coord_in.contiguous();
  const Tensor offset = offset_in.to(coord.device()).contiguous();
  const Tensor offset_h = offset_in.cpu().contiguous();
  const Tensor gs_h = grid_size_in.cpu().to(coord.scalar_type()).contiguous();
  const int64_t B = offset_h.numel();
  std::vector<int64_t> off_h(offset_h.const_data_ptr<int64_t>(), offset_h.const_data_ptr<int64_t>() + B);
  check_offsets(off_h.data(), B, coord.size(0), "points");
  Outputs out;
  AT_DISPATCH_FLOATING_TYPES(coord.scalar_type(), "volt_voxelize_cuda", [&] {
    std::vector<scalar_t> g(gs_h.const_data_ptr<scalar_t>(), gs_h.const_data_ptr<scalar_t>() + B);
    check_grid_sizes(g.data(), B);
    out = voxelize_typed<scalar_t>(coord, offset, off_h, g, seed, with_order);
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace volt

TORCH_LIBRARY_IMPL(volt, CUDA, m) { m.impl("voxelize", &volt::cuda::voxelize_cuda); }
