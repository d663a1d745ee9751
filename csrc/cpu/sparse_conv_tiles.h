// Register-tiled float32 micro-kernels of the CPU sparse convolution (cpu/sparse_conv.cpp) and of the
// tokenizer/detokenizer slot products (cpu/slot_matmul.cpp), always inlined into their per-instruction-set
// entry points (VOLT_TILE_VARIANTS below).
// fwd_rows<T, R>:   out[r] += f[r] @ w for R gathered rows (w: C_in x C_out, row-major)
// wgrad_rows<T, R>: grad[ci0 + r] += sum over pairs of feat[in][ci0 + r] * gout[out] for R input channels
// T is a tiling for one instruction set: vector width W (floats), rows per tile R, at most NV vectors of
// columns per tile, so that R x NV accumulators stay in registers. Columns go in tiles of NV..1 vectors,
// then scalars; the reduction over C_in (or over pairs) always runs in the same order.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/isa.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // vector types only cross always_inline calls

namespace volt {
namespace tiles {

#define VOLT_INLINE inline __attribute__((always_inline))

template <int W_, int R_, int NV_>
struct Tiling {
  static constexpr int W = W_, R = R_, NV = NV_;
  typedef float vec __attribute__((vector_size(W_ * sizeof(float))));
};
using Avx512 = Tiling<16, 6, 4>;  // 32 zmm: 24 accumulators + 4 weight vectors
using Avx2 = Tiling<8, 4, 2>;     // 16 ymm: 8 accumulators + 2 weight vectors
using Sse = Tiling<4, 4, 2>;      // 16 xmm (also NEON's width)

template <typename T>
VOLT_INLINE typename T::vec loadu(const float* p) {
  typename T::vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
VOLT_INLINE void storeu(float* p, typename T::vec v) {
  std::memcpy(p, &v, sizeof(v));
}

// out[r][col : col + NV*W] += f[r] @ w[:, col : col + NV*W] for R rows, accumulated in registers.
template <typename T, int R, int NV>
VOLT_INLINE void fwd_tile(const float* const* f, float* const* out, const float* w, int64_t cin, int64_t cout,
                          int64_t col) {
  typename T::vec acc[R][NV] = {};
  for (int64_t ci = 0; ci < cin; ++ci) {
    typename T::vec wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = loadu<T>(w + ci * cout + col + j * T::W);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NV; ++j) acc[r][j] += wv[j] * f[r][ci];
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j)
      storeu<T>(out[r] + col + j * T::W, loadu<T>(out[r] + col + j * T::W) + acc[r][j]);
}

template <typename T, int R, int NV = T::NV>  // the columns left after full NV-vector tiles
VOLT_INLINE void fwd_cols(const float* const* f, float* const* out, const float* w, int64_t cin, int64_t cout,
                          int64_t col) {
  if constexpr (NV > 0) {
    if (col + NV * T::W <= cout) {
      fwd_tile<T, R, NV>(f, out, w, cin, cout, col);
      col += NV * T::W;
    }
    fwd_cols<T, R, NV - 1>(f, out, w, cin, cout, col);
  } else {
    for (; col < cout; ++col)  // scalar tail columns
      for (int r = 0; r < R; ++r) {
        float s = 0.f;
        for (int64_t ci = 0; ci < cin; ++ci) s += f[r][ci] * w[ci * cout + col];
        out[r][col] += s;
      }
  }
}

template <typename T, int R>
VOLT_INLINE void fwd_rows(const float* const* f, float* const* out, const float* w, int64_t cin, int64_t cout) {
  int64_t col = 0;
  for (; col + T::NV * T::W <= cout; col += T::NV * T::W) fwd_tile<T, R, T::NV>(f, out, w, cin, cout, col);
  fwd_cols<T, R, T::NV - 1>(f, out, w, cin, cout, col);
}

template <typename T, int R = T::R - 1>  // the last n < T::R rows as one tile of n rows
VOLT_INLINE void fwd_tail(const float* const* f, float* const* out, const float* w, int64_t cin, int64_t cout,
                          int64_t n) {
  if constexpr (R > 0) {
    if (n == R)
      fwd_rows<T, R>(f, out, w, cin, cout);
    else
      fwd_tail<T, R - 1>(f, out, w, cin, cout, n);
  }
}

// grad[ci0 + r][col : col + NV*W] += sum over pairs [p0, p1) of feat[in][ci0 + r] * gout[out][cols].
template <typename T, int R, int NV>
VOLT_INLINE void wgrad_tile(const float* feat, const float* gout, const int32_t* in_idx, const int32_t* out_idx,
                            int64_t p0, int64_t p1, int64_t cin, int64_t cout, int64_t ci0, int64_t col,
                            float* grad) {
  typename T::vec acc[R][NV] = {};
  for (int64_t p = p0; p < p1; ++p) {
    const float* f = feat + int64_t(in_idx[p]) * cin + ci0;
    const float* g = gout + int64_t(out_idx[p]) * cout + col;
    typename T::vec gv[NV];
    for (int j = 0; j < NV; ++j) gv[j] = loadu<T>(g + j * T::W);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NV; ++j) acc[r][j] += gv[j] * f[r];
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) {
      float* d = grad + (ci0 + r) * cout + col + j * T::W;
      storeu<T>(d, loadu<T>(d) + acc[r][j]);
    }
}

template <typename T, int R, int NV = T::NV>
VOLT_INLINE void wgrad_cols(const float* feat, const float* gout, const int32_t* in_idx, const int32_t* out_idx,
                            int64_t p0, int64_t p1, int64_t cin, int64_t cout, int64_t ci0, int64_t col,
                            float* grad) {
  if constexpr (NV > 0) {
    if (col + NV * T::W <= cout) {
      wgrad_tile<T, R, NV>(feat, gout, in_idx, out_idx, p0, p1, cin, cout, ci0, col, grad);
      col += NV * T::W;
    }
    wgrad_cols<T, R, NV - 1>(feat, gout, in_idx, out_idx, p0, p1, cin, cout, ci0, col, grad);
  } else {
    for (; col < cout; ++col)
      for (int r = 0; r < R; ++r) {
        float s = 0.f;
        for (int64_t p = p0; p < p1; ++p)
          s += feat[int64_t(in_idx[p]) * cin + ci0 + r] * gout[int64_t(out_idx[p]) * cout + col];
        grad[(ci0 + r) * cout + col] += s;
      }
  }
}

template <typename T, int R>
VOLT_INLINE void wgrad_rows(const float* feat, const float* gout, const int32_t* in_idx, const int32_t* out_idx,
                            int64_t p0, int64_t p1, int64_t cin, int64_t cout, int64_t ci0, float* grad) {
  int64_t col = 0;
  for (; col + T::NV * T::W <= cout; col += T::NV * T::W)
    wgrad_tile<T, R, T::NV>(feat, gout, in_idx, out_idx, p0, p1, cin, cout, ci0, col, grad);
  wgrad_cols<T, R, T::NV - 1>(feat, gout, in_idx, out_idx, p0, p1, cin, cout, ci0, col, grad);
}

template <typename T, int R = T::R - 1>  // the last n < T::R input channels as one tile of n rows
VOLT_INLINE void wgrad_tail(const float* feat, const float* gout, const int32_t* in_idx, const int32_t* out_idx,
                            int64_t p0, int64_t p1, int64_t cin, int64_t cout, int64_t ci0, float* grad, int64_t n) {
  if constexpr (R > 0) {
    if (n == R)
      wgrad_rows<T, R>(feat, gout, in_idx, out_idx, p0, p1, cin, cout, ci0, grad);
    else
      wgrad_tail<T, R - 1>(feat, gout, in_idx, out_idx, p0, p1, cin, cout, ci0, grad, n);
  }
}

}  // namespace tiles
}  // namespace volt

// VOLT_TILE_VARIANTS(NAME, PARAMS, ARGS): for a function template NAME<Tiling> that inlines the tiles, defines
// NAME_best PARAMS, which runs NAME<Avx512>, NAME<Avx2> or NAME<Sse> ARGS by isa_level() (cpu/isa.h: 2, 1,
// 0); the wide variants are compiled with their target attributes. Use it at namespace scope where the
// tiles' names are visible.
#if VOLT_X86_DISPATCH
#define VOLT_TILE_VARIANTS(NAME, PARAMS, ARGS)                                   \
  VOLT_TARGET_TILES_AVX512 void NAME##_avx512 PARAMS { NAME<Avx512> ARGS; }      \
  VOLT_TARGET_TILES_AVX2 void NAME##_avx2 PARAMS { NAME<Avx2> ARGS; }            \
  void NAME##_best PARAMS {                                                      \
    if (::volt::cpu::isa_level() == 2)                                           \
      NAME##_avx512 ARGS;                                                        \
    else if (::volt::cpu::isa_level() == 1)                                      \
      NAME##_avx2 ARGS;                                                          \
    else                                                                         \
      NAME<Sse> ARGS;                                                            \
  }
#else
#define VOLT_TILE_VARIANTS(NAME, PARAMS, ARGS) \
  void NAME##_best PARAMS { NAME<Sse> ARGS; }
#endif
