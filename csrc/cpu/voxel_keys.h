// Vectorized inner loops of the CPU voxelize kernel (included by csrc/cpu/voxelize.cpp only, after its
// floating-point pragma): the coordinate bounds of a scene piece, and its voxel keys (with an AVX2 clone
// picked at run time on x86-64). Keys: base + bit-packed (floor(coord / grid_size) - min cell).
#pragma once

#include <cstdint>

#include "common.h"
#include "cpu/radix_sort.h"

namespace volt {
namespace cpu {

constexpr int kBlock = 16;  // points per vectorized block (48 coordinates: lane k holds axis k % 3)

// Min and max of each axis over points [0, m) (folded into lo3/hi3) and whether all are finite.
template <typename T>
inline __attribute__((always_inline)) void coord_bounds_body(const T* c, int64_t m, T lo3[3], T hi3[3],
                                                             bool& finite) {
  constexpr int L = 3 * kBlock;
  T lo[L], hi[L], chk[L];
  for (int k = 0; k < L; ++k) lo[k] = lo3[k % 3], hi[k] = hi3[k % 3], chk[k] = 0;
  int64_t j = 0;
  for (; j + L <= 3 * m; j += L)
    for (int k = 0; k < L; ++k) {
      const T x = c[j + k];
      lo[k] = x < lo[k] ? x : lo[k];
      hi[k] = x > hi[k] ? x : hi[k];
      chk[k] += x * T(0);  // NaN once any coordinate is NaN or +-Inf
    }
  for (int k = 0; j < 3 * m; ++j, ++k) {
    const T x = c[j];
    lo[k] = x < lo[k] ? x : lo[k];
    hi[k] = x > hi[k] ? x : hi[k];
    chk[k] += x * T(0);
  }
  for (int k = 0; k < L; ++k) {
    lo3[k % 3] = lo[k] < lo3[k % 3] ? lo[k] : lo3[k % 3];
    hi3[k % 3] = hi[k] > hi3[k % 3] ? hi[k] : hi3[k % 3];
    finite &= chk[k] == 0;
  }
}

#if VOLT_X86_DISPATCH
template <typename T>
__attribute__((target("avx2"))) void coord_bounds_avx2(const T* c, int64_t m, T lo3[3], T hi3[3], bool& finite) {
  coord_bounds_body(c, m, lo3, hi3, finite);
}
#endif

template <typename T>
void coord_bounds(const T* c, int64_t m, T lo3[3], T hi3[3], bool& finite) {
#if VOLT_X86_DISPATCH
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return coord_bounds_avx2(c, m, lo3, hi3, finite);
#endif
  coord_bounds_body(c, m, lo3, hi3, finite);
}

// What the key pass writes for point `first + i`: the key alone, or the word key << ib | index.
struct KeyOut {
  uint64_t* out;
  int ib;             // index bits of a word; -1: keys only
  int64_t first;      // index of the piece's first point
  Count* hist;        // counts of the sort's lowest digit (or null)
  uint64_t mask;      // that digit's mask
};

// keys = base + bit-packed (floor(c / g) - cell_lo) for points [0, m).
template <typename T>
inline __attribute__((always_inline)) void scene_keys_body(const T* c, int64_t m, T g, const T cell_lo[3],
                                                           const ScenePack& p, uint64_t base, const KeyOut& out) {
  constexpr int L = 3 * kBlock;
  const int sx = p.by + p.bz, sy = p.bz;
  const KeyOut o = out;  // a local copy: the key stores cannot alias it
  T lo[L];
  for (int k = 0; k < L; ++k) lo[k] = cell_lo[k % 3];
  auto emit = [&](int64_t i, uint64_t key) {
    o.out[i] = o.ib >= 0 ? (key << o.ib) | uint64_t(o.first + i) : key;
    if (o.hist) ++o.hist[key & o.mask];
  };
  int64_t i = 0;
  for (; i + kBlock <= m; i += kBlock) {
    int32_t cell[L];  // exact: floor(c/g) - cell_lo is an integer below 2^21 (checked extent)
    for (int k = 0; k < L; ++k) cell[k] = int32_t(floor_fast(c[3 * i + k] / g) - lo[k]);
    for (int q = 0; q < kBlock; ++q)
      emit(i + q, base + ((uint64_t(cell[3 * q]) << sx) | (uint64_t(cell[3 * q + 1]) << sy) | uint64_t(cell[3 * q + 2])));
  }
  for (; i < m; ++i) {
    uint64_t key = 0;
    for (int a = 0; a < 3; ++a)
      key |= uint64_t(int32_t(floor_fast(c[3 * i + a] / g) - lo[a])) << (a == 0 ? sx : a == 1 ? sy : 0);
    emit(i, base + key);
  }
}

#if VOLT_X86_DISPATCH
template <typename T>
__attribute__((target("avx2"))) void scene_keys_avx2(const T* c, int64_t m, T g, const T cell_lo[3],
                                                     const ScenePack& p, uint64_t base, const KeyOut& o) {
  scene_keys_body(c, m, g, cell_lo, p, base, o);  // 8 divisions per instruction instead of 4
}
#endif

template <typename T>
void scene_keys(const T* c, int64_t m, T g, const T cell_lo[3], const ScenePack& p, uint64_t base, const KeyOut& o) {
#if VOLT_X86_DISPATCH
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return scene_keys_avx2(c, m, g, cell_lo, p, base, o);
#endif
  scene_keys_body(c, m, g, cell_lo, p, base, o);
}

}  // namespace cpu
}  // namespace volt
