// CUDA kernel maps for sparse convolution: volt::submanifold_map and volt::downsample_map.
// Same contract and result as csrc/cpu/kernel_map.cpp and the reference (volt/ops/kernel_map.py): in_idx,
// out_idx (P,) int32 grouped by tap k, sorted by out_idx within a tap, offsets (K+1,) int64 on the CPU.
// Steps: pack keys; insert them into an open-addressing hash (atomicCAS, linear probing); one thread per
// (tap, output) looks its query up and writes a (K, N_out) neighbour table; at::nonzero on the table's
// mask (order-preserving) lists the pairs tap-major, output-ascending. No step depends on thread timing.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

namespace volt {
namespace {

constexpr int64_t kBatchLimit = int64_t(1) << 15;
constexpr int64_t kAxisLimit = int64_t(1) << 16;
constexpr unsigned long long kEmpty = ~0ull;  // keys are >= 0, so never equal to this
constexpr int kThreads = 256;

struct Geometry {  // tap grid, stride and shift per axis: query = out * stride + tap - shift
  int kernel[3], stride[3], shift[3];
};

__device__ __forceinline__ long long pack(long long b, long long x, long long y, long long z) {
  return (b << 48) | (x << 32) | (y << 16) | z;
}

__device__ __forceinline__ unsigned long long mix(unsigned long long k) {  // splitmix64 finalizer
  k ^= k >> 31;
  k *= 0x7fb5d329728ea185ULL;
  k ^= k >> 27;
  k *= 0x81dadef4bc2dd44dULL;
  return k ^ (k >> 33);
}

__global__ void pack_keys(const int32_t* __restrict__ c, int64_t n, long long* __restrict__ keys) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) keys[i] = pack(c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]);
}

__global__ void hash_insert(const long long* __restrict__ keys, int64_t n, unsigned long long* table_keys,
                            int32_t* table_vals, unsigned long long mask, int* duplicate) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const unsigned long long key = static_cast<unsigned long long>(keys[i]);
  unsigned long long s = mix(key) & mask;
  while (true) {
    const unsigned long long prev = atomicCAS(table_keys + s, kEmpty, key);
    if (prev == kEmpty) {
      table_vals[s] = int32_t(i);
      return;
    }
    if (prev == key) {
      atomicExch(duplicate, 1);
      return;
    }
    s = (s + 1) & mask;
  }
}

__device__ __forceinline__ int32_t hash_find(const unsigned long long* __restrict__ table_keys,
                                             const int32_t* __restrict__ table_vals, unsigned long long mask,
                                             unsigned long long key) {
  unsigned long long s = mix(key) & mask;
  while (true) {
    const unsigned long long k = table_keys[s];
    if (k == key) return table_vals[s];
    if (k == kEmpty) return -1;
    s = (s + 1) & mask;
  }
}

// One thread per (tap k, output o), tap-major: nbr[k * n_out + o] = input row or -1.
__global__ void query_taps(const int32_t* __restrict__ out_coords, int64_t n_out, int64_t kvol, Geometry g,
                           const unsigned long long* __restrict__ table_keys, const int32_t* __restrict__ table_vals,
                           unsigned long long mask, int32_t* __restrict__ nbr) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= kvol * n_out) return;
  const int64_t k = e / n_out, o = e % n_out;
  const int t[3] = {int(k / (g.kernel[1] * g.kernel[2])), int((k / g.kernel[2]) % g.kernel[1]), int(k % g.kernel[2])};
  const int32_t* r = out_coords + 4 * o;
  long long q[3];
  bool inside = true;
  for (int a = 0; a < 3; ++a) {
    q[a] = (long long)r[a + 1] * g.stride[a] + t[a] - g.shift[a];
    inside = inside && q[a] >= 0 && q[a] < kAxisLimit;
  }
  nbr[e] = inside ? hash_find(table_keys, table_vals, mask, pack(r[0], q[0], q[1], q[2])) : -1;
}

// One thread per (input i, tap k): the output (coord - k) / stride when it divides and is >= 0, else -1.
__global__ void down_candidates(const int32_t* __restrict__ c, int64_t n, int64_t kvol, Geometry g,
                                long long* __restrict__ cand) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= n * kvol) return;
  const int64_t i = e / kvol, k = e % kvol;
  const int t[3] = {int(k / (g.kernel[1] * g.kernel[2])), int((k / g.kernel[2]) % g.kernel[1]), int(k % g.kernel[2])};
  const int32_t* r = c + 4 * i;
  long long o[3];
  bool ok = true;
  for (int a = 0; a < 3; ++a) {
    const long long rel = (long long)r[a + 1] - t[a];
    ok = ok && rel >= 0 && rel % g.stride[a] == 0;
    o[a] = rel / g.stride[a];
  }
  cand[e] = ok ? pack(r[0], o[0], o[1], o[2]) : -1;
}

inline unsigned blocks(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

at::Tensor checked_coords(const at::Tensor& coords) {
  TORCH_CHECK_VALUE(coords.dim() == 2 && coords.size(1) == 4, "coords must be (N, 4) [batch, x, y, z], got ",
                    coords.sizes());
  TORCH_CHECK_VALUE(coords.scalar_type() == at::kInt, "coords must be int32, got ", coords.scalar_type());
  TORCH_CHECK_VALUE(coords.size(0) < (int64_t(1) << 31), "too many voxels for int32 indices");
  at::Tensor c = coords.contiguous();
  if (c.size(0) > 0) {
    auto [lo_t, hi_t] = at::aminmax(c, 0);
    const at::Tensor lo = lo_t.cpu(), hi = hi_t.cpu();
    const int32_t* l = lo.data_ptr<int32_t>();
    const int32_t* h = hi.data_ptr<int32_t>();
    TORCH_CHECK_VALUE(l[0] >= 0 && l[1] >= 0 && l[2] >= 0 && l[3] >= 0, "coords must be >= 0");
    TORCH_CHECK_VALUE(h[0] < kBatchLimit && h[1] < kAxisLimit && h[2] < kAxisLimit && h[3] < kAxisLimit,
                      "coords overflow the key packing (batch < 2^15, x/y/z < 2^16)");
  }
  return c;
}

Geometry geometry(at::IntArrayRef kernel, at::IntArrayRef stride, bool centered) {
  TORCH_CHECK_VALUE(kernel.size() == 3 && stride.size() == 3, "kernel_size and stride must have three entries");
  Geometry g;
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK_VALUE(kernel[a] >= 1 && stride[a] >= 1, "kernel_size and stride must be positive");
    g.kernel[a] = int(kernel[a]);
    g.stride[a] = int(stride[a]);
    g.shift[a] = centered ? int(kernel[a] / 2) : 0;
  }
  return g;
}

// Pairs (in_idx, out_idx, offsets) of `out_coords` against the voxels of `in_coords`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> query_pairs(const at::Tensor& in_coords, const at::Tensor& out_coords,
                                                           const Geometry& g) {
  const int64_t n_in = in_coords.size(0), n_out = out_coords.size(0);
  const int64_t kvol = int64_t(g.kernel[0]) * g.kernel[1] * g.kernel[2];
  const auto opts = in_coords.options();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  int64_t cap = 16;
  while (cap < 2 * n_in) cap <<= 1;
  at::Tensor table_keys = at::full({cap}, -1, opts.dtype(at::kLong));  // all bits set = kEmpty
  at::Tensor table_vals = at::empty({cap}, opts.dtype(at::kInt));
  at::Tensor duplicate = at::zeros({1}, opts.dtype(at::kInt));
  at::Tensor keys = at::empty({n_in}, opts.dtype(at::kLong));
  auto* tk = reinterpret_cast<unsigned long long*>(table_keys.data_ptr<int64_t>());
  const auto mask = static_cast<unsigned long long>(cap - 1);
  if (n_in > 0) {
    pack_keys<<<blocks(n_in), kThreads, 0, stream>>>(in_coords.data_ptr<int32_t>(), n_in,
                                                    reinterpret_cast<long long*>(keys.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    hash_insert<<<blocks(n_in), kThreads, 0, stream>>>(reinterpret_cast<const long long*>(keys.data_ptr<int64_t>()),
                                                      n_in, tk, table_vals.data_ptr<int32_t>(), mask,
                                                      duplicate.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  TORCH_CHECK_VALUE(duplicate.item<int>() == 0,
                    "coords contain duplicate voxels; a kernel map needs unique (batch, x, y, z) rows");
  at::Tensor nbr = at::empty({kvol, n_out}, opts.dtype(at::kInt));
  if (kvol * n_out > 0) {
    query_taps<<<blocks(kvol * n_out), kThreads, 0, stream>>>(out_coords.data_ptr<int32_t>(), n_out, kvol, g, tk,
                                                             table_vals.data_ptr<int32_t>(), mask,
                                                             nbr.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor found = nbr.ge(0);
  const at::Tensor counts = found.sum(1).cpu();
  at::Tensor offsets = at::zeros({kvol + 1}, at::kLong);
  offsets.narrow(0, 1, kvol).copy_(counts.cumsum(0));
  const at::Tensor flat = at::nonzero(found.reshape({-1})).reshape({-1});  // tap-major, output-ascending
  at::Tensor in_idx = nbr.reshape({-1}).index_select(0, flat);
  at::Tensor out_idx = flat.remainder(std::max<int64_t>(n_out, 1)).to(at::kInt);
  return {in_idx, out_idx, offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> submanifold_map_cuda(const at::Tensor& coords,
                                                                    at::IntArrayRef kernel_size) {
  const c10::cuda::CUDAGuard guard(coords.device());
  TORCH_CHECK_VALUE(kernel_size.size() == 3 && kernel_size[0] % 2 == 1 && kernel_size[1] % 2 == 1 &&
                        kernel_size[2] % 2 == 1, "a submanifold kernel must be odd per axis, got ", kernel_size);
  const at::Tensor c = checked_coords(coords);
  const int64_t one[3] = {1, 1, 1};
  return query_pairs(c, c, geometry(kernel_size, one, true));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> downsample_map_cuda(const at::Tensor& coords,
                                                                               at::IntArrayRef kernel_size,
                                                                               at::IntArrayRef stride) {
  const c10::cuda::CUDAGuard guard(coords.device());
  const Geometry g = geometry(kernel_size, stride, false);
  const at::Tensor c = checked_coords(coords);
  const int64_t n = c.size(0), kvol = int64_t(g.kernel[0]) * g.kernel[1] * g.kernel[2];
  at::Tensor cand = at::empty({n * kvol}, c.options().dtype(at::kLong));
  if (n * kvol > 0) {
    down_candidates<<<blocks(n * kvol), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        c.data_ptr<int32_t>(), n, kvol, g, reinterpret_cast<long long*>(cand.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor keys =
      std::get<0>(at::unique_consecutive(std::get<0>(at::sort(cand.masked_select(cand.ge(0))))));
  const at::Tensor out_coords =
      at::stack({keys.bitwise_right_shift(48), keys.bitwise_right_shift(32).bitwise_and(0xFFFF),
                 keys.bitwise_right_shift(16).bitwise_and(0xFFFF), keys.bitwise_and(0xFFFF)}, 1)
          .to(at::kInt)
          .contiguous();
  auto [in_idx, out_idx, offsets] = query_pairs(c, out_coords, g);
  return {out_coords, in_idx, out_idx, offsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(volt, CUDA, m) {
  m.impl("submanifold_map", &submanifold_map_cuda);
  m.impl("downsample_map", &downsample_map_cuda);
}

}  // namespace volt
