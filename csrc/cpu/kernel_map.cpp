// CPU kernel maps for sparse convolution: volt::submanifold_map and volt::downsample_map.
// Input: coords (N, 4) int32 [batch, x, y, z] >= 0, batch < 2^15, x/y/z < 2^16, unique rows.
// Output: in_idx, out_idx (P,) int32 grouped by kernel offset k (flattened (kx, ky, kz)), pairs sorted by
// out_idx within a group, and offsets (K+1,) int64 (CPU). downsample_map also returns the output coords
// sorted by (batch, x, y, z). Same result as volt/ops/kernel_map.py (the reference) for any thread count.
//
// Lookup by merging sorted keys instead of hashing: packing is lexicographic, and the query of every
// tap, o * stride + k - shift, is strictly increasing per axis, so walking the outputs in key order gives
// increasing query keys that one forward pass over the sorted input keys resolves. Submanifold maps query
// only half of the taps: the pair (i, o) at tap k is the pair (o, i) at the mirrored tap K - 1 - k.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/run_tasks.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <numeric>
#include <vector>

namespace volt {
namespace {

constexpr int64_t kBatchLimit = int64_t(1) << 15;
constexpr int64_t kAxisLimit = int64_t(1) << 16;
using Int3 = std::array<int64_t, 3>;
using Pairs = std::array<std::vector<int32_t>, 2>;  // {in, out}

using cpu::run_tasks;  // f(task) for every task in [0, n); threads take the next free task

inline int64_t pack(int64_t b, int64_t x, int64_t y, int64_t z) { return (b << 48) | (x << 32) | (y << 16) | z; }
inline int64_t row_key(const int32_t* r) { return pack(r[0], r[1], r[2], r[3]); }

// Keys of `coords` in ascending order and the row of each sorted key (empty when already sorted).
struct SortedKeys {
  std::vector<int64_t> keys;
  std::vector<int32_t> perm;
  int32_t row(int64_t j) const { return perm.empty() ? int32_t(j) : perm[j]; }
};

SortedKeys sort_keys(const int32_t* c, int64_t n) {
  SortedKeys s;
  s.keys.resize(n);
  bool sorted = true;
  for (int64_t i = 0; i < n; ++i) {
    s.keys[i] = row_key(c + 4 * i);
    sorted = sorted && (i == 0 || s.keys[i] > s.keys[i - 1]);
  }
  if (sorted) return s;  // strictly increasing: also unique
  s.perm.resize(n);
  std::iota(s.perm.begin(), s.perm.end(), 0);
  std::sort(s.perm.begin(), s.perm.end(), [&](int32_t a, int32_t b) { return s.keys[a] < s.keys[b]; });
  std::vector<int64_t> k(n);
  for (int64_t j = 0; j < n; ++j) k[j] = s.keys[s.perm[j]];
  for (int64_t j = 1; j < n; ++j)
    TORCH_CHECK_VALUE(k[j] != k[j - 1], "coords contain duplicate voxels; a kernel map needs unique ",
                      "(batch, x, y, z) rows (rows ", s.perm[j - 1], " and ", s.perm[j], ")");
  s.keys.swap(k);
  return s;
}

struct Query {
  const SortedKeys* in;   // input keys, sorted
  const SortedKeys* out;  // output keys, sorted (out->row maps sorted position -> output row)
  const int32_t* out_coords;
  int64_t n_out;
  Int3 kernel, stride, shift;
};

// Pairs of tap k, sorted by output row.
Pairs tap_pairs(const Query& q, int64_t k) {
  const Int3 t = {k / (q.kernel[1] * q.kernel[2]), (k / q.kernel[2]) % q.kernel[1], k % q.kernel[2]};
  const std::vector<int64_t>& keys = q.in->keys;
  const int64_t n_in = int64_t(keys.size());
  const bool direct = q.out->perm.empty();  // outputs already in key order: pairs come out sorted
  std::vector<int32_t> nbr(direct ? 0 : q.n_out, -1);
  Pairs p;
  int64_t j = 0;
  for (int64_t pos = 0; pos < q.n_out && j < n_in; ++pos) {
    const int32_t o = q.out->row(pos);
    const int32_t* r = q.out_coords + 4 * int64_t(o);
    int64_t c[3];
    bool inside = true;
    for (int a = 0; a < 3; ++a) {
      c[a] = int64_t(r[a + 1]) * q.stride[a] + t[a] - q.shift[a];
      inside = inside && c[a] >= 0 && c[a] < kAxisLimit;
    }
    if (!inside) continue;
    const int64_t key = pack(r[0], c[0], c[1], c[2]);
    while (j < n_in && keys[j] < key) ++j;
    if (j == n_in || keys[j] != key) continue;
    if (direct) {
      p[0].push_back(q.in->row(j));
      p[1].push_back(o);
    } else {
      nbr[o] = q.in->row(j);
    }
  }
  for (int64_t o = 0; o < int64_t(nbr.size()); ++o) {
    if (nbr[o] < 0) continue;
    p[0].push_back(nbr[o]);
    p[1].push_back(int32_t(o));
  }
  return p;
}

// The mirrored tap of a submanifold map: pairs swapped, re-sorted by the new output row.
Pairs mirror(const Pairs& src, int64_t n) {
  std::vector<int32_t> from(n, -1);
  for (size_t e = 0; e < src[0].size(); ++e) from[src[0][e]] = src[1][e];
  Pairs p;
  p[0].reserve(src[0].size());
  p[1].reserve(src[0].size());
  for (int64_t o = 0; o < n; ++o)
    if (from[o] >= 0) {
      p[0].push_back(from[o]);
      p[1].push_back(int32_t(o));
    }
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> concat(const std::vector<Pairs>& taps) {
  const int64_t kvol = int64_t(taps.size());
  at::Tensor offsets = at::zeros({kvol + 1}, at::kLong);
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t k = 0; k < kvol; ++k) off[k + 1] = off[k] + int64_t(taps[k][0].size());
  at::Tensor in_idx = at::empty({off[kvol]}, at::kInt), out_idx = at::empty({off[kvol]}, at::kInt);
  int32_t* pi = in_idx.data_ptr<int32_t>();
  int32_t* po = out_idx.data_ptr<int32_t>();
  run_tasks(kvol, [&](int64_t k) {
    std::copy(taps[k][0].begin(), taps[k][0].end(), pi + off[k]);
    std::copy(taps[k][1].begin(), taps[k][1].end(), po + off[k]);
  });
  return {in_idx, out_idx, offsets};
}

at::Tensor checked_coords(const at::Tensor& coords) {
  TORCH_CHECK_VALUE(coords.dim() == 2 && coords.size(1) == 4, "coords must be (N, 4) [batch, x, y, z], got ",
                    coords.sizes());
  TORCH_CHECK_VALUE(coords.scalar_type() == at::kInt, "coords must be int32, got ", coords.scalar_type());
  TORCH_CHECK_VALUE(coords.size(0) < (int64_t(1) << 31), "too many voxels for int32 indices");
  at::Tensor c = coords.contiguous();
  const int32_t* p = c.data_ptr<int32_t>();
  for (int64_t i = 0; i < c.size(0); ++i) {
    const int32_t* r = p + 4 * i;
    TORCH_CHECK_VALUE(r[0] >= 0 && r[1] >= 0 && r[2] >= 0 && r[3] >= 0, "coords must be >= 0 (row ", i, ")");
    TORCH_CHECK_VALUE(r[0] < kBatchLimit && r[1] < kAxisLimit && r[2] < kAxisLimit && r[3] < kAxisLimit,
                      "coords overflow the key packing (batch < 2^15, x/y/z < 2^16) at row ", i);
  }
  return c;
}

Int3 triple(at::IntArrayRef v, const char* name) {
  TORCH_CHECK_VALUE(v.size() == 3 && v[0] >= 1 && v[1] >= 1 && v[2] >= 1, name, " must be three positive ints");
  return {v[0], v[1], v[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> submanifold_map_cpu(const at::Tensor& coords,
                                                                   at::IntArrayRef kernel_size) {
  const Int3 kernel = triple(kernel_size, "kernel_size");
  TORCH_CHECK_VALUE(kernel[0] % 2 == 1 && kernel[1] % 2 == 1 && kernel[2] % 2 == 1,
                    "a submanifold kernel must be odd per axis, got ", kernel_size);
  const at::Tensor c = checked_coords(coords);
  const int64_t n = c.size(0), kvol = kernel[0] * kernel[1] * kernel[2], center = kvol / 2;
  const SortedKeys keys = sort_keys(c.data_ptr<int32_t>(), n);
  const Int3 shift = {kernel[0] / 2, kernel[1] / 2, kernel[2] / 2};
  const Query q{&keys, &keys, c.data_ptr<int32_t>(), n, kernel, {1, 1, 1}, shift};
  std::vector<Pairs> taps(kvol);
  run_tasks(center, [&](int64_t k) { taps[k] = tap_pairs(q, k); });
  run_tasks(kvol - center, [&](int64_t t) {
    const int64_t k = center + t;
    if (k == center) {  // identity tap
      taps[k][0].resize(n);
      std::iota(taps[k][0].begin(), taps[k][0].end(), 0);
      taps[k][1] = taps[k][0];
    } else {
      taps[k] = mirror(taps[kvol - 1 - k], n);
    }
  });
  return concat(taps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> downsample_map_cpu(const at::Tensor& coords,
                                                                              at::IntArrayRef kernel_size,
                                                                              at::IntArrayRef stride_size) {
  const Int3 kernel = triple(kernel_size, "kernel_size"), stride = triple(stride_size, "stride");
  const at::Tensor c = checked_coords(coords);
  const int32_t* p = c.data_ptr<int32_t>();
  const int64_t n = c.size(0), kvol = kernel[0] * kernel[1] * kernel[2];
  // Candidate outputs: o = (coord - k) / stride wherever that divides and is >= 0.
  std::vector<int64_t> cand;
  cand.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* r = p + 4 * i;
    for (int64_t k = 0; k < kvol; ++k) {
      const Int3 t = {k / (kernel[1] * kernel[2]), (k / kernel[2]) % kernel[1], k % kernel[2]};
      int64_t o[3];
      bool ok = true;
      for (int a = 0; a < 3; ++a) {
        const int64_t rel = r[a + 1] - t[a];
        ok = ok && rel >= 0 && rel % stride[a] == 0;
        o[a] = rel / stride[a];
      }
      if (ok) cand.push_back(pack(r[0], o[0], o[1], o[2]));
    }
  }
  std::sort(cand.begin(), cand.end());
  cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
  const int64_t m = int64_t(cand.size());
  at::Tensor out_coords = at::empty({m, 4}, at::kInt);
  int32_t* oc = out_coords.data_ptr<int32_t>();
  for (int64_t j = 0; j < m; ++j) {
    const int64_t key = cand[j];
    oc[4 * j] = int32_t(key >> 48);
    oc[4 * j + 1] = int32_t((key >> 32) & 0xFFFF);
    oc[4 * j + 2] = int32_t((key >> 16) & 0xFFFF);
    oc[4 * j + 3] = int32_t(key & 0xFFFF);
  }
  const SortedKeys in_keys = sort_keys(p, n);
  SortedKeys out_keys;  // outputs are already in key order: only their count matters for the walk
  const Query q{&in_keys, &out_keys, oc, m, kernel, stride, {0, 0, 0}};
  std::vector<Pairs> taps(kvol);
  run_tasks(kvol, [&](int64_t k) { taps[k] = tap_pairs(q, k); });
  auto [in_idx, out_idx, offsets] = concat(taps);
  return {out_coords, in_idx, out_idx, offsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(volt, CPU, m) {
  m.impl("submanifold_map", &submanifold_map_cpu);
  m.impl("downsample_map", &downsample_map_cpu);
}

}  // namespace volt
