// Vectorized inner loops of the CPU voxelize kernel (included by csrc/cpu/voxelize.cpp only, after its
// floating-point pragma): the coordinate bounds of a scene piece, its voxel keys, and the random bits of
// the voxels' picks (AVX2 and AVX-512 clones picked at run time on x86-64). Keys: base + bit-packed
// (floor(coord / grid_size) - min cell).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "cpu/isa.h"
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
VOLT_TARGET_AVX2 void coord_bounds_avx2(const T* c, int64_t m, T lo3[3], T hi3[3], bool& finite) {
  coord_bounds_body(c, m, lo3, hi3, finite);
}
template <typename T>
VOLT_TARGET_AVX512 void coord_bounds_avx512(const T* c, int64_t m, T lo3[3], T hi3[3], bool& finite) {
  coord_bounds_body(c, m, lo3, hi3, finite);
}
#endif

template <typename T>
void coord_bounds(const T* c, int64_t m, T lo3[3], T hi3[3], bool& finite) {
#if VOLT_X86_DISPATCH
  if (cpu_has_avx512()) return coord_bounds_avx512(c, m, lo3, hi3, finite);
  if (cpu_has_avx2()) return coord_bounds_avx2(c, m, lo3, hi3, finite);
#endif
  coord_bounds_body(c, m, lo3, hi3, finite);
}

// What the key pass writes for point `first + i`: the key alone, or the word key << ib | index.
struct KeyOut {
  uint64_t* out;
  int ib;             // index bits of a word; -1: keys only
  int64_t first;      // index of the piece's first point
  Count* hist;        // counts of the sort's first digit (or null)
  int hshift;         // that digit's lowest bit in the key
  uint64_t mask;      // and its mask
};

// keys = base + bit-packed (floor(c / g) - cell_lo) for points [0, m). Blocks of points: the key loop
// vectorizes (one lane per point); the digit counts follow as a scalar loop over the block's words, read
// back from memory once stored (reading a lane of a just-stored vector register stalls the load).
constexpr int64_t kKeyBlock = 256;
template <typename T>
inline __attribute__((always_inline)) void scene_keys_body(const T* c, int64_t m, T g, const T cell_lo[3],
                                                           const ScenePack& p, uint64_t base, const KeyOut& out) {
  const int sx = p.by + p.bz, sy = p.bz;
  const KeyOut o = out;  // a local copy: the key stores cannot alias it
  const T l0 = cell_lo[0], l1 = cell_lo[1], l2 = cell_lo[2];
  const int ib = o.ib >= 0 ? o.ib : 0;
  const uint64_t with_index = o.ib >= 0 ? ~uint64_t(0) : 0;
  const int digit_shift = ib + o.hshift;
  for (int64_t b = 0; b < m; b += kKeyBlock) {
    const int64_t e = std::min(m, b + kKeyBlock);
    for (int64_t i = b; i < e; ++i) {
      // Exact: floor(c/g) - cell_lo is an integer below 2^21 (checked extent).
      const uint64_t x = uint32_t(int32_t(floor_fast(c[3 * i] / g) - l0));
      const uint64_t y = uint32_t(int32_t(floor_fast(c[3 * i + 1] / g) - l1));
      const uint64_t z = uint32_t(int32_t(floor_fast(c[3 * i + 2] / g) - l2));
      const uint64_t key = base + ((x << sx) | (y << sy) | z);
      o.out[i] = (key << ib) | (uint64_t(o.first + i) & with_index);
    }
    if (o.hist)
      for (int64_t i = b; i < e; ++i) {
        uint64_t d = (o.out[i] >> digit_shift) & o.mask;
#if defined(__GNUC__)
        asm("" : "+r"(d));  // keeps this loop scalar: a vectorized histogram (conflict checks) is slower
#endif
        ++o.hist[d];
      }
  }
}

#if VOLT_X86_DISPATCH
template <typename T>
VOLT_TARGET_AVX2 void scene_keys_avx2(const T* c, int64_t m, T g, const T cell_lo[3], const ScenePack& p,
                                      uint64_t base, const KeyOut& o) {
  scene_keys_body(c, m, g, cell_lo, p, base, o);  // 8 divisions per instruction instead of 4
}
template <typename T>
VOLT_TARGET_AVX512 void scene_keys_avx512(const T* c, int64_t m, T g, const T cell_lo[3], const ScenePack& p,
                                          uint64_t base, const KeyOut& o) {
  scene_keys_body(c, m, g, cell_lo, p, base, o);  // 64-bit lanes and conversions: about 2x the AVX2 clone
}
#endif

template <typename T>
void scene_keys(const T* c, int64_t m, T g, const T cell_lo[3], const ScenePack& p, uint64_t base, const KeyOut& o) {
#if VOLT_X86_DISPATCH
  if (cpu_has_avx512()) return scene_keys_avx512(c, m, g, cell_lo, p, base, o);
  if (cpu_has_avx2()) return scene_keys_avx2(c, m, g, cell_lo, p, base, o);
#endif
  scene_keys_body(c, m, g, cell_lo, p, base, o);
}

// The random part of voxel v's pick for v in [v0, v0 + m): pick_bits32(seed, v) (common.h). Computed
// ahead in blocks so the multiplies vectorize: AVX-512 DQ has 64-bit vector products (8 per
// instruction); AVX2 has none, so it gains nothing over the scalar loop.
inline __attribute__((always_inline)) void pick_bits_body(uint64_t seed, int64_t v0, int64_t m, uint32_t* out) {
  for (int64_t q = 0; q < m; ++q) out[q] = pick_bits32(seed, uint64_t(v0 + q));
}

#if VOLT_X86_DISPATCH
VOLT_TARGET_AVX512 inline void pick_bits_avx512(uint64_t seed, int64_t v0, int64_t m, uint32_t* out) {
  pick_bits_body(seed, v0, m, out);
}
#endif

inline void pick_bits(uint64_t seed, int64_t v0, int64_t m, uint32_t* out) {
#if VOLT_X86_DISPATCH
  if (cpu_has_avx512()) return pick_bits_avx512(seed, v0, m, out);
#endif
  pick_bits_body(seed, v0, m, out);
}

}  // namespace cpu
}  // namespace volt
